"""The CUDA kernels against the Numba CPU kernels (the oracle), on random inputs and edge cases.

Every test runs twice, through the ``cp`` fixture: on a GPU with CuPy (marked ``gpu``, skipped
without one), and in the host emulator of ``tests/cuda_emu`` (g++ builds ``kernels/*.cu``
against a shim header; CuPy is replaced by a NumPy stand-in that refuses implicit host/device
transfers as CuPy does), so the default run executes the kernels' code, not just compiles it, and
the GPU pipeline's glue around them (``test_pipeline_on_the_cuda_backend``). ``tests/cuda_emu/emu.h`` lists what the emulation cannot
catch (races, timing, coalescing). With the emulator, assignment uses the CPU's BLAS for the GEMM.

Tolerances, and why:
- gather: bit-identical. Both sides evaluate the same float32 expression in the same order and
  the CUDA kernel uses non-contracting intrinsics (no FMA); fp16 → fp32 widening is exact.
- assignment: the GEMMs differ (cuBLAS vs the CPU BLAS, both float32), so labels must agree
  except on rows whose two best distances are within 1e-4 of the distance scale
  (‖x‖² + max ‖c‖², the magnitude the float32 cross term is rounded at); distances rtol 1e-4.
  On a hand-made cross matrix (same input to both argmins) labels are identical, ties included.
- residual sums: float32 accumulation on the GPU vs float64 on the CPU: rtol 1e-4 plus an
  absolute 1e-5 of the largest sum (cells that cancel to ~0); empty clusters exactly 0.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from fastvlad import codebook, hypercolumn, vlad
from fastvlad.backends import cpu
from fastvlad.backends import cuda as launchers
from fastvlad.backends.cpu import CpuBackend
from fastvlad.backends.cuda import CudaBackend
from fastvlad.encoder import Encoder, EncoderSettings, Timings, fit_centres

GPU = CudaBackend()

BACKENDS = [pytest.param("gpu", marks=pytest.mark.gpu), "emulator"]


@pytest.fixture(params=BACKENDS)
def cp(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """CuPy on a GPU, or the emulator's stand-in installed as ``cupy`` for this test only."""
    if request.param == "gpu":
        cupy = pytest.importorskip("cupy")
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception:  # no driver: CuPy raises instead of returning 0
            count = 0
        if count == 0:
            pytest.skip("no CUDA GPU visible to CuPy")
        yield cupy
        return
    yield request.getfixturevalue("fake_cupy")


def _taps(rng: np.random.Generator, n: int, size: int, channels: list[int], dtype: type) -> list[np.ndarray]:
    """Taps as ONNX Runtime hands them over (NCHW) viewed channels-last: non-contiguous, like the pipeline."""
    taps = []
    for level, c in enumerate(channels):
        side = max(1, size >> level)
        taps.append(rng.standard_normal((n, c, side, side + 1)).astype(dtype).transpose(0, 2, 3, 1))
    return taps


