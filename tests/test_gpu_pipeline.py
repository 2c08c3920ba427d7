"""The GPU side of the backbone: float16 graph and IO binding + DLPack, both checked on the CPU
provider here (NumPy standing in for CuPy) and on a GPU when there is one (needs onnxruntime-gpu,
CuPy and a GPU; the CPU run is the oracle)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from fastvlad import backends, codebook, hypercolumn, vlad
from fastvlad.backbone import Backbone
from fastvlad.backends.cpu import CPU
from fastvlad.encoder import Encoder, EncoderSettings, batch_points


def _pixels(n: int = 2, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((n, 3, size, size), dtype=np.float32) * 255 - 120).astype(np.float32)


def test_fp16_graph_close_to_fp32(vgg16_path: Path) -> None:
    """The float16 copy of VGG16 runs (here on the CPU provider) and gives float16 taps within
    float16 rounding of the float32 ones, relative to each tap's scale."""
    pixels = _pixels()
    full = Backbone("vgg16", providers=("CPUExecutionProvider",))(pixels)
    half = Backbone("vgg16", providers=("CPUExecutionProvider",), fp16=True)(pixels)
    for a, b in zip(full, half):
        assert b.dtype == np.float16 and b.shape == a.shape
        assert np.abs(b.astype(np.float32) - a).max() <= 5e-3 * np.abs(a).max()


def test_fp16_taps_flow_through_the_cpu_kernels(vgg16_path: Path) -> None:
    """float16 taps are accepted by the Numba gather and equal gathering their float32 widening."""
    taps = Backbone("vgg16", fp16=True)(_pixels())
    points = np.stack([hypercolumn.sample_points(np.random.default_rng(i), 50, 32, 32) for i in range(2)])
    got = hypercolumn.gather(taps, points)
    np.testing.assert_array_equal(got, hypercolumn.gather([t.astype(np.float32) for t in taps], points))


@pytest.mark.parametrize("fp16", [False, True])
def test_io_binding_and_dlpack_on_the_cpu_provider(vgg16_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   fp16: bool) -> None:
    """The GPU path's binding code (float32 and float16 graphs) against ONNX Runtime's real
    IOBinding/OrtValue API, with outputs bound to the CPU and NumPy's from_dlpack as CuPy: the taps
    equal session.run's, and arrays from one batch stay intact (they own ORT's buffers) after the
    binding is gone and more batches ran."""
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(from_dlpack=np.from_dlpack))
    backbone = Backbone("vgg16", fp16=fp16)
    first, second = _pixels(2), _pixels(3, size=48)[:, :, ::-1]  # the second one non-contiguous
    want = backbone(first)
    got = backbone._run_bound(first, device="cpu")
    backbone._run_bound(second, device="cpu")
    for g, w in zip(got, want):
        assert isinstance(g, np.ndarray) and g.shape == w.shape and g.dtype == w.dtype and g.flags.c_contiguous
        np.testing.assert_array_equal(g, w)
    again = backbone._run_bound(second, device="cpu")[2]
    np.testing.assert_array_equal(again, backbone(np.ascontiguousarray(second))[2])


