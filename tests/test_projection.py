"""Hypercolumn PCA: the fit against scikit-learn, projecting taps before interpolation against
interpolate-then-project, and the estimator/model-file plumbing of ``pca``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastvlad
from fastvlad import demo, hypercolumn, projection, reference
from fastvlad.backbone import Backbone
from fastvlad.encoder import EncoderSettings, batch_points
from fastvlad.errors import ModelFormatError, ParameterError
from fastvlad.estimator import FAITHFUL_PARAMS, FastVLAD

from .conftest import reference_code, small_model_params


def _taps(rng: np.random.Generator, n: int, hw: tuple[int, int], channels: tuple[int, ...]) -> list[np.ndarray]:
    """VGG-like pyramid of channels-last float32 taps, sizes floor-halved."""
    taps, (h, w) = [], hw
    for c in channels:
        taps.append(rng.standard_normal((n, h, w, c), dtype=np.float32) + rng.standard_normal(c, dtype=np.float32))
        h, w = max(h // 2, 1), max(w // 2, 1)
    return taps


def _random_projection(rng: np.random.Generator, dim: int, p: int) -> projection.Projection:
    sample = rng.standard_normal((400, dim), dtype=np.float32) @ rng.standard_normal((dim, dim), dtype=np.float32)
    return projection.fit(sample + 3.0, p)


def test_fit_matches_scikit_learn_pca() -> None:
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((600, 12)) @ rng.standard_normal((12, 12)) + 5.0).astype(np.float32)
    proj = projection.fit(x, 4)
    sk = PCA(4, svd_solver="full").fit(x.astype(np.float64))
    cos = np.abs(np.sum(proj.weight * sk.components_.T, axis=0))
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)  # same axes up to sign
    np.testing.assert_allclose(proj.apply(x), sk.transform(x) * np.sign(np.sum(proj.weight * sk.components_.T, 0)),
                               rtol=1e-4, atol=1e-3)
    assert proj.explained_variance_ratio == pytest.approx(sk.explained_variance_ratio_.sum(), rel=1e-5)
    assert np.all(proj.weight[np.abs(proj.weight).argmax(axis=0), np.arange(4)] > 0)  # sign convention


def test_whitened_projection_has_unit_covariance() -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2000, 10)) * np.arange(1, 11)).astype(np.float32)
    y = projection.fit(x, 6, whiten=True).apply(x).astype(np.float64)
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(6), atol=1e-3)


@pytest.mark.parametrize("mode", hypercolumn.INTERPOLATION_MODES)
@pytest.mark.parametrize("order", projection.ORDERS)
@pytest.mark.parametrize("hw, n_points", [((37, 23), 60), ((19, 31), 500), ((9, 9), 81)])
def test_project_before_interpolation_is_exact(mode: str, order: str, hw: tuple[int, int],
                                               n_points: int) -> None:
    """Every tap projected (before or after interpolation) equals interpolate-then-project."""
    rng = np.random.default_rng(hw[0] * 7 + n_points)
    taps = _taps(rng, 2, hw, (3, 5, 7, 2, 4))
    points = np.stack([hypercolumn.sample_points(rng, n_points, *hw) for _ in range(2)])
    proj = _random_projection(rng, 21, 6)
    got = projection.gather(taps, points, proj, mode, order=order)
    oracle = np.stack([(reference.sample_hypercolumns([t[i] for t in taps], points[i], mode).astype(np.float64)
                        @ proj.weight + proj.bias) for i in range(2)])
    assert got.shape == (2, min(n_points, hw[0] * hw[1]), 6) and got.dtype == np.float32
    scale = np.abs(oracle).max()
    np.testing.assert_allclose(got, oracle, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(got, proj.apply(hypercolumn.gather(taps, points, mode)), rtol=1e-5, atol=1e-5 * scale)


def test_real_vgg16_taps_both_orders(vgg16_path: Path) -> None:
    """On real VGG16 taps of a 224² demo image with the paper's 5,000 points and 128 components."""
    image = demo.make_dataset(1, size=224, random_state=3)[0][1]
    settings = EncoderSettings()
    pixels = settings.preprocess(image)[None]
    taps = Backbone()(pixels)  # the default VGG16 (vgg16_path makes sure it is cached)
    points = batch_points(pixels, settings)
    full = hypercolumn.gather(taps, points)
    proj = projection.fit(full[0], 128)
    expected = full[0].astype(np.float64) @ proj.weight + proj.bias
    scale = np.abs(expected).max()
    for order in projection.ORDERS:
        got = projection.gather(taps, points, proj, order=order)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-6 * scale, err_msg=order)
    # the cost rule: gather block1/2 at the points, project block3/4/5 at their own resolution
    # (with 128 PCA components, and with the k = 100 centres of the assignment)
    assert projection.points_side(taps, points.shape[1], 128) == 2
    assert projection.points_side(taps, points.shape[1], 100) == 2
    gathered = hypercolumn.gather(taps[:2], points)
    np.testing.assert_array_equal(projection.gather(taps, points, proj, gathered=gathered),
                                  projection.gather(taps, points, proj))


