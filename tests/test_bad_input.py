"""Bad input, generated here (no committed binaries): every kind is a FastVLADError with a
message naming the problem, never another exception; a fail-fast header scan names them
all at once; ``on_error="skip"`` reports every one and drops none silently.

Property tests (hypothesis) throw arbitrary arrays and objects at the array API and at
``FastVLAD.transform`` of a fitted tiny model.
"""

from __future__ import annotations

import builtins
import io
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst
from PIL import Image

from fastvlad import checks, config
from fastvlad.encoder import EncoderSettings
from fastvlad.errors import (
    BackboneError,
    FastVLADError,
    ImageReadError,
    InvalidDatasetError,
    ParameterError,
    in_one_line,
    printable,
)
from fastvlad.images import Preprocess, iter_batches, probe, to_rgb255

from . import tiny_model

pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # Pillow, on damaged TIFFs
RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (40, 50), dtype=np.uint8)
PREP = Preprocess((32, 32))
UNREADABLE = "cannot decode"


# -- the corpus -----------------------------------------------------------------------------
def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _encoded(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "TIFF":
        tifffile.imwrite(buf, arr)
    else:
        Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width``×``height``, then an empty IDAT and IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _flip_png_crc(data: bytes) -> bytes:
    i = data.index(b"IDAT") + 4
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]


def _tiff_of(arr: np.ndarray, **kw: object) -> Callable[[Path], None]:
    return lambda p: tifffile.imwrite(p, arr, **kw)


class Bad(NamedTuple):
    name: str  # file name (its suffix matters)
    make: Callable[[Path], object]  # writes the file at the given path
    match: str  # regex the error message must contain
    header: bool  # found by the header scan (probe) without decoding pixels


