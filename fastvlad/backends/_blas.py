"""The CPU backend's per-image GEMMs: one image per thread, each on a single-threaded BLAS.

Why not one big multithreaded GEMM per batch:

* OpenBLAS's idle threads spin for about 0.1 s after every call, taking the cores from the
  Numba kernels that run next (measured on 2 cores: gather and VLAD twice as slow);
* a multithreaded or taller GEMM may round a row differently, so an image's code would depend
  on the machine's core count and on the batch it came in. One single-threaded GEMM per image
  gives the same bits for the same image, whatever the batch, partition, calling thread or
  machine size. (OpenBLAS is held to one thread through its own API; another BLAS through
  threadpoolctl, which only one Python thread can do.)
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np


@functools.lru_cache(maxsize=1)
def _openblas_thread_setters() -> tuple[tuple[Any, Any], ...]:
    """(get, set) of the thread count of every OpenBLAS loaded (NumPy's, SciPy's), through ctypes.

    Called directly, not through threadpoolctl: since 3.6 it lets only one Python thread (the
    first to use it, while alive) change OpenBLAS's count, and the encoder runs in any thread."""
    import ctypes

    from threadpoolctl import threadpool_info

    found = []
    for lib in threadpool_info():
        if lib.get("internal_api") != "openblas":
            continue
        dll = ctypes.CDLL(lib["filepath"])
        names = [f"{pre}openblas_{{}}_num_threads{suf}" for pre in ("", "scipy_") for suf in ("", "64_")]
        get = next((getattr(dll, n.format("get")) for n in names if hasattr(dll, n.format("get"))), None)
        set_ = next((getattr(dll, n.format("set")) for n in names if hasattr(dll, n.format("set"))), None)
        if get is not None and set_ is not None:
            get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
            found.append((get, set_))
    return tuple(found)


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # finds the BLAS libraries once (a few ms), not per call


_LOCK = threading.Lock()
_users = 0  # threads inside ``single_threaded_blas`` now
_saved: list[int] = []


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """OpenBLAS on one thread while any caller is inside: the first in sets it, the last out
    restores it (a per-call save and restore would race, the count being one per process).
    Another BLAS (MKL, BLIS) gets threadpoolctl's limit, which only one Python thread can set."""
    global _users, _saved
    libs = _openblas_thread_setters()
    if not libs:
        with _blas_controller().limit(limits=1, user_api="blas"):
            yield
        return
    with _LOCK:
        if _users == 0:
            _saved = [get() for get, _ in libs]
            for _, set_ in libs:
                set_(1)
        _users += 1
    try:
        yield
    finally:
        with _LOCK:
            _users -= 1
            if _users == 0:
                for (_, set_), n in zip(libs, _saved):
                    set_(n)


@functools.lru_cache(maxsize=8)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fastvlad-gemm")


def per_image(a: Any, b: Any, out: Any = None) -> Any:
    """``a @ b`` for a batch ``(n, m, c)`` and a matrix ``(c, p)`` shared by the images, or one per image
    ``(n, c, p)``: ``(n, m, p)`` float32 (into ``out``).

    On the CPU the images are spread over as many threads as Numba uses (``numba.get_num_threads``)."""
    import numba

    if out is None:
        out = np.empty((a.shape[0], a.shape[1], b.shape[-1]), dtype=np.float32)

    def one(i: int) -> None:
        np.matmul(a[i], b if b.ndim == 2 else b[i], out=out[i])

    threads = min(numba.get_num_threads(), len(a))
    with single_threaded_blas():
        if threads <= 1:
            for i in range(len(a)):
                one(i)
        else:
            list(_pool(threads).map(one, range(len(a))))
    return out