def test_a_code_does_not_depend_on_its_batch() -> None:
    """One GEMM per image: an image gives the same bits alone or with others, in any position."""
    rng = np.random.default_rng(5)
    taps = _taps(rng, 5, (40, 36), (8, 16, 32, 64))
    points = np.stack([hypercolumn.sample_points(rng, 300, 40, 36) for _ in range(5)])
    proj = _random_projection(rng, 120, 20)
    assert projection.points_side(taps, 300, 20) == 2  # GEMMs on both sides
    batch = projection.gather(taps, points, proj)
    for i in (0, 3):
        alone = projection.gather([t[i : i + 1] for t in taps], points[i : i + 1], proj)
        np.testing.assert_array_equal(alone[0], batch[i])


def test_projection_errors_and_roundtrip() -> None:
    rng = np.random.default_rng(4)
    proj = _random_projection(rng, 21, 6)
    again = projection.Projection.from_array(proj.to_array())
    np.testing.assert_array_equal(again.weight, proj.weight)
    np.testing.assert_array_equal(again.bias, proj.bias)
    taps = _taps(rng, 1, (8, 8), (3, 5))
    with pytest.raises(ParameterError, match="8 channels but the projection expects 21"):
        projection.gather(taps, np.zeros((1, 4, 2), np.int32), proj)
    with pytest.raises(ParameterError, match="pca=30"):
        projection.fit(rng.standard_normal((50, 21), dtype=np.float32), 30)
    with pytest.raises(ParameterError, match="order"):
        projection.gather(taps, np.zeros((1, 4, 2), np.int32), _random_projection(rng, 8, 6), order="sideways")
    with pytest.raises(ParameterError, match=r"gathered has shape \(1, 4, 5\), expected \(1, 4, 8\)"):
        projection.gather(taps, np.zeros((1, 4, 2), np.int32), _random_projection(rng, 8, 6), order="gather_first",
                          gathered=np.zeros((1, 4, 5), np.float32))


# -- the estimator with pca ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted_pca(vgg16_path: Path, small_demo: tuple[list[np.ndarray], np.ndarray]) -> FastVLAD:
    X, y = small_demo
    return FastVLAD(**small_model_params(pca=16)).fit(X, y)


def test_pca_codes_match_reference(fitted_pca: FastVLAD, small_demo: tuple[list[np.ndarray], np.ndarray]) -> None:
    """transform = VLAD of (full hypercolumns projected) at the same points, per-centre reference loop."""
    X, _ = small_demo
    proj = fitted_pca.projection_
    assert proj is not None and proj.components == 16 and fitted_pca.codebook_.shape == (8, 16)
    settings = EncoderSettings.of(fitted_pca)
    pixels = np.stack([settings.preprocess(x) for x in X[:2]])
    taps = Backbone(fitted_pca.backbone)(pixels)
    points = batch_points(pixels, settings)
    codes = fitted_pca.transform(X[:2])
    assert codes.shape == (2, 8 * 16)
    for i in range(2):
        hc = reference.sample_hypercolumns([t[i] for t in taps], points[i]).astype(np.float64)
        expected = reference_code((hc @ proj.weight + proj.bias).astype(np.float32), fitted_pca)
        np.testing.assert_allclose(codes[i], expected, rtol=1e-4, atol=2e-5)
    assert {"cnn", "hypercolumns", "pca", "kmeans", "assign", "vlad", "classifier", "total"} <= set(fitted_pca.timings_)