def _tiff_with_long_length(path: Path) -> None:
    """A 96×64 TIFF whose ImageLength (tag 257) holds 1000 values, all inside the file: Pillow warned
    "too many entries" and read 65539 rows of nonsense where tifffile refuses the header."""
    import struct

    import tifffile

    tifffile.imwrite(path, RNG.integers(0, 60000, (96, 64), dtype=np.uint16))
    data = bytearray(path.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        if struct.unpack_from("<H", data, ifd + 2 + 12 * i)[0] == 257:
            struct.pack_into("<I", data, ifd + 2 + 12 * i + 4, 1000)
    path.write_bytes(bytes(data))


def _bytes(data: bytes) -> Callable[[Path], object]:
    return lambda p: p.write_bytes(data)


PNG = _png_bytes(GRAY)
JPG = _encoded(np.dstack([GRAY] * 3), "JPEG")
TIF = _encoded(GRAY, "TIFF")
NAN = np.where(GRAY > 250, np.nan, GRAY / 255).astype(np.float32)

BAD_FILES = [
    Bad("empty.png", _bytes(b""), "empty file", True),
    Bad("empty.tif", _bytes(b""), "empty file", True),
    Bad("truncated.png", _bytes(PNG[: len(PNG) // 2]), f"{UNREADABLE}.*truncated", False),
    Bad("truncated.jpg", _bytes(JPG[: len(JPG) // 2]), f"{UNREADABLE}.*truncated", False),
    Bad("truncated.tif", _bytes(TIF[: len(TIF) // 2]), UNREADABLE, False),
    Bad("header_only.jpg", _bytes(JPG[:20]), UNREADABLE, True),
    Bad("header_only.tif", _bytes(TIF[:16]), UNREADABLE, True),
    Bad("truncated.gif", _bytes(_encoded(GRAY, "GIF")[:-300]), UNREADABLE, False),
    Bad("truncated.bmp", _bytes(_encoded(GRAY, "BMP")[:200]), UNREADABLE, False),
    Bad("bad_crc.png", _bytes(_flip_png_crc(PNG)), UNREADABLE, False),
    Bad("text.png", _bytes(b"hello, not an image\n"), f"{UNREADABLE}.*cannot identify", True),
    Bad("text.tif", _bytes(b"II*\0 but then text"), UNREADABLE, True),
    Bad("long_length.tif", _tiff_with_long_length, f"{UNREADABLE} \\(a damaged TIFF header", True),
    Bad("page.jpg", _bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>"), UNREADABLE, True),
    Bad("random.png", _bytes(RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes()), UNREADABLE, True),
    Bad("archive.webp", _bytes(b"PK\x03\x04" + bytes(100)), UNREADABLE, True),
    Bad("zero_by_zero.png", _bytes(_png_header_only(0, 0)), UNREADABLE, True),
    Bad("one_pixel.png", _bytes(_png_bytes(GRAY[:1, :1])), "1×1 pixels is smaller than the 16×16", False),
    Bad("tiny.png", _bytes(_png_bytes(GRAY[:12, :8])), "8×12 pixels is smaller than the 16×16", False),
    Bad("huge_header.png", _bytes(_png_header_only(100_000, 100_000)), "10000000000 pixels exceeds the limit", True),
    Bad("nan.tif", _tiff_of(NAN), "NaN or infinite", False),
    Bad("inf.tif", _tiff_of(np.where(GRAY > 250, np.inf, 1.0).astype(np.float64)), "NaN or infinite", False),
    Bad("complex.tif", _tiff_of((GRAY + 1j).astype(np.complex64)), "dtype complex64 is not an image type", True),
    Bad("five_samples.tif", _tiff_of(RNG.integers(0, 255, (40, 50, 5), dtype=np.uint8), photometric="minisblack",
                                     planarconfig="contig"), r"shape \(40, 50, 5\) is not an image", False),
    Bad("volume.tif", _tiff_of(RNG.integers(0, 255, (4, 40, 50), dtype=np.uint8), volumetric=True,
                               photometric="minisblack"), "is not an image", False),
]
NATIVE_ONLY = {"one_pixel.png", "tiny.png"}  # fine when resized, too small at native size


def _special(tmp: Path) -> dict[str, tuple[Path, str, bool]]:
    """Paths that are not files: folder, missing, broken link, link loop, named pipe, NUL in the name."""
    (tmp / "folder.png").mkdir()
    (tmp / "broken.png").symlink_to(tmp / "nowhere.png")
    (tmp / "loop.png").symlink_to(tmp / "loop.png")
    os.mkfifo(tmp / "pipe.png")  # opening it for reading would wait for a writer forever
    return {"pipe.png": (tmp / "pipe.png", "not a regular file", True),
            "nul.png": (Path("nul\0.png"), "not a valid path", True),"folder.png": (tmp / "folder.png", "is a folder, not an image", True),
            "missing.png": (tmp / "missing.png", "file not found", True),
            "broken.png": (tmp / "broken.png", "symbolic link to a missing file", True),
            "loop.png": (tmp / "loop.png", "symbolic link loop", True)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str, bool]]:
    """name → (path, message regex, found by the header scan); and one good image."""
    tmp = tmp_path_factory.mktemp("bad")
    out = {}
    for bad in BAD_FILES:
        bad.make(tmp / bad.name)
        out[bad.name] = (tmp / bad.name, bad.match, bad.header)
    out.update(_special(tmp))
    (tmp / "good.png").write_bytes(PNG)
    out["good.png"] = (tmp / "good.png", "", False)
    return out


BAD_ARRAYS = {
    "object": (np.array([[1, None], [2, 3]], dtype=object), "dtype object is not an image type"),
    "complex": (GRAY.astype(np.complex128), "dtype complex128 is not an image type"),
    "string": (np.full((20, 20), "a"), "dtype <U1 is not an image type"),
    "datetime": (np.zeros((20, 20), "datetime64[s]"), r"dtype datetime64\[s\] is not an image type"),
    "timedelta": (np.zeros((20, 20), "timedelta64[ms]"), "is not an image type"),
    "structured": (np.zeros((20, 20), [("a", "u1"), ("b", "f4")]), "is not an image type"),
    "scalar": (np.array(3.0), r"shape \(\) is not an image"),
    "1-D": (np.arange(400, dtype=np.uint8), r"shape \(400,\) is not an image"),
    "5-D": (np.zeros((2, 2, 20, 20, 3), np.uint8), "is not an image"),
    "4-D": (np.zeros((2, 20, 20, 3), np.uint8), "give one image per entry"),
    "H,W,5": (np.zeros((20, 20, 5), np.uint8), r"shape \(20, 20, 5\) is not an image"),
    "channels first": (np.zeros((3, 20, 20), np.uint8), r"move the channel axis last"),
    "no rows": (np.zeros((0, 20), np.uint8), "has no pixels"),
    "no columns": (np.zeros((20, 0, 3), np.uint8), "has no pixels"),
    "NaN": (np.where(GRAY > 200, np.nan, 0.5), r"contains \d+ NaN or infinite"),
    "inf": (np.where(GRAY > 200, -np.inf, 0.5).astype(np.float16), "NaN or infinite"),
}


# -- every bad kind: the class and a message fragment ----------------------------------------
@pytest.mark.parametrize("name", [b.name for b in BAD_FILES] + ["folder.png", "missing.png", "broken.png", "loop.png",
                                                                  "pipe.png", "nul.png"])
def test_bad_file(corpus: dict[str, tuple[Path, str, bool]], name: str) -> None:
    path, match, _ = corpus[name]
    prep = Preprocess(None) if name in NATIVE_ONLY else PREP
    with pytest.raises(ImageReadError, match=match) as info:
        prep(path)
    assert printable(str(path)) in str(info.value)  # the message names the file (control characters escaped)
    assert info.value.source == str(path)


@pytest.mark.parametrize("name", list(BAD_ARRAYS))
def test_bad_array(name: str) -> None:
    arr, match = BAD_ARRAYS[name]
    with pytest.raises(ImageReadError, match=match):
        PREP(arr)


def test_header_scan_finds_the_header_kinds(corpus: dict[str, tuple[Path, str, bool]]) -> None:
    for name, (path, match, header) in corpus.items():
        if not header:
            probe(path)  # decodes nothing, so damage further in passes
            continue
        with pytest.raises(ImageReadError, match=match):
            probe(path)


def test_fail_fast_names_every_bad_image(corpus: dict[str, tuple[Path, str, bool]]) -> None:
    header_bad = [p for p, _, header in corpus.values() if header]
    sources: list[object] = [corpus["good.png"][0], *header_bad, np.zeros((5,), np.uint8)]
    with pytest.raises(ImageReadError, match=f"{len(header_bad) + 1} of {len(sources)} images") as info:
        checks.readable(sources)  # type: ignore[arg-type]
    msg = str(info.value)
    for p in header_bad[: checks.LISTED]:
        assert str(p) in msg
    assert "more" in msg and "--on-error skip" in msg


def test_skip_reports_every_bad_file_and_drops_none(corpus: dict[str, tuple[Path, str, bool]]) -> None:
    paths = [p for p, _, _ in corpus.values()]
    batches = list(iter_batches(paths, PREP, batch_size=4, skip_errors=True))
    ok = [i for b in batches for i in b.indices]
    failed = {i: e for b in batches for i, e in b.failed}
    assert sorted(ok + list(failed)) == list(range(len(paths)))  # each image once, either way
    names = [p.name for p in paths]
    expected_ok = {"good.png"} | NATIVE_ONLY
    assert {names[i] for i in ok} == expected_ok
    for i, err in failed.items():
        assert err.source == str(paths[i])


def test_parallel_decoding_gives_the_same_batches(corpus: dict[str, tuple[Path, str, bool]]) -> None:
    """``threads`` decoders (the GPU backend's) give exactly the batches one thread gives: order,
    pixels, skipped files and their reasons, and without skipping the same first error; and they
    leave the process's warning filters as they were (catch_warnings is entered by one thread)."""
    import warnings

    paths = [p for p, _, _ in corpus.values()] * 2
    filters = list(warnings.filters)
    one = list(iter_batches(paths, PREP, batch_size=3, skip_errors=True))
    many = list(iter_batches(paths, PREP, batch_size=3, skip_errors=True, threads=4))
    assert [b.indices for b in many] == [b.indices for b in one]
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        assert [(i, str(e)) for i, e in a.failed] == [(i, str(e)) for i, e in b.failed]
    errors = []
    for threads in (1, 4):
        with pytest.raises(ImageReadError) as info:
            list(iter_batches(paths, PREP, batch_size=3, threads=threads))
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert list(warnings.filters) == filters


def test_decompression_bomb_limit_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zeros = np.zeros((600, 700), np.uint8)  # compresses to a few hundred bytes
    png, tif, gif = tmp_path / "bomb.png", tmp_path / "bomb.tif", tmp_path / "bomb.gif"
    png.write_bytes(_png_bytes(zeros))
    tifffile.imwrite(tif, zeros, compression="zlib")
    Image.fromarray(zeros).save(gif)
    for p in (png, tif, gif):
        assert PREP(p).shape == (3, 32, 32)
    monkeypatch.setattr(config, "MAX_IMAGE_PIXELS", 100_000)
    for p in (png, tif, gif):
        with pytest.raises(ImageReadError, match="700×600 pixels exceeds the limit of 100000.*MAX_IMAGE_PIXELS"):
            PREP(p)
        with pytest.raises(ImageReadError, match="decompression-bomb"):
            probe(p)


def test_pillows_own_limit_is_raised_to_ours_not_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading an image had set Pillow's process-wide ``MAX_IMAGE_PIXELS`` to None: the host
    application (napari, a notebook) lost Pillow's decompression-bomb guard. It is raised only to
    fastvlad's limit, kept where it is higher, and left off where the application switched it off."""
    path = tmp_path / "small.png"
    path.write_bytes(_png_bytes(np.zeros((40, 50), np.uint8)))
    for before, after in ((89_478_485, config.MAX_IMAGE_PIXELS), (1 << 40, 1 << 40), (None, None)):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", before)
        assert PREP(path).shape == (3, 32, 32)
        assert Image.MAX_IMAGE_PIXELS == after
    big = np.zeros((300, 400), np.uint8)  # over Pillow's default limit scaled down, under ours
    (tmp_path / "big.png").write_bytes(_png_bytes(big))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail here
        assert PREP(tmp_path / "big.png").shape == (3, 32, 32)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_for_real(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    path.write_bytes(PNG)
    path.chmod(0)
    with pytest.raises(ImageReadError, match="permission denied"):
        PREP(path)


def test_permission_denied_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root ignores file modes, so the OS's answer for another user is simulated at open().
    png, tif = tmp_path / "locked.png", tmp_path / "locked.tif"
    png.write_bytes(PNG)
    tif.write_bytes(TIF)
    real_open = builtins.open

    def deny(file: object, *args: object, **kw: object):  # type: ignore[no-untyped-def]
        if str(file) in (str(png), str(tif)):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", deny)
    for p in (png, tif):
        with pytest.raises(ImageReadError, match="locked.*permission denied"):
            PREP(p)


@pytest.mark.parametrize(("X", "error", "match"), [
    ([GRAY, None], ParameterError, r"X\[1\] is None"),
    ([GRAY, 3], ParameterError, r"X\[1\] is a int"),
    ([GRAY, b"a.png"], ParameterError, r"X\[1\] is a bytes"),
    ("a.png", ParameterError, "not a single path"),
    (np.zeros((20, 20), np.uint8), ParameterError, r"shape \(20, 20\)"),
    ([], InvalidDatasetError, "X is empty"),
    (np.zeros((0, 20, 20), np.uint8), InvalidDatasetError, "X is empty"),
    (42, ParameterError, "not a sequence of images"),
])
def test_bad_collections(X: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        checks.sources(X)


def test_unpickled_error_keeps_its_fields() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(ImageReadError("a.png", "empty file", "fix it")))
    assert (err.source, err.problem, str(err)) == ("a.png", "empty file", "a.png: empty file. fix it")


def _mutants(seed: int, n: int) -> list[tuple[str, bytes]]:
    """``n`` damaged copies of valid files of every format: cut short, bytes overwritten, junk
    inserted, or one header byte changed."""
    rng = np.random.default_rng(seed)
    rgb = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    seeds = {".png": _encoded(rgb, "PNG"), ".jpg": _encoded(rgb, "JPEG"), ".tif": _encoded(rgb, "TIFF"),
             ".gif": _encoded(rgb, "GIF"), ".bmp": _encoded(rgb, "BMP"), ".webp": _encoded(rgb, "WEBP"),
             "16.tif": _encoded(GRAY.astype(np.uint16) * 257, "TIFF"), "f.tif": _encoded(GRAY / 7.0, "TIFF")}
    out = []
    for i in range(n):
        suffix, data = list(seeds.items())[i % len(seeds)]
        b = bytearray(data)
        op = i // len(seeds) % 4
        if op == 0:
            b = b[: rng.integers(1, len(b))]
        elif op == 1:
            for pos in rng.integers(0, len(b), rng.integers(1, 10)):
                b[pos] = rng.integers(256)
        elif op == 2:
            pos = rng.integers(len(b))
            b[pos:pos] = rng.integers(0, 256, rng.integers(1, 50), dtype=np.uint8).tobytes()
        else:
            b[rng.integers(min(64, len(b)))] ^= 1 << rng.integers(8)
        out.append((f"m{i}{suffix}", bytes(b)))
    return out


@pytest.mark.filterwarnings("ignore")
def test_damaged_files_decode_or_raise_a_fastvlad_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown damage, the class rather than a list: 200 mutants, each decoded at a fixed size
    and at native size and header-checked; only FastVLADError may come out (a tampered
    header may claim a huge size: the lowered pixel limit keeps the test fast)."""
    monkeypatch.setattr(config, "MAX_IMAGE_PIXELS", 1 << 20)
    outcomes = {"ok": 0, "error": 0}
    for name, data in _mutants(seed=1, n=200):
        path = tmp_path / name
        path.write_bytes(data)
        for check in (probe, PREP, Preprocess(None)):
            try:
                check(path)
                outcomes["ok"] += 1
            except FastVLADError:
                outcomes["error"] += 1
    assert outcomes["ok"] > 100 and outcomes["error"] > 100  # both paths exercised


# -- through the estimator -------------------------------------------------------------------
def test_transform_raise_names_the_file_and_skip_gives_nan_rows(
        vgg16_path: Path, corpus: dict[str, tuple[Path, str, bool]]) -> None:
    good, (truncated, _, _) = corpus["good.png"][0], corpus["truncated.png"]
    with pytest.raises(ImageReadError, match="truncated.png: cannot decode"):
        tiny_model.fitted().transform([good, truncated])
    codes = tiny_model.fitted_copy(on_error="skip").transform([good, truncated, GRAY, np.zeros(4)])
    assert np.isfinite(codes[[0, 2]]).all() and np.isnan(codes[[1, 3]]).all()
    np.testing.assert_allclose(np.linalg.norm(codes[[0, 2]], axis=1), 1, rtol=1e-5)
    labels = tiny_model.fitted_copy(on_error="skip").predict([good, truncated, GRAY])
    assert labels[1] is None and labels[0] in tiny_model.fitted().classes_  # no made-up class for a skipped image


def test_fit_skip_records_skipped_images(vgg16_path: Path, corpus: dict[str, tuple[Path, str, bool]]) -> None:
    images, labels = tiny_model.demo_images()
    bad = [corpus["empty.png"][0], corpus["nan.tif"][0]]
    X, y = [*images[:12], *bad], [*labels[:12], labels[0], labels[1]]
    model = tiny_model.fitted_copy(on_error="skip", n_estimators=2)
    model.fit(X, y)
    assert [name for name, _ in model.skipped_] == [str(p) for p in bad]
    assert model.train_info_["n_images"] == 12
    assert model.train_info_["skipped"][1] == [str(bad[1]), model.skipped_[1][1]]
    assert "NaN" in model.skipped_[1][1]


def test_fit_when_nothing_is_readable(vgg16_path: Path, corpus: dict[str, tuple[Path, str, bool]]) -> None:
    model = tiny_model.fitted_copy(on_error="skip")
    with pytest.raises(InvalidDatasetError, match="none of the 2 images sampled for the codebook could be read"):
        model.fit([corpus["empty.png"][0], corpus["text.png"][0]], ["a", "b"])


# -- properties -------------------------------------------------------------------------------
ANY_DTYPE = st.one_of(npst.scalar_dtypes(), npst.byte_string_dtypes(), npst.unicode_string_dtypes(),
                      npst.array_dtypes(max_size=2), st.just(np.dtype(object)),
                      st.sampled_from([np.dtype(np.longdouble), np.dtype(">u2"), np.dtype(">f8")]))
NUMERIC_DTYPE = st.one_of(npst.boolean_dtypes(), npst.integer_dtypes(), npst.unsigned_integer_dtypes(),
                          npst.floating_dtypes())
SIDE = st.integers(0, 20)
# Half the arrays look like images ((H, W) or (H, W, C) of a numeric dtype), so that the
# properties are exercised on conversions that succeed as well as on errors.
ANY_ARRAY = st.one_of(
    npst.arrays(NUMERIC_DTYPE, st.one_of(st.tuples(SIDE, SIDE), st.tuples(SIDE, SIDE, st.integers(1, 5)))),
    npst.arrays(ANY_DTYPE, npst.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=7)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arr=ANY_ARRAY)
def test_any_array_works_or_is_a_fastvlad_error(arr: np.ndarray) -> None:
    try:
        rgb = to_rgb255(arr)
    except FastVLADError:
        rgb = None
    if rgb is not None:
        assert rgb.dtype == np.float32 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert np.isfinite(rgb).all() and rgb.min() >= 0 and rgb.max() <= 255
    try:
        net = Preprocess((16, 16))(arr)
    except FastVLADError:
        assert rgb is None  # the network input fails only where the conversion did
        event("error")
        return
    event("converted")
    assert rgb is not None and net.shape == (3, 16, 16) and net.dtype == np.float32 and np.isfinite(net).all()


@settings(max_examples=100, deadline=None)
@given(obj=st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=20), st.binary(max_size=20),
                     st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
def test_any_object_is_refused_naming_it(obj: object) -> None:
    """None of these objects is an image (a string is a path that is missing, a folder or not an
    image): each is an ``ImageReadError`` naming the object and its problem, never a result and
    never the catch-all "cannot be converted", which would mean a failure nobody foresaw."""
    with pytest.raises(ImageReadError) as info:
        Preprocess((16, 16))(obj)  # type: ignore[arg-type]
    err = info.value
    assert err.source == (str(Path(obj)) if isinstance(obj, str) else str(obj))
    assert str(err).startswith(f"{printable(err.source)}: ") and "cannot be converted" not in err.problem
    if not isinstance(obj, str):
        assert err.problem == f"a {type(obj).__name__} is not an image"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(X=st.one_of(st.lists(ANY_ARRAY, min_size=1, max_size=3), st.lists(ANY_ARRAY, min_size=1, max_size=3),
                   npst.arrays(NUMERIC_DTYPE, npst.array_shapes(min_dims=1, max_dims=5, max_side=20)),
                   st.sampled_from([None, 3, "a.png", {"a": 1}])),
       skip=st.booleans())
def test_transform_works_or_is_a_fastvlad_error(vgg16_path: Path, X: object, skip: bool) -> None:
    model = tiny_model.fitted_copy(on_error="skip" if skip else "raise")
    try:
        codes = model.transform(X)  # type: ignore[arg-type]
    except FastVLADError as exc:
        event(f"error: {type(exc).__name__}")
        return
    event("encoded")
    n = len(X)  # type: ignore[arg-type]
    assert codes.shape == (n, model.codebook_.size) and codes.dtype == np.float32
    items = list(X)  # type: ignore[call-overload]
    for row, item in zip(codes, items):  # a row is finite exactly when its image converts
        try:
            EncoderSettings.of(model).preprocess(item)
            readable = True
        except FastVLADError:
            readable = False
        assert np.isfinite(row).all() == readable and (readable or np.isnan(row).all())


# -- parameters: checked before any image is read ----------------------------------------------
@pytest.mark.parametrize(("params", "match"), [
    ({"density": 0}, r"density=0: must be a number \(0, 100\] percent"),
    ({"density": 100.5}, "density=100.5"),
    ({"density": float("nan")}, "density=nan"),
    ({"density": "10"}, "density='10'"),
    ({"density": None}, "density=None"),
    ({"k": 1}, r"k=1: must be an integer ≥ 2"),
    ({"k": 2.5}, "k=2.5"),
    ({"k": True}, "k=True"),
    ({"k": 100, "density": 0.01}, r"k=100 exceeds the 15 points the codebook is fitted on \(3 image\(s\) × 5 points\)"),
    ({"device": "tpu"}, r"device='tpu' is unknown; use one of \('auto', 'cpu', 'cuda'\)"),
    ({"device": "CUDA"}, "device='CUDA' is unknown"),
    ({"on_error": "ignore"}, "on_error='ignore' is unknown"),
    ({"resample": "area"}, "resample='area' is unknown"),
    ({"interpolation": "cubic"}, "interpolation='cubic' is unknown"),
    ({"image_size": 8}, r"image_size=8: give one side or \(height, width\) as integers ≥ 16"),
    ({"image_size": "224"}, "image_size='224'"),
    ({"image_size": (100_000, 100_000)}, "exceeds the network input limit"),
    ({"codebook_images": 0}, "codebook_images=0"),
    ({"n_estimators": 0}, "n_estimators=0"),
    ({"max_depth": -1}, "max_depth=-1"),
    ({"learning_rate": 0}, "learning_rate=0"),
    ({"colsample_bynode": 1.5}, "colsample_bynode=1.5"),
    ({"subsample": 0}, "subsample=0"),
    ({"min_child_weight": -1}, "min_child_weight=-1"),
    ({"classifier": "svm"}, r"classifier='svm' is unknown; use one of \('xgboost', 'logistic', 'ridge'\)"),
    ({"alpha": 0}, r"alpha=0: must be a number > 0 \(the ridge head's L2 strength, or None\)"),
    ({"alpha": float("inf")}, "alpha=inf"),
    ({"points": "grid"}, r"points='grid' is unknown; use one of \('per_image', 'shared'\)"),
    ({"softness": 0}, r"softness=0: must be a number \(0, 1e\+06\] \(soft assignment's sharpness; None: the nearest "
                      r"centre only\)"),
    ({"softness": float("inf")}, "softness=inf"),
    ({"softness": "10"}, "softness='10'"),
    ({"zoom": 1.4}, r"zoom=1.4: give up to 8 factors on the input size"),
    ({"zoom_jitter": "no"}, r"zoom_jitter='no': give True or False"),
    ({"whiten": 1}, r"whiten=1: give True or False"),
    ({"zoom": "1.4"}, "zoom='1.4'"),
    ({"zoom": np.array(1.4)}, r"zoom=array\(1.4\): give up to 8 factors"),
    ({"zoom": (1.4, 0.1)}, r"zoom\[1\]=0.1: must be a number \[0.25, 4\]"),
    ({"zoom": (float("nan"),)}, r"zoom\[0\]=nan"),
    ({"zoom": (1.4,), "image_size": None}, r"zoom=\(1.4,\) needs an image_size"),
    ({"zoom": (0.25,), "image_size": 32}, r"image_size × 0.25 = 8×8, which is not a usable input size"),
    # The default zoom=(1.2,) at the native size: the error says how to train without it.
    ({"image_size": None}, r"zoom=\(1.2,\) needs an image_size: .*set zoom=\(\) \(CLI: --zoom none\)"),
    ({"zoom": (1.4, 0.7), "image_size": 16}, r"zoom=\(1.4, 0.7\): image_size × 0.7 = 11×11, .*set zoom=\(\)$"),
    ({"tta_zoom": 0.7}, r"tta_zoom=0.7: give up to 8 factors on the input size, e.g. \(1.4, 0.7\) \(CLI: --tta-zoom"),
    ({"tta_zoom": (0.7, 0.1)}, r"tta_zoom\[1\]=0.1: must be a number \[0.25, 4\]"),
    ({"tta_zoom": (0.7,), "image_size": None}, r"tta_zoom=\(0.7,\) needs an image_size"),
    ({"random_state": None}, "random_state=None"),
    # XGBoost refused seeds over a signed 64-bit int only after the CNN work; scikit-learn's splitters 2**32
    ({"random_state": 2**63}, r"random_state=9223372036854775808: must be an integer from 0 to 4294967295"),
    ({"random_state": 2**32}, r"random_state=4294967296: must be an integer from 0 to 4294967295"),
    ({"k": 10**400}, r"k=10000000000000000000…\(401 characters\): must be an integer ≥ 2"),  # no OverflowError
    ({"density": 10**400}, r"density=10000000000000000000…\(401 characters\): must be a number"),
    ({"softness": 1e7}, r"softness=10000000.0: must be a number \(0, 1e\+06\]"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"fp16": "yes"}, "fp16='yes'"),
    ({"taps": "block1_conv2,block2_conv2"}, "taps='block1_conv2,block2_conv2': give a list of tensor names"),
    ({"backbone": 3}, "backbone=3"),
    # no bound once filled the memory with the copies' list before the first CNN pass
    ({"augment": 10**8}, r"augment=100000000: must be an integer from 0 to 100 \(augmented copies"),
])
def test_bad_parameter_before_any_image(params: dict[str, object], match: str) -> None:
    from fastvlad.estimator import FastVLAD

    X = [GRAY, GRAY, "/nonexistent/image.png"]  # reading it would be an ImageReadError
    with pytest.raises(ParameterError, match=match):
        FastVLAD(**{"density": 1, "k": 8, **params}).fit(X, ["a", "b", "a"])  # type: ignore[arg-type]


@pytest.mark.parametrize("params", [{"tta_zoom": 0.7}, {"zoom": 1.4}, {"k": 1}])
def test_cross_validation_checks_parameters_before_any_image(params: dict[str, object]) -> None:
    """cross_validate and encode_images refuse a bad parameter as fit does (they had let a bare
    number for zoom or tta_zoom through to a TypeError)."""
    from fastvlad.estimator import FastVLAD
    from fastvlad.evaluate import cross_validate, encode_images

    X = [GRAY, GRAY, "/nonexistent/image.png", GRAY]  # reading it would be an ImageReadError
    for refit in ("head", "all"):
        with pytest.raises(ParameterError, match=f"{next(iter(params))}="):
            cross_validate(FastVLAD(**params), X, ["a", "b", "a", "b"], n_splits=2, refit=refit)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match=f"{next(iter(params))}="):
        encode_images(FastVLAD(**params), X)  # type: ignore[arg-type]


def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["conv1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv1"], ["relu1"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("relu1", TensorProto.FLOAT, None)], initializer=[w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def test_unknown_taps_list_the_tensors_that_exist(tmp_path: Path) -> None:
    from fastvlad.errors import BackboneError
    from fastvlad.estimator import FastVLAD

    model = FastVLAD(density=1, k=8, backbone=str(_tiny_onnx(tmp_path / "tiny.onnx")), taps=["relu1", "block9"],
                     device="cpu")
    with pytest.raises(BackboneError, match=r"taps \['block9'\] are not tensors of this model; some that are: "
                                            r"\['conv1', 'relu1'\]"):
        model.fit([GRAY, GRAY], ["a", "b"])
    with pytest.raises(BackboneError, match="name the tap tensors of this model"):
        FastVLAD(density=1, k=8, backbone=str(tmp_path / "tiny.onnx"), device="cpu").fit([GRAY, GRAY], ["a", "b"])
    with pytest.raises(BackboneError, match="no such ONNX file"):
        FastVLAD(density=1, k=8, backbone=str(tmp_path / "none.onnx"), device="cpu").fit([GRAY, GRAY], ["a", "b"])
    os.mkfifo(tmp_path / "pipe.onnx")  # it exists: "no such ONNX file" had misled
    with pytest.raises(BackboneError, match="pipe.onnx': not a regular file"):
        FastVLAD(density=1, k=8, backbone=str(tmp_path / "pipe.onnx"), device="cpu").fit([GRAY, GRAY], ["a", "b"])


def test_bad_labels() -> None:
    from fastvlad.estimator import FastVLAD

    for y, match in ([["a"], r"y has shape \(1,\)"], [["a", None], "labels must be strings or numbers"],
                     [[1.0, float("nan")], "no None or NaN"], [["a", "a"], r"only one class \(\['a'\]\)"],
                     # NumPy made 1 and '1' one class "1", True and 1 one class, and failed to sort an object mix
                     [[1, "1"], r"y mixes number \(1\) and text \('1'\)"], [[True, 1], "mixes bool"],
                     [np.array(["a", 2], dtype=object), "mixes text"],
                     [["a", "a\0"], r"class name 'a\\x00' holds control characters"]):  # NumPy had made it "a"
        with pytest.raises(FastVLADError, match=match):
            FastVLAD(density=1, k=8).fit([GRAY, GRAY], y)


def test_integral_floats_work_as_their_ints(vgg16_path: Path) -> None:
    """An integer parameter given as an integral float (as JSON or a config file may give it) fits
    the same model as its int: NumPy's seeds and XGBoost's ``max_bin`` refuse floats (a TypeError
    and an XGBoostError), so they get ints."""
    from fastvlad.estimator import FastVLAD

    from .conftest import small_model_params

    images, labels = tiny_model.demo_images()
    X = list(images[:12])
    as_ints = FastVLAD(**small_model_params(n_estimators=3, max_bin=16)).fit(X, labels[:12])
    as_floats = FastVLAD(**small_model_params(random_state=0.0, n_estimators=3.0, max_depth=3.0, max_bin=16.0,
                                              k=8.0)).fit(X, labels[:12])
    np.testing.assert_array_equal(as_floats.predict_proba(X[:4]), as_ints.predict_proba(X[:4]))


def test_a_class_name_that_is_not_utf8_is_refused_before_any_image() -> None:
    """A class folder named with bytes that are not UTF-8 decodes to lone surrogates: a model file
    could not hold that name, and saving it crashed (or loading refused it)."""
    from fastvlad.estimator import FastVLAD

    X = [GRAY, GRAY, "/nonexistent/image.png"]  # reading it would be an ImageReadError
    with pytest.raises(InvalidDatasetError, match=r"class name\(s\) 'a\\udcff' are not valid UTF-8"):
        FastVLAD(density=1, k=8).fit(X, ["a\udcff", "b", "a\udcff"])


def test_the_data_hash_takes_names_that_are_not_utf8(tmp_path: Path) -> None:
    """An unreadable file feeds its name to the training data's hash: its own bytes, UTF-8 or not."""
    from fastvlad import model_file

    missing = os.fsdecode(os.fsencode(tmp_path) + b"/bad\xff.png")
    assert model_file.data_sha256([missing], ["x"]) != model_file.data_sha256([missing + "2"], ["x"])


@pytest.mark.timeout(30)
def test_the_data_hash_never_reads_a_pipe_or_device(tmp_path: Path) -> None:
    """A skipped image is hashed too: a link to /dev/zero had made ``train --on-error skip`` read
    for ever after the encoding, and a FIFO had blocked it; anything but a regular file feeds its name."""
    from fastvlad import model_file

    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    names = [str(tmp_path / "pipe.png"), str(tmp_path / "zero.png"), str(tmp_path / "folder")]
    (tmp_path / "folder").mkdir()
    for name in names:
        assert model_file.data_sha256([name], ["x"]) == model_file.data_sha256([name], ["x"])
    assert len({model_file.data_sha256([name], ["x"]) for name in names}) == 3


def test_fit_names_a_class_whose_images_were_all_skipped(vgg16_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With on_error="skip" a class can vanish with its images: the model then knows one class fewer
    than the user gave, and says which."""
    import logging

    from fastvlad.estimator import FastVLAD

    from .conftest import small_model_params

    images, labels = tiny_model.demo_images()
    X: list[object] = list(images[:18])
    y = np.asarray(labels[:18]).copy()
    gone = y[0]
    X = [f"/nonexistent/{i}.png" if c == gone else x for i, (x, c) in enumerate(zip(X, y))]
    with caplog.at_level(logging.WARNING, logger="fastvlad"):
        model = FastVLAD(**small_model_params(on_error="skip")).fit(X, y)
    assert gone not in model.classes_
    assert f"every image of class(es) '{gone}'" in caplog.text


def _fixed_size_onnx(path: Path) -> Path:
    """A one-convolution ONNX model whose input is fixed at (1, 3, 8, 8); its output is tap ``c1``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["c1"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("c1", TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_an_empty_backbone_file_is_a_backbone_error(tmp_path: Path) -> None:
    """An empty file parses as an ONNX model without a graph: it was an IndexError on its first input."""
    from fastvlad.backbone import Backbone

    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(BackboneError, match=r"empty\.onnx: not a readable ONNX model \(its graph has no input"):
        Backbone(tmp_path / "empty.onnx", taps=["c1"])


def test_onnx_runtimes_errors_come_in_one_line(tmp_path: Path) -> None:
    """ONNX Runtime's messages span several lines; fastvlad's errors are one."""
    from fastvlad.backbone import Backbone

    backbone = Backbone(_fixed_size_onnx(tmp_path / "fixed.onnx"), taps=["c1"])
    with pytest.raises(BackboneError, match=r"fixed\.onnx: inference failed on a batch of shape \(1, 3, 16, 16\) "
                       r"\(.*Got: 16 Expected: 8.*\)") as err:
        backbone(np.zeros((1, 3, 16, 16), np.float32))
    assert "\n" not in str(err.value)
    assert in_one_line(RuntimeError()) == "RuntimeError" and in_one_line(ValueError("a\n  b\tc ")) == "a b c"


def test_a_failed_cnn_pass_names_the_batchs_images(tmp_path: Path) -> None:
    """The CNN failing on a batch (here: a backbone fixed at 8×8 given 16×16 inputs; on a real machine,
    an input too large for its memory) said only the batch's shape, not which images were in it."""
    from fastvlad.estimator import FastVLAD

    params = dict(backbone=str(_fixed_size_onnx(tmp_path / "fixed.onnx")), taps=["c1"], image_size=16, k=2,
                  density=50, pca=None, zoom=(), tta=0, code_pca=None, device="cpu")
    images = [np.full((16, 16), v, np.uint8) for v in (10, 80, 150, 220)]
    with pytest.raises(BackboneError, match=r"inference failed on a batch of shape \(4, 3, 16, 16\) .*; the batch "
                       r"held array #0, array #1, array #2 and 1 more$"):
        FastVLAD(**params).fit(images, ["a", "b", "a", "b"])


def test_a_failed_cnn_pass_at_predict_names_the_batchs_images(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastvlad.backbone import Backbone

    def fail(self: Backbone, pixels: np.ndarray) -> list[np.ndarray]:
        raise BackboneError(f"vgg16.onnx: inference failed on a batch of shape {pixels.shape} (RuntimeException)")

    images, _ = tiny_model.demo_images()
    model = tiny_model.fitted()
    monkeypatch.setattr(Backbone, "__call__", fail)
    with pytest.raises(BackboneError, match=r"\(RuntimeException\); the batch held array #0, array #1$"):
        model.transform(list(images[:2]))
