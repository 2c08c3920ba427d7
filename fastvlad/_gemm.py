"""The encoder's GEMMs: one image per thread, each on a single-threaded BLAS.

Why not one big multithreaded GEMM per batch:

* OpenBLAS's idle threads spin for about 0.1 s after every call, taking the cores from the
  Numba kernels that run next (measured on 2 cores: gather and VLAD twice as slow);
* a multithreaded or taller GEMM may round a row differently, so an image's code would depend
  on the machine's core count and on the batch it came in. One single-threaded GEMM per image
  gives the same bits for the same image, whatever the batch, partition or machine size.

CuPy arrays go to ``cupy.matmul`` (batched cuBLAS) unchanged.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # finds NumPy's BLAS once (about 2 ms)


@functools.lru_cache(maxsize=8)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fastvlad-gemm")


def per_image(a: Any, b: Any, out: Any = None) -> Any:
    """``a @ b`` for a batch ``(n, m, c)`` and a matrix ``(c, p)`` or one per image ``(n, c, p)``:
    ``(n, m, p)`` float32 (into ``out``).

    On the CPU the images are spread over as many threads as Numba uses (``numba.get_num_threads``)."""
    if not isinstance(a, np.ndarray):
        return __import__("cupy").matmul(a, b, out=out)
    import numba

    if out is None:
        out = np.empty((a.shape[0], a.shape[1], b.shape[-1]), dtype=np.float32)
    def one(i: int) -> None:
        np.matmul(a[i], b[i] if b.ndim == 3 else b, out=out[i])

    threads = min(numba.get_num_threads(), len(a))
    with _blas_controller().limit(limits=1, user_api="blas"):
        if threads <= 1:
            for i in range(len(a)):
                one(i)
        else:
            list(_pool(threads).map(one, range(len(a))))
    return out
