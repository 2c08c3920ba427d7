"""Issue 14: what a model trained on some series needs on the next one — intensity normalisation,
augmentation, test-time flips, aspect-kept input, the linear heads (logistic, ridge) — and that a saved model
applies them at predict as it did at fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import fastvlad
from fastvlad import backends, explain, intensity
from fastvlad.encoder import Encoder, EncoderSettings, copies_per_image, image_points
from fastvlad.errors import ModelFormatError, ParameterError
from fastvlad.estimator import FastVLAD
from fastvlad.images import Preprocess, Transformed, augmented, flipped

from . import model_files
from .conftest import numpy_runs, small_model_params


def _micrograph(seed: int = 0, shape: tuple[int, int] = (61, 83)) -> np.ndarray:
    """A mid-gray textured 8-bit image (40..160: a gain of 1.2 and offsets of ±20 stay inside 0..255).
    8-bit, as a detector writes it: float arrays are min–max stretched on reading anyway."""
    rng = np.random.default_rng(seed)
    return (40 + 120 * rng.random(shape)).round().astype(np.uint8)


def _exposed(img: np.ndarray, gain: float, offset: float) -> np.ndarray:
    return np.clip(np.round(img * gain + offset), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["stretch", "equalize", "clahe"])
def test_normalisations_ignore_a_global_gain_and_offset(method: str) -> None:
    """The network input of an 8-bit image and of the same image at another gain and offset: equal
    up to the 8-bit rounding of the changed image (a gray level or two of 255), where without a
    normalisation they differ by tens of levels."""
    img = _micrograph()
    prep, raw = Preprocess((48, 64), normalize=method), Preprocess((48, 64))
    # CLAHE's local contrast gain amplifies the rounding most (measured 1.7 and 2.7; stretch 0.2, 0.4)
    tol = 4.0 if method == "clahe" else 1.0
    for gain, offset in ((1.25, -20.0), (0.75, 40.0)):
        other = _exposed(img, gain, offset)
        assert np.abs(prep(other) - prep(img)).mean() <= tol, (method, gain, offset)
        assert np.abs(raw(other) - raw(img)).mean() > 5  # the change is real (measured 5.5 and 15)


def test_normalisations_of_a_flat_image_and_unknown_names() -> None:
    flat = np.full((20, 30), 77.0, np.float32)
    for method in ("stretch", "equalize", "clahe"):
        assert np.all(intensity.normalize(flat, method) == 128.0)
    with pytest.raises(ParameterError, match="normalize='zscore' is unknown"):
        FastVLAD(normalize="zscore").fit([flat, flat], ["a", "b"])


def _gray_levels(rng: np.random.Generator, n: int, kind: int) -> np.ndarray:
    """``n`` whole gray levels 0..255: uniform, a bright band, one level, or a clipped normal."""
    if kind == 0:
        return rng.integers(0, 256, n)
    if kind == 1:
        return rng.integers(int(rng.integers(0, 256)), 256, n)
    if kind == 2:
        return np.full(n, int(rng.integers(0, 256)))
    return np.clip(np.round(rng.normal(rng.uniform(0, 255), rng.uniform(0.1, 60), n)), 0, 255)


def test_percentiles_from_the_histogram_are_numpys() -> None:
    """``intensity.level_percentiles`` reads 8-bit levels from their histogram: the same bits (and
    dtype) as ``np.percentile`` whatever the pixel count (1, 2, odd, a tile's 137,088), the spread of
    the levels and the percentiles (the ends 0 and 100 included); ``eight_bit`` lets nothing else in."""
    rng = np.random.default_rng(0)
    for trial in range(400):
        n = int(rng.choice([1, 2, 3, 7, 101, 999, 306 * 448, int(rng.integers(1, 5000))]))
        levels = _gray_levels(rng, n, trial % 4)
        for dtype in (np.float32, np.float64):
            values = levels.astype(dtype).reshape((1, n) if trial % 2 else (n,))
            for q in ((1.0, 99.0), (0.0, 100.0), (2.0, 98.0), (50.0,), (33.3, 66.7, 99.9)):
                fast, numpy_ = intensity.level_percentiles(intensity.eight_bit(values), q), np.percentile(values, q)
                assert fast.dtype == numpy_.dtype and np.array_equal(fast, numpy_), (n, dtype, q, fast, numpy_)
    # Not whole 0..255 levels: fractions, beyond 255, below 0, NaN, colour — not 8-bit, NumPy's path.
    img = _micrograph().astype(np.float32)
    assert intensity.eight_bit(img) is not None
    for values in (img + 0.5, img * 3, img - 100, np.dstack([img, img / 2, img / 3]), img[:0]):
        assert intensity.eight_bit(values) is None
    img[0, 0] = np.nan
    assert intensity.eight_bit(img) is None


def test_stretch_of_8_bit_levels_by_table_is_the_map_of_every_pixel() -> None:
    """``stretch`` maps an 8-bit image through a table of its 256 levels: the same bits, dtype and
    shape as NumPy's percentiles and skimage's map applied to every pixel — gray and colour, float32
    and float64, narrow and flat ranges (a flat one → 128) — and other images take that path itself."""
    def every_pixel(values: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(values, intensity.STRETCH_PERCENTILES)
        return intensity.stretched_between(values, float(lo), float(hi))

    rng = np.random.default_rng(1)
    img = _micrograph(2).astype(np.float32)
    cases = [img, img.astype(np.float64), np.dstack([img, 255 - img, img // 2]), img // 40, np.full((9, 7), 3.0),
             img + 0.5, img * 1.5]
    cases += [_gray_levels(rng, 999, kind).astype(np.float32).reshape(27, 37) for kind in range(4) for _ in range(25)]
    for values in cases:
        got, want = intensity.stretch(values), every_pixel(values)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)


def test_codes_ignore_gain_and_offset_with_stretch(vgg16_path: Path,
                                                    small_demo: tuple[list[np.ndarray], np.ndarray]) -> None:
    """End to end on 8-bit images: re-exposing them moves the codes a few times less with stretch
    than without it (what is left is the 8-bit rounding of the re-exposed images). Every pixel is
    sampled (density 10 % of a 64² input): points seeded by the image would differ otherwise."""
    images, labels = small_demo
    originals = [_exposed(np.asarray(im, np.float32), 0.6, 40) for im in images]  # 40..193: room for the change
    brighter = [_exposed(im, 1.25, -10) for im in originals[:6]]

    def moved(normalize: str) -> float:
        model = FastVLAD(**small_model_params(normalize=normalize, density=10.0)).fit(originals, labels)
        return float(np.linalg.norm(model.transform(brighter) - model.transform(originals[:6])))

    assert moved("stretch") < moved("none") / 3


def test_shared_points_stay_put_when_the_gray_levels_change(vgg16_path: Path,
                                                            small_demo: tuple[list[np.ndarray], np.ndarray]) -> None:
    """``points="shared"``: every image of one size gets the same points, so re-exposing an image
    (a new gray level at one pixel is enough) leaves them where they were and moves its codes only
    by what the CNN sees; points seeded by the image are all drawn anew and move the codes several
    times more (at 50 points of a 64² input)."""
    images, labels = small_demo
    originals = [_exposed(np.asarray(im, np.float32), 0.6, 40) for im in images]
    brighter = [_exposed(im, 1.25, -10) for im in originals[:6]]
    shared = EncoderSettings(points="shared", density=0.1, image_size=(64, 64))
    first, second = (shared.preprocess(im) for im in originals[:2])
    np.testing.assert_array_equal(image_points(first, shared), image_points(second, shared))
    per_image = EncoderSettings(density=0.1, image_size=(64, 64))
    assert not np.array_equal(image_points(first, per_image), image_points(second, per_image))

    def moved(points: str) -> float:
        model = FastVLAD(**small_model_params(points=points)).fit(originals, labels)
        return float(np.linalg.norm(model.transform(brighter) - model.transform(originals[:6])))

    assert moved("shared") < moved("per_image") / 3


def test_keep_aspect_sizes() -> None:
    prep = EncoderSettings(image_size=(112, 112), keep_aspect=True).preprocess
    assert prep.target((306, 448)) == (112, 164) and prep.target((448, 306)) == (164, 112)
    assert prep(_micrograph(shape=(61, 83))).shape == (3, 112, 152)
    assert EncoderSettings.of(FastVLAD()).keep_aspect and not EncoderSettings.of(FastVLAD.faithful()).keep_aspect
    assert not EncoderSettings.of(FastVLAD(image_size=(112, 164))).keep_aspect  # (H, W) is used as it is


def test_magnified_is_the_centre_of_the_image() -> None:
    """``intensity.magnified``: the centre 1/z by 1/z of the image (gray or colour), the image itself at
    z = 1, and a clear error for a lower magnification, which needs field the image lacks."""
    gray = np.arange(306 * 448, dtype=np.float32).reshape(306, 448)
    np.testing.assert_array_equal(intensity.magnified(gray, 2.0), gray[76:229, 112:336])
    np.testing.assert_array_equal(intensity.magnified(gray, 1.0), gray)
    colour = np.stack([gray, gray + 1, gray + 2], axis=-1)
    out = intensity.magnified(colour, 1.25)
    assert out.shape == (245, 358, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, colour[30:275, 45:403])
    assert intensity.magnified(np.ones((3, 3), np.float32), 100.0).shape == (1, 1)  # never empty
    for z in (0.8, 0.0, float("nan")):
        with pytest.raises(ParameterError, match="needs field the image lacks"):
            intensity.magnified(gray, z)
    assert list(intensity.MAGNIFICATIONS) == ["magnification ×1.25", "magnification ×1.5", "magnification ×2"]
    assert intensity.MAGNIFICATIONS["magnification ×1.5"](gray).shape == (204, 299)


def test_augmented_copies_and_flips_are_seeded() -> None:
    images = [_micrograph(i) for i in range(3)]
    prep = Preprocess((32, 48))

    def pixels(sources: list[Transformed]) -> np.ndarray:
        return np.stack([prep(s) for s in sources])

    a, b = pixels(augmented(images, [0, 2], 2, seed=5)), pixels(augmented(images, [0, 2], 2, seed=5))
    np.testing.assert_array_equal(a, b)
    assert len(a) == 4 and not np.array_equal(a[0], a[2])  # two copies of image 0 differ
    assert not np.array_equal(a, pixels(augmented(images, [0, 2], 2, seed=6)))
    # a copy does not depend on which other images are augmented with it
    np.testing.assert_array_equal(pixels(augmented(images, [2], 1, seed=5))[0], a[1])
    lr = pixels(flipped(images, 1))
    np.testing.assert_array_equal(lr[0], prep(np.ascontiguousarray(images[0][:, ::-1])))


def _one_ulp_up(values: np.ndarray) -> np.ndarray:
    """Every gray level one float32 step higher: what another CPU's SIMD ``power`` may give."""
    return np.nextafter(values, np.float32(np.inf)).astype(np.float32)


def test_an_augmented_copy_keeps_its_points_when_its_last_bits_change() -> None:
    """An augmented copy's points come from the seed and (position, copy), not from its pixels:
    the same copy computed on another CPU (a last-bit difference in its gray levels) is encoded at
    the same pixels. A shift-check change keeps drawing its points from its pixels (a new
    acquisition is a new image), and so does a test-time flip."""
    images = [_micrograph(i) for i in range(3)]
    encoder = Encoder(EncoderSettings(image_size=(32, 48), density=0.1), backends.resolve("cpu"), cnn=None)

    def points(sources: list[Transformed]) -> np.ndarray:
        return np.concatenate([b.points for b in encoder.batches(sources)])

    copies = augmented(images, [0, 2], 2, seed=5)
    nudged = [replace(c, transform=lambda v, f=c.transform: _one_ulp_up(f(v))) for c in copies]
    assert not np.array_equal(encoder.settings.preprocess(copies[0]), encoder.settings.preprocess(nudged[0]))
    np.testing.assert_array_equal(points(copies), points(nudged))
    assert not np.array_equal(points(copies)[0], points(copies)[2])  # two copies of image 0: own draws
    np.testing.assert_array_equal(points(augmented(images, [2], 1, seed=5))[0], points(copies)[1])
    shifts = [Transformed(im, lambda v: v, "identity") for im in images]
    assert not np.array_equal(points(shifts), points([replace(s, transform=_one_ulp_up) for s in shifts]))


_SIMD_SCRIPT = """
import hashlib, sys
import numpy as np
from fastvlad.encoder import Encoder
from fastvlad.estimator import FastVLAD
from fastvlad.images import augmented
rng = np.random.default_rng(0)
images = [(40 + 120 * rng.random((61, 83))).round().astype(np.uint8) for _ in range(8)]
model = FastVLAD(density=0.1, k=8, image_size=64, codebook_images=8, device="cpu").fit(images, np.arange(8) % 2)
codes = Encoder.of(model).encode(augmented(images, np.arange(8), 2, 0)).codes
print(hashlib.sha256(codes.tobytes()).hexdigest())
"""


@pytest.mark.skipif(not numpy_runs("X86_V4"), reason="NumPy runs no AVX-512 loops on this CPU: nothing to compare")
def test_augmented_codes_are_the_same_with_numpy_avx2_and_avx512_loops(vgg16_path: Path) -> None:
    """A model's augmented copies are encoded to the same bits whichever SIMD loops NumPy takes: an
    AVX2 machine and an AVX-512 one fit the same model (they did not: a float32 ``power`` differing
    in the last bit redrew every copy's points)."""

    def digest(env: dict[str, str]) -> str:
        done = subprocess.run([sys.executable, "-c", _SIMD_SCRIPT], env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert digest({"NPY_DISABLE_CPU_FEATURES": "X86_V4"}) == digest({})


def test_gamma_rounds_to_float32_once() -> None:
    """The gamma of a copy or a shift is float64 math rounded once, so it does not depend on
    which SIMD loop NumPy's float32 ``power`` takes on this CPU."""
    values = np.random.default_rng(0).uniform(0, 255, 100_000).astype(np.float32)
    for exponent in (0.8, 1.25, 0.93):
        want = (255.0 * (values.astype(np.float64) / 255.0) ** exponent).astype(np.float32)
        np.testing.assert_array_equal(intensity.gamma(values, exponent), want)


def test_fit_with_augmentation_and_tta(vgg16_path: Path, small_demo: tuple[list[np.ndarray], np.ndarray],
                                       tmp_path: Path) -> None:
    """augment=1 doubles what the head learns from and times the copies' CNN passes apart; tta=3
    averages four views; the same seed gives the same model; a saved model keeps both."""
    images, labels = small_demo
    params = small_model_params(augment=1, tta=3, classifier="logistic")
    model = FastVLAD(**params).fit(images, labels)
    assert model.train_info_["n_images"] == len(images) and model.train_info_["n_copies"] == len(images)
    assert model.train_info_["n_copies"] == copies_per_image(model.augment, model.zoom) * len(images)
    assert {"augment", "augment_cnn"} <= set(model.timings_) and model.timings_["augment_cnn"] > 0
    proba = model.predict_proba(images[:5])
    np.testing.assert_array_equal(FastVLAD(**params).fit(images, labels).predict_proba(images[:5]), proba)
    views = [model.predict_proba_codes(model.transform(images[:5]))]
    for op in (1, 2, 3):
        views.append(model.predict_proba_codes(model.transform([im[:, ::-1] if op & 1 else im for im in
                                                                 [im[::-1] if op & 2 else im for im in images[:5]]])))
    np.testing.assert_allclose(proba, np.mean(views, axis=0), rtol=1e-5, atol=1e-6)
    again = fastvlad.load(model.save(tmp_path / "m.fvl"))
    assert (again.augment, again.tta) == (1, 3)
    np.testing.assert_array_equal(again.predict_proba(images[:5]), proba)


def test_fit_with_zoom(vgg16_path: Path, small_demo: tuple[list[np.ndarray], np.ndarray], tmp_path: Path) -> None:
    """zoom=(1.5, 0.75) gives the head every image again at 96 and 48 pixels (the codebook, fitted at
    64, unchanged): it learns what a head on those codes learns; the copies' CNN passes are timed
    apart; cross-validation's encoding has the same copies; the same seed gives the same model; a
    saved model keeps the setting."""
    import copy

    from fastvlad.evaluate import encode_images

    images, labels = small_demo
    params = small_model_params(zoom=(1.5, 0.75), zoom_jitter=False, classifier="ridge")
    model = FastVLAD(**params).fit(images, labels)
    n = len(images)
    assert model.train_info_["n_images"] == n and model.train_info_["n_copies"] == 2 * n
    assert model.train_info_["n_copies"] == copies_per_image(model.augment, model.zoom) * n  # bench.head_cost's count
    assert {"zoom", "zoom_cnn"} <= set(model.timings_) and model.timings_["zoom_cnn"] > 0
    at = [copy.copy(model).set_params(image_size=side).transform(images) for side in (64, 96, 48)]
    assert not np.allclose(at[0], at[1]) and not np.allclose(at[0], at[2])
    head = FastVLAD(**small_model_params(classifier="ridge")).fit_codes(np.concatenate(at), np.concatenate([labels] * 3))
    np.testing.assert_allclose(model.head_.to_array(), head.head_.to_array(), rtol=1e-4, atol=1e-6)
    cs = encode_images(FastVLAD(**params), images)
    np.testing.assert_array_equal(cs.augmented_of, np.tile(np.arange(n), 2))
    np.testing.assert_allclose(cs.augmented, np.concatenate(at[1:]), rtol=1e-5, atol=1e-6)
    proba = model.predict_proba(images[:5])
    np.testing.assert_array_equal(FastVLAD(**params).fit(images, labels).predict_proba(images[:5]), proba)
    again = fastvlad.load(model.save(tmp_path / "m.fvl"))
    assert again.zoom == (1.5, 0.75)
    np.testing.assert_array_equal(again.predict_proba(images[:5]), proba)


def test_zoom_jitter_copies_are_the_augmented_copies_zoomed(vgg16_path: Path,
                                                           small_demo: tuple[list[np.ndarray], np.ndarray],
                                                           tmp_path: Path) -> None:
    """zoom_jitter=True makes each zoomed copy from the image's first augmented copy (the same flip,
    gain, offset, gamma and points): at zoom 1 its codes are augment=1's; at 1.5 they differ from
    the plain zoomed copy's and change the head; seeded; a saved model keeps the setting."""
    from fastvlad.evaluate import encode_images

    images, labels = small_demo
    n = len(images)
    at_one = encode_images(FastVLAD(**small_model_params(zoom=(1.0,), zoom_jitter=True)), images)
    augmented = encode_images(FastVLAD(**small_model_params(augment=1)), images)
    np.testing.assert_array_equal(at_one.augmented_of, augmented.augmented_of)
    np.testing.assert_allclose(at_one.augmented, augmented.augmented, rtol=1e-5, atol=1e-6)
    assert not np.allclose(at_one.augmented, at_one.codes, atol=1e-3)  # the copies are not the images
    params = small_model_params(zoom=(1.5,), zoom_jitter=True, classifier="ridge")
    jittered = encode_images(FastVLAD(**params), images)
    plain = encode_images(FastVLAD(**{**params, "zoom_jitter": False}), images)
    np.testing.assert_array_equal(jittered.augmented_of, np.arange(n))
    assert not np.allclose(jittered.augmented, plain.augmented, atol=1e-3)
    model = FastVLAD(**params).fit(images, labels)
    assert model.train_info_["n_copies"] == n
    head = FastVLAD(**small_model_params(classifier="ridge")).fit_codes(
        np.concatenate([model.transform(images), jittered.augmented]), np.concatenate([labels, labels]))
    np.testing.assert_allclose(model.head_.to_array(), head.head_.to_array(), rtol=1e-4, atol=1e-6)
    proba = model.predict_proba(images[:5])
    np.testing.assert_array_equal(FastVLAD(**params).fit(images, labels).predict_proba(images[:5]), proba)
    again = fastvlad.load(model.save(tmp_path / "m.fvl"))
    assert again.zoom_jitter is True
    np.testing.assert_array_equal(again.predict_proba(images[:5]), proba)


def test_predict_with_tta_zoom(vgg16_path: Path, small_demo: tuple[list[np.ndarray], np.ndarray], tmp_path: Path) -> None:
    """tta_zoom=(0.75,) adds the image at 48 pixels (the input is 64) to the views predict averages:
    the mean of the head's probabilities at 64, of the mirror and at 48; fit is unchanged by it;
    cross-validation encodes and averages the same views; a saved model keeps the setting."""
    import copy

    from fastvlad.encoder import View
    from fastvlad.evaluate import cross_validate, encode_images

    images, labels = small_demo
    params = small_model_params(tta=1, tta_zoom=(0.75,), classifier="ridge")
    model = FastVLAD(**params).fit(images, labels)
    plain = FastVLAD(**{**params, "tta_zoom": ()}).fit(images, labels)
    np.testing.assert_array_equal(model.head_.to_array(), plain.head_.to_array())
    assert model.views() == [View(0, 1.0), View(1, 1.0), View(0, 0.75)]
    x = images[:6]
    at48 = copy.copy(model).set_params(image_size=48).transform(images)
    views = [model.transform(x), Encoder.of(model).encode(flipped(x, 1)).rows(len(x)), at48[:6]]
    want = np.mean([model.predict_proba_codes(v) for v in views], axis=0)
    np.testing.assert_allclose(model.predict_proba(x), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain.predict_proba(x), want, rtol=0, atol=1e-4)
    cs = encode_images(FastVLAD(**params), images)
    assert len(cs.views) == 2
    np.testing.assert_allclose(cs.views[1], at48, rtol=1e-5, atol=1e-6)
    result = cross_validate(FastVLAD(**params), images, labels, n_splits=2, codes=cs)
    assert result.views == model.views()
    again = fastvlad.load(model.save(tmp_path / "m.fvl"))
    assert again.tta_zoom == (0.75,)
    np.testing.assert_array_equal(again.predict_proba(x), model.predict_proba(x))


def test_saved_model_reapplies_its_normalisation(vgg16_path: Path, small_demo: tuple[list[np.ndarray], np.ndarray],
                                                 tmp_path: Path) -> None:
    images, labels = small_demo
    model = FastVLAD(**small_model_params(normalize="clahe")).fit(images, labels)
    again = fastvlad.load(model.save(tmp_path / "m.fvl"))
    assert again.normalize == "clahe"
    np.testing.assert_array_equal(again.transform(images[:3]), model.transform(images[:3]))
    assert not np.allclose(again.set_params(normalize="none").transform(images[:3]), model.transform(images[:3]))


def test_a_model_file_from_before_these_options_loads_as_it_was_trained(tmp_path: Path) -> None:
    """A config.json without normalize/aspect/classifier/... was trained without them: it loads with
    none, squashed, XGBoost (not with today's defaults)."""
    saved = tmp_path / "m.fvl"
    saved.write_bytes(model_files.tiny_model_bytes())
    cfg = json.loads(model_files.members_of(saved)["config.json"])
    for name in ("normalize", "aspect", "classifier", "C", "class_weight", "augment", "zoom", "zoom_jitter", "tta",
                 "tta_zoom", "points"):
        cfg["params"].pop(name, None)
    old = fastvlad.load(model_files.edited(saved, tmp_path / "old.fvl", config_json=json.dumps(cfg).encode()))
    assert (old.normalize, old.aspect, old.classifier, old.class_weight, old.augment, old.zoom, old.zoom_jitter,
            old.tta, old.tta_zoom, old.points) == ("none", "squash", "xgboost", None, 0, (), False, 0, (), "per_image")


# -- the linear heads (logistic, ridge) -----------------------------------------------------------------
@pytest.fixture(scope="module", params=["logistic", "ridge"])
def linear(vgg16_path: Path, small_demo: tuple[list[np.ndarray], np.ndarray],
           request: pytest.FixtureRequest) -> FastVLAD:
    images, labels = small_demo
    return FastVLAD(**small_model_params(classifier=request.param)).fit(images, labels)


def test_linear_head_save_load_and_explain(linear: FastVLAD, small_demo: tuple[list[np.ndarray], np.ndarray],
                                           tmp_path: Path) -> None:
    images, _ = small_demo
    path = linear.save(tmp_path / "m.fvl")
    with zipfile.ZipFile(path) as zf:
        assert "linear.npy" in zf.namelist() and "booster.ubj" not in zf.namelist()
    again = fastvlad.load(path)
    assert (again.classifier, again.alpha) == (linear.classifier, linear.alpha)
    np.testing.assert_array_equal(again.predict_proba(images[:4]), linear.predict_proba(images[:4]))
    e = explain.explain(again, images[3])
    np.testing.assert_allclose(e.contributions.sum(axis=1) + e.bias, e.margin, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.exp(e.margin) / np.exp(e.margin).sum(), e.proba, rtol=1e-4)
    with pytest.raises(AttributeError, match="no XGBoost booster"):
        again.booster_


def test_class_weight_balances_the_classes(vgg16_path: Path, small_demo: tuple[list[np.ndarray], np.ndarray]) -> None:
    """With one class 4× over-represented, balanced weights give every class the same total weight
    (the head's fit sees them: its coefficients change)."""
    from fastvlad import classifier

    y = np.array([0, 0, 0, 0, 1, 2])
    w = classifier.balanced_weights(y, 3)
    np.testing.assert_allclose([w[y == c].sum() for c in range(3)], [2.0, 2.0, 2.0])
    images, labels = small_demo
    keep = [i for i, lab in enumerate(labels) if lab == labels[0]] * 3 + list(range(len(labels)))
    X, Y = [images[i] for i in keep], np.asarray(labels)[keep]
    heads = [FastVLAD(**small_model_params(classifier="logistic", class_weight=cw)).fit(X, Y).head_.coef
             for cw in ("balanced", None)]
    assert not np.allclose(*heads)


@pytest.mark.parametrize(("array", "match"), [
    (np.zeros((4, 5), np.float32), r"linear\.npy has shape \(4, 5\)"),
    (np.full((4, 8 * 64 + 1), np.nan, np.float32), "finite"),
])
def test_a_damaged_linear_head_is_refused(linear: FastVLAD, tmp_path: Path, array: np.ndarray, match: str) -> None:
    import io

    saved = linear.save(tmp_path / "m.fvl")
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    bad = model_files.edited(saved, tmp_path / "bad.fvl", linear_npy=buf.getvalue())
    with pytest.raises(ModelFormatError, match=match):
        fastvlad.load(bad)


def test_a_model_needs_exactly_one_head(linear: FastVLAD, tmp_path: Path) -> None:
    saved = linear.save(tmp_path / "m.fvl")
    with pytest.raises(ModelFormatError, match="one classifier head"):
        fastvlad.load(model_files.edited(saved, tmp_path / "none.fvl", linear_npy=None))


def test_describe_views_names_each_view() -> None:
    """The evaluate/demo wording: flips counted, sizes listed — a size of 1.0 is not a flip."""
    from fastvlad.encoder import describe_views, predict_views

    assert describe_views(predict_views(1, (0.7,))) == \
        "each image, 1 flipped copy and the image at 0.7× the input size (3 CNN passes)"
    assert describe_views(predict_views(0, (1.0,))) == "each image and the image at 1× the input size (2 CNN passes)"
    assert describe_views(predict_views(0)) == "each image (1 CNN pass)"


def test_each_view_names_its_progress_bar() -> None:
    """Each CNN pass of a prediction or a fit has its own bar: the labels tell them apart."""
    from fastvlad.encoder import View, predict_views

    assert [v.label() for v in predict_views(3, (0.7,))] == [
        "encoding", "encoding, mirrored", "encoding, flipped up–down", "encoding, turned 180°", "encoding, at 0.7×"]
    assert View(1, 1.2).label() == "encoding, mirrored, at 1.2×"


def test_the_stretch_by_hand() -> None:
    """The 1st–99th percentile stretch of a 0..100 ramp, by hand (the other tests derive their
    expectations from ``STRETCH_PERCENTILES`` itself): 1 → 0, 50 → 255·49/98, 98 → 255·97/98, 99 → 255."""
    out = intensity.stretch(np.arange(101, dtype=np.float32).reshape(1, 101))[0]
    np.testing.assert_allclose(out[[0, 1, 50, 98, 99, 100]], [0, 0, 255 * 49 / 98, 255 * 97 / 98, 255, 255], rtol=1e-6)

