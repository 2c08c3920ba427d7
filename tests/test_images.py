"""Image conversion rules (fastvlad/images.py docstring, README 'Image conversion'), each
checked against an independent oracle: the values written, or Pillow's own conversion."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from fastvlad import config, reference
from fastvlad.errors import ImageReadError, ParameterError
from fastvlad.images import (
    MIN_SIDE,
    Preprocess,
    caffe,
    iter_batches,
    orient,
    read,
    to_rgb255,
)
from fastvlad.reference import CAFFE_MEAN_BGR

RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def rgb255(path: Path) -> np.ndarray:
    return to_rgb255(read(path), path)


def save(path: Path, im: Image.Image, **kw: object) -> Path:
    im.save(path, **kw)
    return path


# -- channels and modes -----------------------------------------------------------------------
def test_gray_becomes_three_equal_channels(tmp_path: Path) -> None:
    out = rgb255(save(tmp_path / "g.png", Image.fromarray(GRAY)))
    assert out.shape == (20, 30, 3) and out.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], GRAY)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.dstack([RGB, RNG.integers(0, 256, (20, 30), dtype=np.uint8)])
    np.testing.assert_array_equal(rgb255(save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))), RGB)


def test_la_drops_alpha(tmp_path: Path) -> None:
    la = np.dstack([GRAY, np.zeros_like(GRAY)])
    out = rgb255(save(tmp_path / "la.png", Image.fromarray(la, "LA")))
    np.testing.assert_array_equal(out[..., 1], GRAY)


def test_palette_as_pillow_converts_it(tmp_path: Path) -> None:
    im = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    expected = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(rgb255(save(tmp_path / "p.png", im)), expected)


def test_cmyk_jpeg_is_rgb(tmp_path: Path) -> None:
    # Pure red in CMYK (C=0, M=Y=255, K=0); JPEG keeps a flat colour within a few levels.
    path = save(tmp_path / "cmyk.jpg", Image.new("CMYK", (32, 32), (0, 255, 255, 0)), quality=95)
    assert Image.open(path).mode == "CMYK"
    out = rgb255(path)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [255, 0, 0], atol=6)


def test_bilevel_and_bool_are_0_or_255(tmp_path: Path) -> None:
    mask = GRAY > 128
    out = rgb255(save(tmp_path / "b.png", Image.fromarray(mask)))
    np.testing.assert_array_equal(out[..., 0], mask * 255.0)
    np.testing.assert_array_equal(to_rgb255(mask)[..., 2], mask * 255.0)


@pytest.mark.parametrize("shape", [(20, 30, 1), (20, 30, 2)])
def test_array_gray_with_channel_or_alpha(shape: tuple[int, ...]) -> None:
    arr = np.zeros(shape, np.uint8)
    arr[..., 0] = GRAY
    arr[..., 1:] = 77  # alpha, ignored
    np.testing.assert_array_equal(to_rgb255(arr), np.repeat(GRAY[..., None], 3, axis=2))


# -- bit depths and value ranges --------------------------------------------------------------
def test_16bit_png_and_tiff_scale_by_255_over_65535(tmp_path: Path) -> None:
    a16 = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    png = save(tmp_path / "g16.png", Image.fromarray(a16))
    tif = tmp_path / "g16.tif"
    tifffile.imwrite(tif, a16)
    expected = a16 * (255 / 65535)
    for path in (png, tif):
        assert read(path).dtype == np.uint16, path
        np.testing.assert_allclose(rgb255(path)[..., 0], expected, rtol=1e-6, err_msg=str(path))


def test_16bit_rgb_tiff(tmp_path: Path) -> None:
    a16 = RNG.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", a16)
    np.testing.assert_allclose(rgb255(tmp_path / "rgb16.tif"), a16 * (255 / 65535), rtol=1e-6)


def test_float_tiff_in_unit_range_times_255(tmp_path: Path) -> None:
    f = RNG.random((20, 30), dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tif", f)
    np.testing.assert_allclose(rgb255(tmp_path / "f.tif")[..., 0], f * 255, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32, np.float64])
def test_signed_and_wide_floats_are_min_max_stretched(tmp_path: Path, dtype: type) -> None:
    a = (RNG.normal(0, 1000, (20, 30))).astype(dtype)
    tifffile.imwrite(tmp_path / "s.tif", a)
    a64 = a.astype(np.float64)
    expected = (a64 - a64.min()) / (a64.max() - a64.min()) * 255
    np.testing.assert_allclose(rgb255(tmp_path / "s.tif")[..., 1], expected, rtol=1e-5, atol=1e-3)


def test_pillow_int32_mode_i(tmp_path: Path) -> None:
    a = RNG.integers(-5000, 100_000, (20, 30)).astype(np.int32)
    path = save(tmp_path / "i.tiff", Image.fromarray(a))
    out = to_rgb255(read(path))[..., 0]
    np.testing.assert_allclose(out, (a - a.min()) / (a.max() - a.min()) * 255, rtol=1e-5, atol=1e-3)


def test_constant_images() -> None:
    assert to_rgb255(np.full((4, 4), 7, np.int16)).max() == 7  # within 0..255: kept
    assert to_rgb255(np.full((4, 4), 9000, np.int32)).max() == 127.5  # outside: mid-gray
    assert to_rgb255(np.full((4, 4), 0.5, np.float32)).max() == 127.5  # [0, 1] float ×255


def test_extreme_floats_stay_finite() -> None:
    big = np.finfo(np.float64).max
    out = to_rgb255(np.array([[-big, 0.0], [big, big / 2]]))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[..., 0], [[0, 127.5], [255, 191.25]])
    tiny = np.array([[0.0, 5e-324], [1e-323, 0.0]]) * -1  # subnormal span, all ≤ 0
    assert np.isfinite(to_rgb255(tiny)).all()


# -- pages, orientation, formats --------------------------------------------------------------
def test_multipage_tiff_uses_first_page_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fastvlad import images

    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path) as w:
        for i in range(3):
            w.write(np.full((20, 30), 40 * (i + 1), np.uint8))
    images._warned_multipage.clear()
    with caplog.at_level(logging.WARNING, logger="fastvlad"):
        out = rgb255(path)
    assert out.max() == out.min() == 40
    assert "3 pages, using the first" in caplog.text


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((20, 30), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert rgb255(tmp_path / "a.gif").max() == 10


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow(orientation: int) -> None:
    im = Image.fromarray(GRAY)
    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation)
    expected = np.asarray(im.transpose(method)) if method is not None else GRAY
    np.testing.assert_array_equal(orient(GRAY, orientation), expected)


def _quadrant_image() -> np.ndarray:
    """40×60 RGB: top-left block bright, rest dark — its position shows the orientation."""
    a = np.full((40, 60, 3), 20, np.uint8)
    a[:20, :30] = 230
    return a


def test_exif_rotated_jpeg_is_shown_upright(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = save(tmp_path / "r.jpg", Image.fromarray(_quadrant_image()), exif=exif, quality=95)
    out = rgb255(path)
    assert out.shape == (60, 40, 3)  # height and width swapped
    # Clockwise: the bright top-left block moves to the top-right.
    assert out[:30, 20:].mean() > 200 and out[:30, :20].mean() < 50 and out[30:].mean() < 50


def test_tiff_orientation_tag_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "o.tif"
    tifffile.imwrite(path, _quadrant_image(), extratags=[(274, "H", 1, 6, True)])
    np.testing.assert_array_equal(read(path), np.rot90(_quadrant_image(), -1))


def test_planar_rgb_tiff_is_channels_last(tmp_path: Path) -> None:
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(RGB, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read(path), RGB)


@pytest.mark.parametrize(("name", "fmt"), [("jpeg_named.png", "JPEG"), ("png_named.tif", "PNG"),
                                           ("bmp.bmp", "BMP"), ("webp.webp", "WEBP")])
def test_format_found_from_content_not_suffix(tmp_path: Path, name: str, fmt: str) -> None:
    path = save(tmp_path / name, Image.fromarray(RGB), format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    expected = RGB if fmt != "JPEG" else np.asarray(Image.open(path).convert("RGB"))  # JPEG: Pillow's decode
    np.testing.assert_array_equal(rgb255(path), expected)


# -- network input ----------------------------------------------------------------------------
def test_caffe_normalisation_one_pixel() -> None:
    rgb = np.zeros((1, 1, 3), np.float32)
    rgb[0, 0] = (10, 20, 30)
    np.testing.assert_allclose(caffe(rgb)[:, 0, 0], np.array([30, 20, 10]) - CAFFE_MEAN_BGR, rtol=1e-6)
    image = np.random.default_rng(0).uniform(0, 255, (5, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(caffe(image), reference.caffe_preprocess(image))


def test_preprocess_resizes_and_keeps_native() -> None:
    assert Preprocess((32, 48))(RGB).shape == (3, 32, 48)
    assert Preprocess(None)(RGB).shape == (3, 20, 30)
    assert Preprocess(40).size == (40, 40)


def test_native_size_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImageReadError, match=f"smaller than the {MIN_SIDE}×{MIN_SIDE}.*set image_size"):
        Preprocess(None)(RGB[:10])
    monkeypatch.setattr(config, "MAX_INPUT_PIXELS", 500)
    with pytest.raises(ImageReadError, match="30×20 pixels at native size exceeds the network input limit of 500"):
        Preprocess(None)(RGB)
    assert Preprocess((16, 16))(RGB).shape == (3, 16, 16)  # resized inputs are fine


@pytest.mark.parametrize("size", [0, 8, -1, (), (16, 16, 16), (16.0, 16), "224", True, (10, 200)])
def test_bad_image_size(size: object) -> None:
    with pytest.raises(ParameterError, match="image_size"):
        Preprocess(size)  # type: ignore[arg-type]


def test_image_size_over_input_limit() -> None:
    with pytest.raises(ParameterError, match="exceeds the network input limit"):
        Preprocess((5000, 5000))


def test_native_batches_cut_where_the_shape_changes() -> None:
    sources = [RGB, RGB, GRAY[:, :20], RGB]
    batches = list(iter_batches(sources, Preprocess(None), batch_size=8))
    assert [b.indices for b in batches] == [[0, 1], [2], [3]]
    assert [b.pixels.shape[2:] for b in batches] == [(20, 30), (20, 20), (20, 30)]


def test_keep_aspect_input_over_the_limit_names_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """A very wide image: its short side scaled to image_size makes the long side huge (a 1×20000
    PNG became a 64×1,280,000 input and an OOM kill); the input size is checked like the native one."""
    monkeypatch.setattr(config, "MAX_INPUT_PIXELS", 5000)
    wide = np.zeros((10, 1000), np.uint8)
    prep = Preprocess((16, 16), keep_aspect=True)
    with pytest.raises(ImageReadError, match=r"wide\.png: its aspect ratio gives an input of 16×1600 pixels \(height × "
                       r"width\), over the network input limit of 5000.*crop it or use aspect='squash'"):
        prep(wide, name="wide.png")
    assert prep(np.zeros((40, 60), np.uint8)).shape == (3, 16, 24)  # a usual aspect is fine
    batches = list(iter_batches([RGB, wide, RGB], prep, batch_size=8, skip_errors=True))  # skipped, not fatal
    assert [b.indices for b in batches] == [[0, 2]] and [i for i, _ in batches[0].failed] == [1]


def test_prepare_says_how_much_the_resize_scales_the_image() -> None:
    """``input_scale``: 112/306 for a nanofiber tile at 112 on the short side, 1 at native size, the
    linear factor of the area when squashed."""
    from fastvlad.images import Preprocess

    tile = np.random.default_rng(0).integers(0, 256, (306, 448), dtype=np.uint8)
    pixels, scale = Preprocess(size=(112, 112), keep_aspect=True).prepare(tile)
    assert pixels.shape == (3, 112, 164) and scale == pytest.approx(np.sqrt(112 * 164 / (306 * 448)))
    assert abs(scale - 112 / 306) < 1e-3
    assert Preprocess(size=None).prepare(tile)[1] == 1.0
    assert Preprocess(size=(153, 224)).prepare(tile)[1] == pytest.approx(0.5)
    np.testing.assert_array_equal(Preprocess(size=(112, 112), keep_aspect=True)(tile), pixels)


def test_a_gray_picture_stored_as_rgb_is_read_as_gray(tmp_path: Path) -> None:
    """The stretch's percentiles over H·W·3 repeated levels interpolated between other order
    statistics than over the H·W gray ones: an RGB (or RGBA, or gray-palette) file with equal
    channels gave other network input, and other codes, than the same picture saved as gray."""
    from PIL import Image

    from fastvlad.images import Preprocess

    # 51 distinct levels: the 1st percentile falls halfway between the two darkest gray levels, but on
    # the darkest one among their 153 repeats
    gray = np.random.default_rng(3).permutation(np.arange(0, 255, 5, dtype=np.uint8)).reshape(3, 17)
    Image.fromarray(np.dstack([gray] * 3)).save(tmp_path / "rgb.png")
    prep = Preprocess((32, 32), normalize="stretch")
    want = prep(gray)
    for same in (np.dstack([gray] * 3), np.dstack([gray] * 3 + [np.full_like(gray, 255)]), str(tmp_path / "rgb.png")):
        np.testing.assert_array_equal(prep(same), want)
    colour = np.dstack([gray, gray, 255 - gray])  # a colour picture keeps its channels
    assert not np.array_equal(prep(colour)[2], prep(colour)[0])


@pytest.mark.parametrize("threads", [1, 2])
def test_a_skipped_image_is_not_advised_to_be_skipped(tmp_path: Path, threads: int) -> None:
    """With ``on_error="skip"`` each skipped image's reason (stderr, the CSV's error column) still
    ended "or skip unreadable images with on_error='skip'"."""
    from fastvlad.images import Preprocess, iter_batches

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 50)  # a PNG's first bytes, then nothing it can decode
    sources = [np.zeros((32, 32), np.uint8), str(bad)]
    prep = Preprocess((32, 32))
    skipped = [e for b in iter_batches(sources, prep, 4, skip_errors=True, threads=threads) for _, e in b.failed]
    assert len(skipped) == 1 and "cannot decode" in str(skipped[0]) and "on_error" not in str(skipped[0])
    with pytest.raises(ImageReadError, match="or skip unreadable images with on_error='skip'"):
        list(iter_batches(sources, prep, 4, threads=threads))