@pytest.fixture(scope="module")
def gpu_backbone(vgg16_path: Path) -> Backbone:
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA GPU visible to CuPy")
    except Exception:
        pytest.skip("no CUDA driver")
    backbone = Backbone("vgg16", providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    if not backbone.on_gpu:
        pytest.skip(f"ONNX Runtime has no CUDA provider here ({backbone.providers})")
    return backbone


@pytest.mark.gpu
def test_io_binding_hands_cupy_taps(gpu_backbone: Backbone, vgg16_path: Path) -> None:
    import cupy as cp

    pixels = _pixels()
    taps = gpu_backbone(pixels)
    want = Backbone("vgg16")(pixels)
    for got, ref in zip(taps, want):
        assert isinstance(got, cp.ndarray) and got.shape == ref.shape and got.flags.c_contiguous
        np.testing.assert_allclose(cp.asnumpy(got), ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


@pytest.mark.gpu
@pytest.mark.parametrize("softness", [None, 10.0])
@pytest.mark.parametrize("fp16", [False, True])
def test_gpu_encode_matches_cpu(gpu_backbone: Backbone, vgg16_path: Path, fp16: bool, softness: float | None) -> None:
    """The whole encoder on the GPU (CUDA provider, CuPy kernels; soft assignment by cuBLAS and CuPy's
    exp) against the CPU path."""
    settings = EncoderSettings(density=0.2, image_size=(32, 32), softness=softness)
    images = [np.random.default_rng(i).integers(0, 255, (40, 40), dtype=np.uint8) for i in range(3)]
    cpu_backbone = Backbone("vgg16")
    pixels = np.stack([settings.preprocess(im) for im in images])
    x = hypercolumn.gather(cpu_backbone(pixels), batch_points(pixels, settings))
    centres = x.reshape(-1, x.shape[2])[:: max(1, x.shape[0] * x.shape[1] // 8)][:8].copy()
    want = Encoder(settings, CPU, cpu_backbone, centres=centres).encode(images).codes
    gpu = Backbone("vgg16", providers=gpu_backbone.providers, fp16=fp16)
    got = Encoder(settings, backends.resolve("cuda"), gpu, centres=centres).encode(images).codes
    assert_codes_agree(got, want, tol=5e-2 if fp16 else 1e-3)


def assert_codes_agree(got: np.ndarray, want: np.ndarray, tol: float) -> None:
    """GPU codes ``(n, D)`` against the CPU's: every image within ``tol`` (max |Δ|), except at most
    one whose code moved because a point's label flipped on a near-tie (cuBLAS and the CPU BLAS
    round the cross term differently; fp16 activations more so), and that one still correlated
    > 0.99 with the CPU's. (``tol`` OR a global correlation, as before, let any error through.)"""
    assert got.shape == want.shape and np.isfinite(got).all()
    off = np.flatnonzero(np.abs(got - want).max(axis=1) > tol)
    assert len(off) <= 1, f"{len(off)} of {len(got)} images' codes differ by more than {tol}"
    for i in off:
        assert np.corrcoef(got[i], want[i])[0, 1] > 0.99, f"image {i}: code far from the CPU's"


def test_assert_codes_agree_catches_what_the_old_check_let_through() -> None:
    """The GPU test's comparison, on a planted error: two images with one value each off by 0.1
    (a broken kernel for those images; 0.1 on a unit-norm code). The old check (max |Δ| ≤ tol OR global corr > 0.99) passed it."""
    rng = np.random.default_rng(0)
    want = rng.standard_normal((3, 400)).astype(np.float32)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = want + rng.normal(0, 1e-5, want.shape).astype(np.float32)
    assert_codes_agree(got, want, 1e-3)
    got[0, 5] += 0.1
    got[2, 7] -= 0.1
    assert np.abs(got - want).max() > 1e-3 and np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99  # old: pass
    with pytest.raises(AssertionError, match="2 of 3 images"):
        assert_codes_agree(got, want, 1e-3)


def test_numba_kernels_reject_mismatched_shapes() -> None:
    from fastvlad.errors import ParameterError

    x = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(ParameterError, match="labels"):
        vlad.encode(x, np.zeros((2, 4), np.int32), np.zeros((2, 3), np.float32))
    with pytest.raises(ParameterError, match="centres"):
        codebook.assign(np.zeros((5, 3), np.float32), np.zeros((2, 4), np.float32))


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
@pytest.mark.filterwarnings("ignore::UserWarning:xgboost")
def test_estimator_on_the_cuda_backend_in_the_emulator(fake_cupy: types.ModuleType, vgg16_path: Path,
                                                        small_demo: tuple[list[np.ndarray], np.ndarray],
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``FastVLAD(device="cuda")`` end to end (fit, transform, predict, save, load) with CuPy replaced
    by the CUDA host emulator, which refuses implicit host/device transfers as CuPy does; ONNX
    Runtime and XGBoost run their CPU builds (the taps are moved to the "device" by the backend,
    XGBoost falls back to its CPU). The estimator's glue on the GPU backend, against device="cpu"."""
    from fastvlad import load
    from fastvlad.estimator import FastVLAD

    from .conftest import small_model_params

    monkeypatch.setattr(backends, "cuda_problem", lambda: None)
    images, labels = small_demo
    for pca, fp16, softness in ((None, False, None), (8, False, None), (None, True, None), (8, False, 10.0),
                                (None, False, 10.0)):
        cpu = FastVLAD(**small_model_params(pca=pca, fp16=fp16, softness=softness)).fit(images, labels)
        gpu = FastVLAD(**small_model_params(pca=pca, fp16=fp16, softness=softness, device="cuda")).fit(images, labels)
        assert Encoder.of(gpu).backend.device == "cuda"
        np.testing.assert_allclose(gpu.codebook_, cpu.codebook_, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(gpu.transform(images[:6]), cpu.transform(images[:6]), rtol=1e-4, atol=1e-5)
        assert list(gpu.predict(images[:6])) == list(cpu.predict(images[:6]))
        again = load(gpu.save(tmp_path / f"gpu-{pca}-{fp16}-{softness}.fvl"))
        np.testing.assert_array_equal(again.predict_proba(images[:6]), gpu.predict_proba(images[:6]))
        assert Encoder.of(gpu).cnn.fp16 == fp16 and again.fp16 == fp16
    assert {name for name, *_ in fake_cupy.LAUNCHES} >= {"gather_f32", "argmin_rows_f32", "residual_sums_f32",
                                                         "gather_f16"}