@pytest.mark.parametrize("mode", hypercolumn.INTERPOLATION_MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(("n", "s_count", "channels"), [(2, 1, [3]), (3, 13, [5, 33, 64]), (2, 777, [64, 128, 7, 1])])
def test_gather_bit_identical(cp: ModuleType, mode: str, dtype: type, n: int, s_count: int,
                              channels: list[int]) -> None:
    rng = np.random.default_rng(0)
    taps = _taps(rng, n, 24, channels, dtype)
    h, w = taps[0].shape[1:3]
    points = np.stack([hypercolumn.sample_points(rng, s_count, h, w) for _ in range(n)])
    want = hypercolumn.gather(taps, points, mode)
    got = hypercolumn.gather([cp.asarray(t) for t in taps], cp.asarray(points), mode, backend=GPU)
    assert got.dtype == cp.float32 and got.shape == want.shape
    np.testing.assert_array_equal(cp.asnumpy(got), want)


def test_gather_host_points_and_strided_out(cp: ModuleType) -> None:
    rng = np.random.default_rng(1)
    (tap,) = _taps(rng, 2, 9, [17], np.float32)
    ty, tx = hypercolumn.tap_tables([tap], "half_pixel")[0]
    points = np.stack([hypercolumn.sample_points(rng, 10, 9, 10) for _ in range(2)])
    want = hypercolumn.gather([tap], points)
    full = cp.zeros((2, 10, 40), cp.float32)
    launchers.gather_tap(tap, points, ty, tx, full[:, :, 20:37])  # NumPy inputs, column slice out
    np.testing.assert_array_equal(cp.asnumpy(full[:, :, 20:37]), want)
    assert not cp.asnumpy(full[:, :, :20]).any() and not cp.asnumpy(full[:, :, 37:]).any()
    host_out = np.empty_like(want)  # a NumPy out gets a copy back
    launchers.gather_tap(cp.asarray(tap), cp.asarray(points), ty, tx, host_out)
    np.testing.assert_array_equal(host_out, want)


def test_gather_into_an_out_whose_channels_are_not_adjacent(cp: ModuleType) -> None:
    """An ``out`` whose channels are strided (every other column) must get each channel in its own
    column, the others untouched: the kernel writes dense rows only into a dense channel axis."""
    rng = np.random.default_rng(1)
    taps = [rng.standard_normal((2, 9, 8, 5)).astype(np.float32)]
    points = np.stack([hypercolumn.sample_points(rng, 30, 9, 8) for _ in range(2)])
    full = cp.zeros((2, 30, 10), cp.float32)
    hypercolumn.gather([cp.asarray(t) for t in taps], cp.asarray(points), backend=GPU, out=full[:, :, ::2])
    np.testing.assert_array_equal(cp.asnumpy(full[:, :, ::2]), hypercolumn.gather(taps, points))
    assert not cp.asnumpy(full[:, :, 1::2]).any()


def assert_only_near_ties_differ(x: np.ndarray, centres: np.ndarray, got: np.ndarray, want: np.ndarray) -> None:
    """Labels ``got`` and ``want`` of the points ``x`` may differ only on near-ties: rows where both
    labels' exact (float64) squared distances are within 1e-4 of the distance scale (‖x‖² + max ‖c‖²,
    what the float32 cross term is rounded at) of the nearest centre's."""
    x64, c64 = x.reshape(-1, x.shape[-1]).astype(np.float64), centres.astype(np.float64)
    x_sq, c_sq = (x64 * x64).sum(1), (c64 * c64).sum(1)
    rows = np.flatnonzero(got != want)
    exact = x_sq[rows, None] - 2 * x64[rows] @ c64.T + c_sq[None, :]
    best, tol = exact.min(axis=1), 1e-4 * (x_sq[rows] + c_sq.max())
    far = (exact[np.arange(len(rows)), got[rows]] - best > tol) | (exact[np.arange(len(rows)), want[rows]] - best > tol)
    assert not far.any(), (f"{far.sum()} of {len(got)} labels differ off a near-tie, e.g. row {rows[far][0]}: "
                           f"{got[rows[far][0]]} vs {want[rows[far][0]]}")


def _check_assign(cp: ModuleType, x: np.ndarray, centres: np.ndarray) -> None:
    labels, dist = codebook.assign(x, centres, backend=GPU)
    labels, dist = cp.asnumpy(labels), cp.asnumpy(dist)
    want_labels, want_dist = codebook.assign(x, centres)
    x64, c64 = x.astype(np.float64), centres.astype(np.float64)
    x_sq, c_sq = (x64 * x64).sum(1), (c64 * c64).sum(1)
    exact = x_sq[:, None] - 2 * x64 @ c64.T + c_sq[None, :]
    two = np.sort(exact, axis=1)[:, :2]  # k ≥ 2 in every case
    scale = x_sq + c_sq.max()
    clear = (two[:, 1] - two[:, 0]) > 1e-4 * scale
    assert clear.mean() > 0.9  # the test means something only if most rows are unambiguous
    np.testing.assert_array_equal(labels[clear], want_labels[clear])
    np.testing.assert_allclose(dist, want_dist, rtol=1e-4, atol=1e-4 * scale.max())


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(("m", "dim", "k"), [(1, 3, 2), (1000, 1472, 100), (4099, 37, 2), (3001, 257, 256)])
def test_assign_matches_cpu(cp: ModuleType, dtype: type, m: int, dim: int, k: int) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((m, dim)).astype(dtype)
    centres = rng.standard_normal((k, dim)).astype(np.float32)
    _check_assign(cp, x, centres)


def test_assign_non_contiguous(cp: ModuleType) -> None:
    rng = np.random.default_rng(3)
    x = np.asfortranarray(rng.standard_normal((500, 64), dtype=np.float32))[:, ::2]
    centres = rng.standard_normal((10, 32)).astype(np.float32)
    _check_assign(cp, x, centres)
    labels, _ = codebook.assign(cp.asarray(x), cp.asarray(centres.T).T, backend=GPU)  # device arrays, F-ordered centres
    assert labels.dtype == cp.int32 and labels.shape == (500,)


@pytest.mark.parametrize("k", [2, 37, 256])
def test_argmin_kernel_ties_identical(cp: ModuleType, k: int) -> None:
    """Same cross matrix into both argmins: identical labels (lowest index on ties, NaN rows → 0)."""
    rng = np.random.default_rng(4)
    m, dim = 1003, 19
    x = rng.standard_normal((m, dim)).astype(np.float32)
    cross = rng.integers(0, 3, (m, k)).astype(np.float32)  # many exact ties
    cross[5] = np.nan
    c_sq = 2 * rng.integers(0, 2, k).astype(np.float32)  # even, like 2·cross: ties for every k
    want_labels, want_dist = np.empty(m, np.int32), np.empty(m, np.float32)
    cpu._argmin_rows_kernel(cross, np.einsum("ij,ij->i", x, x), c_sq, want_labels, want_dist)
    labels, dist = cp.empty(m, cp.int32), cp.empty(m, cp.float32)
    kernel = launchers._function("assign", "argmin_rows_f32")
    kernel(((m + 7) // 8,), (256,), (cp.asarray(x), cp.asarray(cross), cp.asarray(c_sq), labels, dist,
                                    np.int32(m), np.int32(dim), np.int32(k)))
    np.testing.assert_array_equal(cp.asnumpy(labels), want_labels)
    # x_sq is summed in another order on the GPU; a NaN row's distance is +inf on both.
    np.testing.assert_allclose(cp.asnumpy(dist), want_dist, rtol=1e-6, atol=1e-5)


def _check_residuals(cp: ModuleType, x: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> None:
    want = vlad.residual_sums(x, labels, centres)
    got = vlad.residual_sums(cp.asarray(x), cp.asarray(labels), cp.asarray(centres), backend=GPU)
    assert got.dtype == cp.float32 and got.shape == want.shape
    got = cp.asnumpy(got)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(np.abs(want).max(), 1.0))
    empty = np.ones(want.shape[:2], bool)
    empty[np.arange(len(labels))[:, None], labels] = False
    assert (got[empty] == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(
    ("n", "s_count", "dim", "k"),
    [(2, 1, 5, 2), (3, 1000, 1472, 100), (2, 13, 37, 256), (2, 501, 65, 193), (1, 300, 33, 500)],
)
def test_residual_sums_match_cpu(cp: ModuleType, dtype: type, n: int, s_count: int, dim: int, k: int) -> None:
    """Covers k ≤ 192 (64-column tiles), 192 < k ≤ 384 (32-column tiles), k > 384 (centre chunks)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, s_count, dim)).astype(dtype)
    centres = rng.standard_normal((k, dim)).astype(np.float32)
    used = rng.choice(k, size=max(1, k // 2), replace=False)  # half the clusters stay empty
    labels = used[rng.integers(0, len(used), (n, s_count))].astype(np.int32)
    _check_residuals(cp, x, labels, centres)


def test_residual_sums_non_contiguous_and_encode(cp: ModuleType) -> None:
    rng = np.random.default_rng(6)
    big = rng.standard_normal((3, 400, 90)).astype(np.float32)
    x = big[:, ::2, 3:80]  # strided points and columns
    centres = rng.standard_normal((7, 77)).astype(np.float32)
    labels = rng.integers(0, 7, (3, 200)).astype(np.int64)  # int64 labels are converted
    _check_residuals(cp, x, labels, centres)
    want = vlad.encode(x, labels.astype(np.int32), centres)
    got = cp.asnumpy(vlad.encode(cp.asarray(x), cp.asarray(labels), cp.asarray(centres), backend=GPU))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_stages_end_to_end(cp: ModuleType) -> None:
    """gather → assign → encode on the GPU equals the CPU chain (labels may flip only on near-ties)."""
    rng = np.random.default_rng(7)
    taps = _taps(rng, 2, 32, [8, 16, 12], np.float32)
    points = np.stack([hypercolumn.sample_points(rng, 300, 32, 33) for _ in range(2)])
    feats = hypercolumn.gather(taps, points)
    centres = feats.reshape(-1, feats.shape[2])[rng.choice(600, 5, replace=False)].copy()
    feats_gpu = hypercolumn.gather([cp.asarray(t) for t in taps], cp.asarray(points), backend=GPU)
    np.testing.assert_array_equal(cp.asnumpy(feats_gpu), feats)
    labels_gpu, _ = codebook.assign(feats_gpu.reshape(-1, feats.shape[2]), cp.asarray(centres), backend=GPU)
    labels, _ = codebook.assign(feats.reshape(-1, feats.shape[2]), centres)
    assert_only_near_ties_differ(feats, centres, cp.asnumpy(labels_gpu), labels)
    codes_gpu = cp.asnumpy(vlad.encode(feats_gpu, labels_gpu.reshape(2, -1), cp.asarray(centres), backend=GPU))
    codes = vlad.encode(feats, cp.asnumpy(labels_gpu).reshape(2, -1), centres)
    np.testing.assert_allclose(codes_gpu, codes, rtol=1e-4, atol=1e-6)
    # The pipeline's full-width path: one fused kernel on the CPU, gather then encode on the GPU.
    fused_gpu = vlad.encode_from_taps([cp.asarray(t) for t in taps], cp.asarray(points), labels_gpu.reshape(2, -1),
                                      cp.asarray(centres), backend=GPU)
    fused = vlad.encode_from_taps(taps, points, cp.asnumpy(labels_gpu).reshape(2, -1), centres)
    np.testing.assert_allclose(cp.asnumpy(fused_gpu), fused, rtol=1e-4, atol=1e-6)
    # ... with the first tap gathered already (the encoder passes block1/2 so)
    fused_gpu = vlad.encode_from_taps([cp.asarray(t) for t in taps], cp.asarray(points), labels_gpu.reshape(2, -1),
                                      cp.asarray(centres), backend=GPU, gathered=feats_gpu[:, :, :8])
    np.testing.assert_allclose(cp.asnumpy(fused_gpu), fused, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_nearest_from_taps_matches_cpu(cp: ModuleType, dtype: type) -> None:
    """Assignment from the taps (coarse taps' cross term on the tap grid) equals the CPU's."""
    rng = np.random.default_rng(8)
    taps = _taps(rng, 2, 40, [4, 8, 64, 96], dtype)
    h, w = taps[0].shape[1:3]
    points = np.stack([hypercolumn.sample_points(rng, 500, h, w) for _ in range(2)])
    feats = hypercolumn.gather(taps, points)
    centres = feats.reshape(-1, feats.shape[2])[rng.choice(1000, 17, replace=False)] + 0.05
    want = codebook.nearest_from_taps(taps, points, centres)
    taps_d, points_d = [cp.asarray(t) for t in taps], cp.asarray(points)
    got = cp.asnumpy(codebook.nearest_from_taps(taps_d, points_d, cp.asarray(centres), backend=GPU))
    assert got.dtype == np.int32 and got.shape == want.shape
    assert_only_near_ties_differ(feats, centres, got, want)  # the GEMMs round differently: a near-tie may flip


def test_gpu_benchmark_script_runs(cp: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks/gpu_kernels.py`` (its kernel table, small sizes) runs through: a session that is
    lent a GPU must not lose its minutes to a stale call in the script."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_kernels.py"
    spec = importlib.util.spec_from_file_location("gpu_kernels_under_test", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # imports ``cupy``: the fixture's
    monkeypatch.setattr(sys, "argv", ["gpu_kernels.py", "--n", "2", "--points", "60", "--k", "4", "--repeats", "1"])
    script.main()
    out = capsys.readouterr().out
    for kernel in ("gather", "assign_from_taps", "vlad_from_taps", "residual_sums_fp16"):
        assert f"\n{kernel} " in out


def _toy_cnn(channels: tuple[int, ...] = (6, 10, 12)):  # type: ignore[no-untyped-def]
    """A stand-in for the CNN (no ONNX Runtime, no weights): taps ``(n, h/2^l, w/2^l, C_l)``
    channels-last, average pools of the pixels mixed by fixed random weights, rectified."""
    mix = [np.random.default_rng([9, c]).standard_normal((3, c)).astype(np.float32) for c in channels]

    def taps(pixels: np.ndarray) -> list[np.ndarray]:
        n, _, h, w = pixels.shape
        x = pixels.transpose(0, 2, 3, 1)
        out = []
        for level, m in enumerate(mix):
            f = 2**level
            pooled = x[:, : h // f * f, : w // f * f].reshape(n, h // f, f, w // f, f, 3).mean(axis=(2, 4))
            out.append(np.maximum(pooled @ m, 0).astype(np.float32))
        return out

    return taps


@pytest.mark.parametrize(("pca", "dtype", "softness"), [(None, np.float32, None), (4, np.float32, None),
                                                     (None, np.float16, None), (4, np.float16, None),
                                                     (4, np.float32, 10.0), (None, np.float16, 10.0)])
def test_pipeline_on_the_cuda_backend(cp: ModuleType, pca: int | None, dtype: type, softness: float | None,
                                      request: pytest.FixtureRequest) -> None:
    """``Encoder.codebook_sample`` and ``Encoder.encode`` with the CUDA backend, taps arriving on
    the device as IO binding hands them over, against the CPU backend: the GPU pipeline's glue, not
    only its kernels (full width and PCA, float32 and float16 taps, hard and soft assignment — the
    soft weights by array expressions there, by a Numba kernel on the CPU). In the emulator the stand-in
    refuses implicit host/device transfers as CuPy does, so a NumPy call on a device array fails."""
    settings = EncoderSettings(density=0.3, image_size=(32, 32), pca=pca, softness=softness)  # 150 points per image
    rng = np.random.default_rng(10)
    images = [rng.integers(0, 255, (40, 40), dtype=np.uint8) for _ in range(5)]
    cnn = _toy_cnn()

    def host(pixels: np.ndarray) -> list[np.ndarray]:
        return [t.astype(dtype) for t in cnn(pixels)]

    def device(pixels: np.ndarray) -> list:  # type: ignore[type-arg]
        return [cp.asarray(t) for t in host(pixels)]

    cpu = CpuBackend(batch_size=2)
    gpu = CudaBackend(batch_size=2)
    sample = Encoder(settings, cpu, host).codebook_sample(images, n_images=4)
    gpu_sample = Encoder(settings, gpu, device).codebook_sample(images, n_images=4)
    assert isinstance(gpu_sample, np.ndarray)
    np.testing.assert_array_equal(gpu_sample, sample)  # the gather is bit-identical
    proj, centres = fit_centres(sample, 5, settings)
    want = Encoder(settings, cpu, host, proj, centres).encode(images)
    got = Encoder(settings, gpu, device, proj, centres).encode(images)
    assert isinstance(got.codes, np.ndarray) and got.codes.shape == want.codes.shape == (5, 5 * (pca or 28))
    np.testing.assert_array_equal(got.indices, want.indices)
    close = np.isclose(got.codes, want.codes, rtol=1e-4, atol=1e-5).all(axis=1)
    # The emulator's GEMM is the CPU's BLAS: every image agrees. On a GPU (cuBLAS) a near-tie label
    # may flip, changing one image's code.
    assert close.sum() >= len(close) - 1 if request.node.callspec.params["cp"] == "gpu" else close.all()


def test_gpu_stage_times_include_the_device_work(fake_cupy: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CUDA backend every stage's clock is read after the device has finished (kernels
    return at launch): with a device that takes 20 ms to drain, each stage of each batch is billed
    at least that; on the CPU backend nothing waits."""
    import time

    syncs: list[float] = []

    def slow_drain() -> None:
        syncs.append(time.perf_counter())
        time.sleep(0.02)

    monkeypatch.setattr(fake_cupy.cuda.runtime, "deviceSynchronize", slow_drain)
    settings = EncoderSettings(density=0.3, image_size=(32, 32))
    images = [np.random.default_rng(i).integers(0, 255, (40, 40), dtype=np.uint8) for i in range(4)]
    cnn = _toy_cnn()
    centres = np.random.default_rng(0).standard_normal((5, 28)).astype(np.float32)
    gpu = CudaBackend(batch_size=2)
    timings = Timings()
    Encoder(settings, gpu, lambda p: [fake_cupy.asarray(t) for t in cnn(p)], centres=centres).encode(images, timings)
    stages = [s for s in ("cnn", "points", "hypercolumns", "assign", "vlad") if s in timings.seconds]
    assert {"cnn", "assign", "vlad"} <= set(stages)
    for stage in stages:
        assert timings.seconds[stage] >= 2 * 0.02, (stage, dict(timings.seconds))  # two batches
    before = len(syncs)
    Encoder(settings, CpuBackend(batch_size=2), cnn, centres=centres).encode(images)
    assert len(syncs) == before


def test_gpu_marked_tests_pass_against_the_emulator(emulator_lib: Path) -> None:
    """The ``-m gpu`` variants of this file's tests, which run nowhere without a GPU, in a fresh
    process with the emulator importable as ``cupy`` (``tests/cuda_emu/as_cupy``): a session that is
    lent a GPU must not lose its minutes to a broken test."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "tests" / "cuda_emu" / "as_cupy"), str(repo)]),
           "FASTVLAD_EMULATOR_LIB": str(emulator_lib)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-2000:]
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in summary and "skipped" not in summary and "error" not in summary, summary
