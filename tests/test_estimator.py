"""End to end on demo data: fit, predict, save/load, the reference pipeline, scikit-learn conventions."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

import fastvlad
from fastvlad import backends, reference
from fastvlad.backbone import Backbone
from fastvlad.backends.cpu import CPU, CpuBackend
from fastvlad.encoder import Encoder, EncoderSettings, batch_points
from fastvlad.errors import (
    InvalidDatasetError,
    ModelFormatError,
    NotFittedError,
    ParameterError,
)
from fastvlad.estimator import FastVLAD, load

from . import tiny_model
from .conftest import reference_code, small_model_params
from .model_files import members_of, write_members


@pytest.fixture(scope="module")
def fitted(vgg16_path: Path, small_demo: tuple[list[np.ndarray], np.ndarray]) -> FastVLAD:
    X, y = small_demo
    return FastVLAD(**small_model_params()).fit(X, y)


def test_fit_predict_shapes(fitted: FastVLAD, small_demo: tuple[list[np.ndarray], np.ndarray]) -> None:
    X, y = small_demo
    proba = fitted.predict_proba(X[:5])
    assert proba.shape == (5, 4) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert set(fitted.predict(X[:5])) <= set(y)
    codes = fitted.transform(X[:3])
    assert codes.shape == (3, 8 * 64) and codes.dtype == np.float32  # k · pca (the default)
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1, rtol=1e-5)
    assert fitted.score(X, y) > 0.5  # training accuracy on separable demo classes


def test_deterministic_given_seed(fitted: FastVLAD, small_demo: tuple[list[np.ndarray], np.ndarray]) -> None:
    X, y = small_demo
    again = clone(fitted).fit(X, y)
    np.testing.assert_array_equal(again.codebook_, fitted.codebook_)
    np.testing.assert_array_equal(again.predict_proba(X[:4]), fitted.predict_proba(X[:4]))


@pytest.fixture(scope="module")
def fitted_faithful(vgg16_path: Path, small_demo: tuple[list[np.ndarray], np.ndarray]) -> FastVLAD:
    X, y = small_demo
    params = {k: v for k, v in small_model_params().items() if k not in ("density", "k", "image_size")}
    return FastVLAD.faithful(density=0.1, k=8, image_size=64, **params).fit(X, y)


@pytest.fixture(scope="module")
def fitted_soft(vgg16_path: Path, small_demo: tuple[list[np.ndarray], np.ndarray]) -> FastVLAD:
    X, y = small_demo
    return FastVLAD(**small_model_params(softness=3.0)).fit(X, y)


@pytest.mark.parametrize("model", ["fitted", "fitted_faithful", "fitted_soft"])
def test_codes_match_the_notebook_pipeline(model: str, small_demo: tuple[list[np.ndarray], np.ndarray],
                                           request: pytest.FixtureRequest) -> None:
    """The fast path equals full-map upsampling (then the hypercolumn PCA, when there is one) +
    per-centre VLAD at the same sampled points (hard, or soft with ``softness``)."""
    fitted = request.getfixturevalue(model)
    assert (fitted.projection_ is None) == (model == "fitted_faithful")
    X, _ = small_demo
    settings = EncoderSettings.of(fitted)
    pixels = np.stack([settings.preprocess(x) for x in X[:2]])
    taps = Backbone(fitted.backbone)(pixels)
    points = batch_points(pixels, settings)
    for i in range(2):
        hc = reference.sample_hypercolumns([t[i] for t in taps], points[i])
        if fitted.projection_ is not None:
            hc = fitted.projection_.apply(hc)
        expected = reference_code(hc, fitted)
        got = fitted.transform([X[i]])[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("pca,softness", [(None, None), (8, None), (None, 10.0), (8, 10.0)])
def test_a_first_tap_coarser_than_the_input_is_interpolated_onto_the_input_grid(
        pca: int | None, softness: float | None, small_demo: tuple[list[np.ndarray], np.ndarray]) -> None:
    """Points are drawn on the input's pixel grid; a backbone whose first tap is strided (here
    block3 at a quarter of the input) has every tap interpolated onto that grid, as the paper
    upsamples every tap to the input: codes equal the reference on the 64×64 grid."""
    X, y = small_demo
    fitted = FastVLAD(**small_model_params(pca=pca, density=0.5, softness=softness,
                                           taps=["block3_conv3", "block5_conv3"])).fit(X, y)
    settings = EncoderSettings.of(fitted)
    pixels = np.stack([settings.preprocess(x) for x in X[:2]])
    taps = Encoder.of(fitted).cnn(pixels)
    assert taps[0].shape[1:3] == (16, 16)
    points = batch_points(pixels, settings)
    assert points[..., 0].max() > 16  # the points cover the input's grid, not the first tap's
    hc = reference.gather(taps, points, out_hw=(64, 64)).astype(np.float64)
    if fitted.projection_ is not None:
        hc = hc @ fitted.projection_.weight + fitted.projection_.bias
    codes = fitted.transform(X[:2])
    for i in range(2):
        expected = reference_code(hc[i].astype(np.float32), fitted)
        np.testing.assert_allclose(codes[i], expected, rtol=1e-4, atol=2e-5)


def test_save_load_roundtrip(fitted: FastVLAD, small_demo: tuple[list[np.ndarray], np.ndarray], tmp_path: Path) -> None:
    X, _ = small_demo
    path = fitted.save(tmp_path / "m.fvl")
    loaded = fastvlad.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X[:3]), fitted.predict_proba(X[:3]))
    assert loaded.get_params() == fitted.get_params()
    with zipfile.ZipFile(path) as zf:
        assert set(zf.namelist()) == {"format.json", "config.json", "codebook.npy", "booster.ubj", "projection.npy",
                                      "manifest.json"}
        assert all(b"pickle" not in zf.read(n) for n in ("config.json", "format.json"))


def test_soft_model_save_load_gives_the_same_codes(fitted_soft: FastVLAD,
                                                   small_demo: tuple[list[np.ndarray], np.ndarray],
                                                   tmp_path: Path) -> None:
    X, _ = small_demo
    fitted_soft.save(tmp_path / "soft.fvlad")
    again = load(tmp_path / "soft.fvlad")
    assert again.softness == 3.0 and FastVLAD.faithful().softness is None
    np.testing.assert_array_equal(again.transform(X[:4]), fitted_soft.transform(X[:4]))


def test_soft_encoder_does_the_unit_once_and_the_cross_term_once_per_batch(
        fitted_soft: FastVLAD, small_demo: tuple[list[np.ndarray], np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    """Soft assignment needs the cross term x·cᵀ for the labels and the weights, and the codebook's
    spacing: one GEMM per image and batch, one spacing per encoder, not one per use."""
    X, _ = small_demo
    onto_centres = fitted_soft.codebook_.T.shape  # (p, k)
    gemms, units = [0], [0]
    matmul, spacing = CpuBackend.matmul_per_image, fastvlad.vlad.spacing

    def counted_matmul(self: CpuBackend, a: np.ndarray, b: np.ndarray, **kw: object) -> np.ndarray:
        gemms[0] += b.shape == onto_centres  # the products onto the centres (not the PCA's)
        return matmul(self, a, b, **kw)

    def counted_spacing(c: np.ndarray) -> float:
        units[0] += 1
        return spacing(c)

    monkeypatch.setattr(CpuBackend, "matmul_per_image", counted_matmul)
    monkeypatch.setattr(fastvlad.vlad, "spacing", counted_spacing)
    encoder = Encoder.of(fitted_soft)
    batches = list(encoder.encode_batches(X[:10]))  # batch_size 8: two batches
    assert len(batches) == 2 and gemms[0] == 2 and units[0] == 1


def test_model_file_without_softness_loads_as_the_nearest_centre(small_demo: tuple[list[np.ndarray], np.ndarray],
                                                                 tmp_path: Path) -> None:
    """A model file written before ``softness`` existed was trained with the nearest centre: it loads
    with ``softness=None`` and gives the codes it gave then, not the soft default's."""
    X, y = small_demo
    hard = FastVLAD(**small_model_params(softness=None)).fit(X, y)
    members = members_of(hard.save(tmp_path / "new.fvl"))
    config = json.loads(members["config.json"])
    del config["params"]["softness"]
    members["config.json"] = json.dumps(config).encode()
    old = load(write_members(tmp_path / "old.fvl", members))
    assert old.softness is None
    np.testing.assert_array_equal(old.transform(X[:3]), hard.transform(X[:3]))


