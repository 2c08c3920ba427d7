"""The compute backend: one object, chosen once from ``device="auto"|"cpu"|"cuda"``.

A backend is where the post-CNN stages run and how: its array module (``xp``: NumPy or CuPy),
its kernels (Numba in ``cpu.py``, CuPy launchers of ``kernels/*.cu`` in ``cuda.py``), the ONNX
Runtime providers and the XGBoost device. Stage modules (``hypercolumn``, ``projection``,
``codebook``, ``vlad``) validate their inputs and call the backend's operations, the ``Backend``
protocol (``base.py``); they never ask which device they run on. A new backend is one module that
implements it, and a line in ``resolve``.
"""

from __future__ import annotations

import functools
import logging

from .. import config
from ..errors import DeviceUnavailableError, ParameterError
from ._blas import single_threaded_blas
from .base import GPU_INSTALL, AxisTable, Backend, Tables, normalise

__all__ = ["DEVICES", "AxisTable", "Backend", "Tables", "cuda_problem", "normalise", "resolve", "single_threaded_blas"]

log = logging.getLogger("fastvlad")

DEVICES = ("auto", "cpu", "cuda")


def resolve(device: str = "auto", batch_size: int | None = None) -> Backend:
    """The backend for ``device``; ``auto`` falls back to the CPU with a one-line notice.
    ``batch_size`` overrides the backend's images per CNN call."""
    if device not in DEVICES:
        raise ParameterError(f"device={device!r} is unknown; use one of {DEVICES}")
    backend = _pick(device)
    return backend.with_batch_size(int(batch_size)) if batch_size else backend


def _pick(device: str) -> Backend:
    from .cpu import CPU

    # The config tunables are read here, at each call, so that setting one takes effect.
    if device == "cpu":
        return CPU.with_batch_size(config.CPU_BATCH_SIZE)
    problem = cuda_problem()
    if problem is None:
        from .cuda import CudaBackend

        return CudaBackend(batch_size=config.GPU_BATCH_SIZE,
                           decode_threads=min(config.GPU_DECODE_THREADS, config.usable_cores()))
    if device == "cuda":
        raise DeviceUnavailableError(f"device='cuda' is not available: {problem}. Install with {GPU_INSTALL}")
    _notice_cpu_fallback(problem)
    return CPU.with_batch_size(config.CPU_BATCH_SIZE)


@functools.lru_cache(maxsize=1)
def cuda_problem() -> str | None:
    """Why the CUDA backend cannot run here, or None when it can."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA GPU is visible"
    except Exception as exc:  # CUDA driver errors from CuPy
        return f"CuPy cannot use a GPU ({type(exc).__name__}: {exc})"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "ONNX Runtime has no CUDAExecutionProvider (the CPU-only 'onnxruntime' package is installed)"
    import xgboost

    if not xgboost.build_info().get("USE_CUDA", False):
        return "XGBoost was built without CUDA (the 'xgboost-cpu' package is installed)"
    return None


@functools.lru_cache(maxsize=1)
def _notice_cpu_fallback(problem: str) -> None:
    """Say once per process, in plain words, that ``auto`` chose the CPU, and why."""
    found = problem not in ("CuPy is not installed", "no CUDA GPU is visible")
    log.info("fastvlad: %s: running on the CPU (%s)", "the GPU cannot be used" if found else "no GPU found",
             problem)