def test_pca_model_file_roundtrip(fitted_pca: FastVLAD, small_demo: tuple[list[np.ndarray], np.ndarray],
                                  tmp_path: Path) -> None:
    X, _ = small_demo
    path = fitted_pca.save(tmp_path / "m.fvl")
    loaded = fastvlad.load(path)
    np.testing.assert_array_equal(loaded.projection_.to_array(), fitted_pca.projection_.to_array())
    np.testing.assert_array_equal(loaded.predict_proba(X[:3]), fitted_pca.predict_proba(X[:3]))
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    assert "projection.npy" in members
    damaged = dict(members)
    data = bytearray(damaged["projection.npy"])
    data[-3] ^= 0x01
    damaged["projection.npy"] = bytes(data)
    for name, contents in {"bad": damaged, "gone": {n: d for n, d in members.items() if n != "projection.npy"}}.items():
        with zipfile.ZipFile(tmp_path / f"{name}.fvl", "w") as zf:
            for n, d in contents.items():
                zf.writestr(n, d)
        with pytest.raises(ModelFormatError, match="projection.npy"):
            fastvlad.load(tmp_path / f"{name}.fvl")


def test_faithful_settings() -> None:
    est = FastVLAD.faithful(k=8, device="cpu")
    assert est.pca is None and est.max_bin == 256 and est.n_estimators == 100 and est.max_depth == 3
    assert est.learning_rate == 0.1 and est.k == 8 and est.device == "cpu" and not est.power
    assert {n: getattr(FastVLAD.faithful(), n) for n in FAITHFUL_PARAMS} == FAITHFUL_PARAMS
    with pytest.raises(ParameterError, match="pca"):
        FastVLAD(pca=0).fit_codebook([np.zeros((64, 64), np.uint8)] * 2)


@pytest.mark.parametrize("pca", [64, 100])
def test_a_hypercolumn_no_wider_than_pca_is_kept_whole(vgg16_path: Path, tmp_path: Path, pca: int) -> None:
    """block1_conv2 alone has 64 channels: pca=64 or more fits no projection, and the model still
    saves, loads and predicts (the loader does not ask for a projection.npy it never had)."""
    images, labels = demo.make_dataset(3, size=64, random_state=0)
    est = FastVLAD(**small_model_params(taps=["block1_conv2"], pca=pca)).fit(images, labels)
    assert est.projection_ is None and est.codebook_.shape == (8, 64)
    loaded = fastvlad.load(est.save(tmp_path / "m.fvl"))
    np.testing.assert_array_equal(loaded.predict_proba(images[:3]), est.predict_proba(images[:3]))
    narrower = FastVLAD(**small_model_params(taps=["block1_conv2"], pca=63)).fit_codebook(images)
    assert narrower.projection_ is not None and narrower.codebook_.shape == (8, 63)


def test_the_axes_do_not_depend_on_blas_threads() -> None:
    """LAPACK's eigh on two threads gave other last bits than on one (subnormal entries in the rows of
    dead channels): the same fit on one machine wrote another model file under another thread count."""
    from threadpoolctl import threadpool_limits

    from fastvlad.encoder import Encoder

    from . import tiny_model

    images, _ = tiny_model.demo_images()
    sample = Encoder.of(tiny_model.fitted()).codebook_sample(list(images), 12)
    fits = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            fits.append(projection.fit(sample, 64).weight)
    np.testing.assert_array_equal(fits[0], fits[1])


def test_whitened_axes_have_unit_sample_variance() -> None:
    """On 50 points the covariance's n − 1 matters: whitened variances 1.02 with n."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((50, 6)) * np.arange(1, 7)).astype(np.float32)
    y = projection.fit(x, 4, whiten=True).apply(x).astype(np.float64)
    np.testing.assert_allclose(np.diag(np.cov(y, rowvar=False)), 1.0, rtol=1e-4)


def test_whitening_floors_a_flat_direction_by_the_largest_variance() -> None:
    """A direction with almost no variance is divided by at most √(1e-6 · the largest eigenvalue)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 5)).astype(np.float32)
    x[:, 4] *= 1e-5
    assert np.abs(projection.fit(x, 5, whiten=True).weight).max() <= 1.01 / np.sqrt(1e-6 * 0.5)


def test_the_pca_subsample_is_drawn_from_the_seed() -> None:
    x = np.random.default_rng(3).standard_normal((1000, 6)).astype(np.float32) * np.arange(1, 7)
    a = projection.fit(x, 3, random_state=0, max_points=100).weight
    assert not np.array_equal(a, projection.fit(x, 3, random_state=1, max_points=100).weight)
    np.testing.assert_array_equal(a, projection.fit(x, 3, random_state=0, max_points=100).weight)