@pytest.mark.parametrize("member", ["config.json", "codebook.npy", "booster.ubj", "format.json"])
def test_tampered_member_is_refused(fitted: FastVLAD, tmp_path: Path, member: str) -> None:
    src = fitted.save(tmp_path / "m.fvl")
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    data = bytearray(members[member])
    data[len(data) // 2] ^= 0x01
    members[member] = bytes(data)
    bad = tmp_path / "bad.fvl"
    with zipfile.ZipFile(bad, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    with pytest.raises(ModelFormatError, match=member if member != "format.json" else "format|not a fastvlad"):
        load(bad)


def test_flipped_byte_in_file_is_refused(fitted: FastVLAD, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "m.fvl")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFormatError):
        load(path)


def test_not_fitted_and_bad_params(small_demo: tuple[list[np.ndarray], np.ndarray]) -> None:
    X, y = small_demo
    with pytest.raises(NotFittedError):
        FastVLAD().predict(X[:1])
    with pytest.raises(ParameterError, match="density"):
        FastVLAD(density=0).fit(X, y)
    with pytest.raises(ParameterError, match="device"):
        FastVLAD(device="tpu").fit(X, y)
    with pytest.raises(ParameterError, match="k=1"):
        FastVLAD(k=1).fit(X, y)


def test_backend_resolution() -> None:
    assert isinstance(backends.resolve("cpu"), CpuBackend)
    assert backends.resolve("auto").device in ("cpu", "cuda")
    if backends.cuda_problem() is not None:
        with pytest.raises(fastvlad.DeviceUnavailableError, match="fastvlad\\[gpu\\]"):
            backends.resolve("cuda")


def test_gpu_backend_decodes_on_several_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """One decoding thread cannot keep a GPU fed (BENCHMARKS.md): the CUDA backend decodes on up to
    ``GPU_DECODE_THREADS``, the CPU backend on one; a batch size (an estimator's) keeps that."""
    from fastvlad import config

    monkeypatch.setattr(backends, "cuda_problem", lambda: None)
    monkeypatch.setattr(config, "usable_cores", lambda: 16)
    gpu = backends.resolve("cuda")
    assert gpu.decode_threads == config.GPU_DECODE_THREADS and backends.resolve("cpu").decode_threads == 1
    assert backends.resolve("cuda", batch_size=3) == dataclasses.replace(gpu, batch_size=3)


def test_config_tunables_set_at_run_time_take_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch sizes, the assignment's block rows and the PCA's and codebook's point caps were
    frozen into default arguments at import: setting ``fastvlad.config.X`` did nothing for them
    while ``MAX_IMAGE_PIXELS``, read at the call, worked."""
    from fastvlad import codebook, config, projection
    from fastvlad.encoder import sample_plan

    monkeypatch.setattr(config, "CPU_BATCH_SIZE", 3)
    monkeypatch.setattr(config, "GPU_BATCH_SIZE", 5)
    assert backends.resolve("cpu").batch_size == 3
    monkeypatch.setattr(backends, "cuda_problem", lambda: None)
    assert backends.resolve("cuda").batch_size == 5
    seen: list[int] = []
    monkeypatch.setattr(config, "ASSIGN_BLOCK_ROWS", 7)
    real = CpuBackend.assign
    monkeypatch.setattr(CpuBackend, "assign", lambda self, x, c, rows, dist: seen.append(rows) or real(self, x, c, rows, dist))
    rng = np.random.default_rng(0)
    x, c = rng.standard_normal((20, 4), dtype=np.float32), rng.standard_normal((3, 4), dtype=np.float32)
    np.testing.assert_array_equal(codebook.nearest(x, c), reference.assign(x, c))
    assert seen == [7]
    monkeypatch.setattr(config, "CODEBOOK_MAX_POINTS", 40)
    plan = sample_plan(10, 10, EncoderSettings(density=10.0, image_size=(32, 32)))
    assert plan.per_image * len(plan.chosen) <= 40
    monkeypatch.setattr(config, "PCA_MAX_POINTS", 30)
    sample = rng.standard_normal((200, 6), dtype=np.float32)
    np.testing.assert_array_equal(projection.fit(sample, 2).weight, projection.fit(sample, 2, max_points=30).weight)
    assert not np.allclose(projection.fit(sample, 2).weight, projection.fit(sample, 2, max_points=200).weight)


@pytest.mark.parametrize("threads", [1, 3])
def test_points_are_sampled_while_decoding(small_demo: tuple[list[np.ndarray], np.ndarray], threads: int) -> None:
    """``Encoder.batches`` samples every image's points on the decoding threads: the same points
    ``batch_points`` gives for the batch, whatever the number of threads."""
    images, _ = small_demo
    settings = EncoderSettings(density=0.1, image_size=(64, 64))
    backend = dataclasses.replace(CPU, batch_size=5, decode_threads=threads)
    seen = []
    for batch in Encoder(settings, backend, None).batches(images):
        assert batch.points is not None and batch.points.dtype == np.int32
        np.testing.assert_array_equal(batch.points, batch_points(batch.pixels, settings))
        seen += batch.indices
    assert seen == list(range(len(images)))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_ridge_head_is_scikit_learns_ridge_classifier(n_classes: int) -> None:
    """``classifier="ridge"``: the head's scores are ``RidgeClassifier(alpha)``'s decision values
    (with the balanced sample weights), its classes argmax of them, and ``alpha`` reaches the fit."""
    from sklearn.linear_model import RidgeClassifier

    from fastvlad import classifier

    rng = np.random.default_rng(1)
    codes, y = rng.normal(size=(45, 30)).astype(np.float32), rng.integers(0, n_classes, 45)
    y[:n_classes] = np.arange(n_classes)
    w = classifier.balanced_weights(y, n_classes)
    head = FastVLAD(classifier="ridge", alpha=3.0, code_pca=None).fit_codes(codes, y).head_
    for alpha, same in ((3.0, True), (30.0, False)):
        ref = RidgeClassifier(alpha=alpha).fit(codes, y, sample_weight=w)
        scores = ref.decision_function(codes).reshape(len(codes), -1)
        mine = head.margin(codes) if n_classes > 2 else head.margin(codes)[:, 1:]
        assert np.allclose(mine, scores, rtol=1e-4, atol=1e-4) == same
    if n_classes == 2:  # each class's own score, as with more classes: class 0's target is −1
        np.testing.assert_allclose(head.margin(codes)[:, 0], -head.margin(codes)[:, 1], rtol=1e-6)
    np.testing.assert_array_equal(head.margin(codes).argmax(axis=1), RidgeClassifier(alpha=3.0).fit(
        codes, y, sample_weight=w).predict(codes))
    probs = head.predict_proba(codes)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("classifier_name", ["ridge", "logistic"])
def test_code_pca_fits_the_head_on_the_code_axes(classifier_name: str) -> None:
    """``code_pca=d``: the head is fitted on the training codes' ``CodeAxes`` (centred, first d principal
    axes, each over the square root of its standard deviation, every code then unit length) and keeps
    them: its scores on any codes are those of a head fitted on the projections, its contributions
    sum to them, and it differs from the head on the codes themselves."""
    from fastvlad import classifier

    rng = np.random.default_rng(2)
    scales = np.geomspace(3.0, 0.01, 40)
    codes = (rng.normal(size=(70, 40)) * scales + 0.5).astype(np.float32)
    y = (codes[:, 0] + codes[:, 5] > 1.0).astype(int) + (codes[:, 30] > 0.5)
    new = (rng.normal(size=(9, 40)) * scales + 0.5).astype(np.float32)
    head = FastVLAD(classifier=classifier_name, code_pca=12).fit_codes(codes, y).head_
    axes = classifier.CodeAxes.fit(codes, 12)
    assert head.axes is not None
    np.testing.assert_array_equal(head.axes.axes, axes.axes)
    # alpha=None on the axes: the strength measured there, not the codes' one
    on_axes = FastVLAD(classifier=classifier_name, code_pca=None,
                       alpha=classifier.RIDGE_ALPHA["code axes"]).fit_codes(axes.apply(codes), y).head_
    for x in (codes, new):
        np.testing.assert_allclose(head.margin(x), on_axes.margin(axes.apply(x)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(head.contributions(x).sum(axis=2) + head.intercept, head.margin(x), rtol=1e-5,
                                   atol=1e-6)
    plain = FastVLAD(classifier=classifier_name, code_pca=None).fit_codes(codes, y).head_
    np.testing.assert_allclose(plain.contributions(new).sum(axis=2) + plain.intercept, plain.margin(new), rtol=1e-5,
                               atol=1e-6)
    assert not np.allclose(head.margin(new), plain.margin(new), rtol=1e-2, atol=1e-2)
    # the axes: centred, each axis' variance ∝ the codes' standard deviation along it, codes unit length on them
    z = axes.projected(codes)
    assert axes.axes.shape == (40, 12) and axes.axes.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    s = np.linalg.svd(codes - codes.mean(axis=0), compute_uv=False)[:12]
    ratio = z.var(axis=0) / s
    np.testing.assert_allclose(ratio / ratio[0], 1.0, rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(axes.apply(new), axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(classifier.CodeAxes.from_array(axes.to_array()).axes, axes.axes)


def test_a_model_with_code_pca_predicts_the_same_after_save_and_load(vgg16_path: Path, tmp_path: Path) -> None:
    """The head's axes are saved (``code_axes.npy``) and give the same probabilities after loading."""
    images, labels = tiny_model.demo_images()
    model = clone(tiny_model.fitted()).set_params(classifier="ridge", code_pca=5).fit(list(images), labels)
    assert model.head_.axes is not None and model.head_.axes.axes.shape[1] == 5
    loaded = load(model.save(tmp_path / "m.fvl"))
    assert "code_axes.npy" in members_of(tmp_path / "m.fvl")
    np.testing.assert_array_equal(loaded.predict_proba(list(images[:6])), model.predict_proba(list(images[:6])))


