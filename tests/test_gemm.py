"""The encoder's per-image GEMMs: equal to one matmul per image, BLAS left as it was found."""

from __future__ import annotations

import threading

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from fastvlad.backends import _blas as _gemm


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_per_image_equals_one_matmul_per_image() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 37, 11), dtype=np.float32)[:, :, ::-1]  # strided rows
    b = rng.standard_normal((11, 7), dtype=np.float32)
    got = _gemm.per_image(a, b)
    assert got.shape == (5, 37, 7) and got.dtype == np.float32
    for i in range(5):
        np.testing.assert_array_equal(got[i], a[i] @ b)
    out = np.full((5, 37, 7), np.nan, np.float32)
    assert _gemm.per_image(a, b, out=out) is out and np.array_equal(out, got)


def test_per_image_with_a_matrix_per_image() -> None:
    """Soft assignment's sums ``W_iᵀ x_i``: each image its own right-hand matrix ``(n, c, p)``."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 9, 30), dtype=np.float32)
    b = rng.standard_normal((4, 30, 6), dtype=np.float32)
    got = _gemm.per_image(a, b)
    assert got.shape == (4, 9, 6)
    for i in range(4):
        np.testing.assert_array_equal(got[i], a[i] @ b[i])
    np.testing.assert_array_equal(_gemm.per_image(a[1:2], b[1:2])[0], got[1])  # no image depends on its batch


def test_blas_threads_restored_after_concurrent_callers() -> None:
    """Four threads in and out of the single-threaded section at once: the process's BLAS thread
    count is what it was before (per-call save/restore would race and could leave it at 1).
    That the codes do not depend on the calling thread is tested end to end in
    ``test_faults.test_one_model_predicts_from_four_threads``."""
    before = _blas_threads()
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 300, 64), dtype=np.float32)
    b = rng.standard_normal((64, 50), dtype=np.float32)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                _gemm.per_image(a, b)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _blas_threads() == before


def test_codes_do_not_depend_on_the_core_count() -> None:
    """A Dask worker may run with one thread and the client with all cores: the same image must
    give the same code bits (per-image single-threaded GEMMs, Numba kernels with one writer per value)."""
    import numba

    from .tiny_model import demo_images, fitted

    model = fitted()
    images = list(demo_images()[0][:6])
    both = model.transform(images)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(1):  # as distributed._worker_turn holds a one-thread worker
            one = model.transform(images)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, both)