def test_code_pca_keeps_only_the_axes_the_codes_span() -> None:
    """Codes of rank 3 give 3 axes, whatever ``code_pca`` asks; identical codes are an error."""
    from fastvlad import classifier

    rng = np.random.default_rng(3)
    codes = rng.normal(size=(30, 3)) @ rng.normal(size=(3, 20))
    assert classifier.CodeAxes.fit(codes, 10).axes.shape == (20, 3)
    with pytest.raises(InvalidDatasetError, match="span no axis"):
        classifier.CodeAxes.fit(np.ones((5, 20)), 4)


@pytest.mark.parametrize(("params", "match"), [
    (dict(code_pca=0), "code_pca=0"),
    (dict(code_pca=2.5), "code_pca=2.5"),
    (dict(code_pca=None, alpha=0.0), "alpha=0.0"),
])
def test_code_pca_is_checked(params: dict[str, object], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        FastVLAD(**params).fit_codes(np.eye(4, dtype=np.float32), [0, 1, 0, 1])


def test_alpha_none_is_the_strength_measured_for_what_the_head_sees() -> None:
    """``alpha=None`` (the default): ``RIDGE_ALPHA``'s 80 on the code axes (``code_pca``, the default), 20
    on the codes themselves; a number given is used as it is. XGBoost ignores ``code_pca`` (as the
    linear heads ignore its parameters): no axes, the booster on the codes."""
    from fastvlad import classifier

    assert classifier.RIDGE_ALPHA == {"code axes": 80.0, "codes": 20.0}
    assert classifier.ridge_alpha(FastVLAD()) == 80.0
    assert classifier.ridge_alpha(FastVLAD(code_pca=None)) == 20.0
    assert classifier.ridge_alpha(FastVLAD(alpha=7.0)) == classifier.ridge_alpha(FastVLAD(alpha=7.0, code_pca=None)) == 7.0
    rng = np.random.default_rng(4)
    codes, y = rng.normal(size=(40, 12)).astype(np.float32), np.arange(40) % 2
    default, eighty = FastVLAD().fit_codes(codes, y).head_, FastVLAD(alpha=80.0).fit_codes(codes, y).head_
    np.testing.assert_array_equal(default.margin(codes), eighty.margin(codes))
    twenty = FastVLAD(alpha=20.0).fit_codes(codes, y).head_
    assert not np.allclose(default.margin(codes), twenty.margin(codes), rtol=1e-3, atol=1e-3)
    booster = FastVLAD(classifier="xgboost", n_estimators=2).fit_codes(codes, y)
    assert not classifier.uses_code_axes(booster) and booster.code_pca == 64
    assert not isinstance(booster.head_, classifier.LinearHead)


def test_xgboost_regularisation_reaches_the_booster() -> None:
    """``subsample`` and ``min_child_weight`` are passed to XGBoost and change the trees."""
    from fastvlad import classifier

    settings = classifier.BoosterSettings.of(FastVLAD(subsample=0.5, min_child_weight=3.0))
    params = settings.params(3, "cpu", 0)
    assert (params["subsample"], params["min_child_weight"]) == (0.5, 3.0)
    rng = np.random.default_rng(0)
    codes, y = rng.random((60, 8), dtype=np.float32), rng.integers(0, 3, 60)
    plain = classifier.to_bytes(classifier.train(codes, y, 3, classifier.BoosterSettings(n_estimators=5)))
    for changed in (settings, classifier.BoosterSettings(n_estimators=5, min_child_weight=3.0)):
        assert classifier.to_bytes(classifier.train(codes, y, 3, changed)) != plain


def test_images_at_another_scale_than_the_training_images_are_named(caplog: pytest.LogCaptureFixture,
                                                                    tmp_path: Path) -> None:
    """The fit records the training images' input scale; predicting an image twice their size (a
    larger field, resized to the same input: smaller features) logs a warning naming it, one within
    ``config.SCALE_TOLERANCE`` does not, and the record survives save and load."""
    import logging

    from fastvlad import demo

    model = tiny_model.fitted()
    assert model.train_info_["input_scale"] == [1.0, 1.0, 1.0]  # 64×64 demo images at image_size=64
    rng = np.random.default_rng(1)
    same, near = demo.make_image(0, 64, rng), demo.make_image(1, 72, rng)
    large = demo.make_image(2, 128, rng)
    with caplog.at_level(logging.WARNING, logger="fastvlad"):
        model.predict([same, near])
    assert not [r for r in caplog.records if "scale of the training images" in r.getMessage()]
    loaded = load(model.save(tmp_path / "m.fvl"))
    assert loaded.train_info_["input_scale"] == [1.0, 1.0, 1.0]
    with caplog.at_level(logging.WARNING, logger="fastvlad"):
        loaded.predict([same, large])
    said = [r.getMessage() for r in caplog.records if "scale of the training images" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("fastvlad: 1 of 2 images reach the network at 0.5× the scale")
    assert "e.g. array #1;" in said[0] and "--tile" in said[0] and "--scale" in said[0]
    caplog.clear()
    older = tiny_model.fitted_copy()  # a model saved before the record: nothing to compare with, nothing said
    older.train_info_ = {k: v for k, v in model.train_info_.items() if k != "input_scale"}
    with caplog.at_level(logging.WARNING, logger="fastvlad"):
        older.predict([same, large])
    assert not [r for r in caplog.records if "scale of the training images" in r.getMessage()]


def test_input_scales_follow_the_readable_images(tmp_path: Path) -> None:
    """``Encoded.scales`` lines up with ``indices`` when an image between two others cannot be read."""
    from fastvlad import demo

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    rng = np.random.default_rng(2)
    model = tiny_model.fitted_copy(on_error="skip")
    enc = model.encode([demo.make_image(0, 64, rng), str(broken), demo.make_image(1, 128, rng)])
    np.testing.assert_array_equal(enc.indices, [0, 2])
    np.testing.assert_allclose(enc.scales, [1.0, 0.5])


def test_score_checks_its_labels_and_compares_them_as_text(tmp_path: Path) -> None:
    """``score`` was scikit-learn's: a raw ValueError on a length mismatch, "Mix of label input types"
    for numbers against a loaded model's class names."""
    images, labels = tiny_model.demo_images()
    model = tiny_model.fitted()
    X = list(images[:8])
    right = model.predict(X) == labels[:8]
    assert model.score(X, labels[:8]) == pytest.approx(right.mean())
    assert model.score(X, labels[:8], sample_weight=right.astype(float)) == 1.0
    with pytest.raises(ParameterError, match=r"y has shape \(2,\); it must be one label per image \(3\)"):
        model.score(X[:3], labels[:2])
    with pytest.raises(ParameterError, match=r"y has shape \(\); it must be one label per image"):
        model.score(X[:3], None)
    with pytest.raises(ParameterError, match="labels must be strings or numbers"):
        model.score(X[:3], [1.0, np.nan, 2.0])
    with pytest.raises(ParameterError, match="sample_weight"):
        model.score(X[:3], labels[:3], sample_weight=[1.0, -1.0, 1.0])
    numbered = clone(model).fit(list(images), np.unique(labels, return_inverse=True)[1])
    loaded = load(numbered.save(tmp_path / "n.fvl"))  # class names "0".."3" now
    assert loaded.score(X, numbered.predict(X)) == 1.0


def test_fit_codes_refuses_codes_that_predict_could_not_use() -> None:
    """Codes of another width fitted a head that ``predict`` then broke on (a broadcast error); NaN
    codes died in LAPACK."""
    model = tiny_model.fitted_copy()
    width = model.codebook_.size
    y = ["a", "b"] * 4
    with pytest.raises(ParameterError, match=rf"codes have 7 columns but this model's codebook makes codes of {width}"):
        model.fit_codes(np.random.default_rng(0).random((8, 7)), y)
    with pytest.raises(ParameterError, match="codes hold NaN"):
        FastVLAD().fit_codes(np.full((8, 7), np.nan), y)
    with pytest.raises(ParameterError, match=r"codes of shape \(8,\)"):
        FastVLAD().fit_codes(np.zeros(8), y)
    with pytest.raises(ParameterError, match=r"one label per code \(8\)"):
        FastVLAD().fit_codes(np.zeros((8, 7)), y[:6])
    # finite as float64, infinite as the head's float32: was LinAlgError "Eigenvalues did not converge"
    with pytest.raises(ParameterError, match="past float32's range"):
        model.fit_codes(np.random.default_rng(0).random((8, width)) * 1e300, y)


def test_a_head_fitted_alone_cannot_encode_or_save(tmp_path: Path) -> None:
    """fit_codes trains only the head: predict then raised the encoder's ValueError ("fit_codebook
    first") and save an AttributeError."""
    from fastvlad.errors import NotFittedError

    head_only = FastVLAD().fit_codes(np.random.default_rng(0).random((8, 7)), ["a", "b"] * 4)
    for use in (lambda: head_only.predict([np.zeros((32, 32))]), lambda: head_only.transform([np.zeros((32, 32))]),
                lambda: head_only.save(tmp_path / "m.fvl")):
        with pytest.raises(NotFittedError, match=r"no codebook yet \(fit_codes trains only the classifier head\)"):
            use()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("y", "match"), [
    (["", "b"] * 3, r"class name\(s\) '' are empty"),
    (["a\nb", "c"] * 3, r"'a\\nb' hold control or invisible format characters"),
    (["a", "a\u200b"] * 3, r"'a\\u200b' hold control or invisible format"),  # a second class that prints as "a"
    (["a\u202e", "b"] * 3, r"'a\\u202e'"),  # a bidi override: reversed the rest of the terminal line
    (["a\x85", "b"] * 3, r"'a\\x85'"),  # a C1 control character (next line)
    (["\u00e9", "e\u0301"] * 3, r"class names 'e\\u0301' and '\\xe9' differ only in Unicode normalisation"),
    (["a\x1b[31m", "c"] * 3, r"'a\\x1b\[31m'"),
    (["  ", "c"] * 3, r"class name\(s\) '  ' are empty or blank"),  # printed as nothing
    ([b"a", b"b"] * 3, "bytes: decode them to str first"),
])
def test_fit_refuses_class_names_a_model_could_not_write(y: list[object], match: str) -> None:
    """An empty class was fitted and saved into a model that ``load`` then called damaged; newlines and
    escape sequences went raw into CSV rows and the terminal; bytes came back as "b'a'" after a save."""
    images, _ = tiny_model.demo_images()
    with pytest.raises((ParameterError, InvalidDatasetError), match=match):
        FastVLAD(**small_model_params()).fit(list(images[:6]), y)


def test_arrays_and_generators_of_paths_and_labels(demo_folder: Path) -> None:
    """``np.array(paths)`` (what train_test_split returns for one) was refused as "shape (n,)"; a 1-D
    array of numbers still is."""
    model = tiny_model.fitted_copy()
    paths = sorted(str(p) for p in demo_folder.rglob("*.png"))[:3]
    np.testing.assert_array_equal(model.transform(np.array(paths)), model.transform(paths))
    with pytest.raises(ParameterError, match=r"X has shape \(3,\)"):
        model.transform(np.zeros(3))
    y = [str(c) for c in model.predict(paths)]
    assert model.score(iter(paths), (c for c in y)) == 1.0  # a generator y had been "shape ()"


def test_a_table_as_x_is_refused_naming_its_columns() -> None:
    """A DataFrame iterates over its column names: ``predict(df)`` had looked for an image called "path"."""
    pd = pytest.importorskip("pandas")
    with pytest.raises(ParameterError, match=r"X is a table with columns \['path', 'label'\]: pass its column"):
        tiny_model.fitted_copy().predict(pd.DataFrame({"path": ["a.png"], "label": ["x"]}))


@pytest.mark.parametrize("X, match", [
    ({"a.png": "a"}, r"X is a mapping \(dict\): pass a list of images"),  # had predicted on its keys
    (["", "b.png"], r"X\[0\] is an empty path"),  # had said ". is a folder"
])
def test_x_that_is_no_list_of_images_is_refused(X: object, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        tiny_model.fitted_copy().predict(X)  # type: ignore[arg-type]


def test_score_compares_values_as_accuracy_score_does() -> None:
    """``score`` compared labels as text: a model trained on 0/1 scored 0.0 against the same labels as
    floats or booleans (accuracy_score: 1.0), and text labels scored against a numeric model."""
    from sklearn.metrics import accuracy_score

    images, y = tiny_model.demo_images()
    X = list(images)
    yi = np.unique(y, return_inverse=True)[1] % 2
    model = tiny_model.fitted_copy().fit_codes(tiny_model.fitted().transform(X), yi)
    want = accuracy_score(yi, model.predict(X))
    assert model.score(X, yi.astype(float)) == model.score(X, yi) == want and model.score(X, yi.astype(bool)) == want
    with pytest.raises(fastvlad.errors.ParameterError, match="y holds text labels"):
        model.score(X, yi.astype(str))


def test_a_fit_that_fails_part_way_leaves_the_model_as_it_was() -> None:
    """``fit`` set the new codebook before it found a class left without images: the old head then
    predicted from the new codes without an error (other answers), or failed on another k."""
    images, y = tiny_model.demo_images()
    X = list(images)
    model = tiny_model.fitted_copy(on_error="skip")
    before = model.predict_proba(X)
    codebook = model.codebook_
    one = [x for x, c in zip(X, y) if c == y[0]]  # one class, and the other's images all missing: one class left
    with pytest.raises(InvalidDatasetError, match="only"):
        model.set_params(k=6).fit(one + ["/no/such/a.png", "/no/such/b.png"], [y[0]] * len(one) + ["new", "new"])
    assert model.codebook_ is codebook
    np.testing.assert_array_equal(model.set_params(k=8).predict_proba(X), before)


def test_errors_are_the_ones_scikit_learn_code_catches() -> None:
    """fastvlad's NotFittedError was not scikit-learn's (``check_estimators_unfitted`` failed, and
    ``except sklearn.exceptions.NotFittedError`` missed it); an empty X or one class were not ValueErrors."""
    import sklearn.exceptions
    from sklearn.utils.estimator_checks import check_estimators_unfitted

    check_estimators_unfitted("FastVLAD", FastVLAD())
    with pytest.raises(sklearn.exceptions.NotFittedError):
        FastVLAD().predict([np.zeros((32, 32), np.uint8)])
    with pytest.raises(ValueError, match="X is empty"):
        tiny_model.fitted().predict([])


def test_predicting_many_images_does_not_hold_their_codes() -> None:
    """Predicting held every image's codes (n × k·dim float32, in several copies) until the end, about
    135 kB per image at the default k and pca: 50,000 micrographs in one call meant gigabytes. Each
    batch's codes now go as soon as the head has read them; what grows with n is the probabilities."""
    import tracemalloc

    images, labels = tiny_model.demo_images()
    # k = 64: codes of 16 kB, far above what predicting keeps per image besides them (its list of
    # sources and their mirrors' wrappers, about 1 kB); the mirror too, as predict averages it
    model = FastVLAD(**small_model_params(k=64, density=0.2, codebook_images=24, tta=1)).fit(list(images), labels)
    code_bytes = 4 * model.codebook_.size

    def peak(n: int) -> int:
        X = [images[i % len(images)] for i in range(n)]
        tracemalloc.start()
        try:
            model.predict_proba(X)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(8)  # first calls allocate once (the backbone's session, caches)
    grown = (peak(256) - peak(64)) / 192  # both past the first batches, where the decoding queue fills
    assert grown < 0.5 * code_bytes, f"{grown:.0f} bytes per image kept, the codes are {code_bytes}"

