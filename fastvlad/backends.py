"""The compute backend, chosen once from ``device="auto"|"cpu"|"cuda"``.

Everything device-specific lives here: which kernels run (Numba or CUDA), where arrays live
(NumPy or CuPy), which ONNX Runtime providers and which XGBoost device to use. Stage
functions take ``impl=backend.impl`` and never ask which device they are on.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from . import config
from .errors import DeviceUnavailableError, ParameterError

log = logging.getLogger("fastvlad")

DEVICES = ("auto", "cpu", "cuda")
GPU_INSTALL = ("pip install 'fastvlad[gpu]' (CuPy for CUDA 12 and onnxruntime-gpu; "
               "uninstall the CPU 'onnxruntime' first, see README 'GPU install')")


@dataclass(frozen=True)
class Backend:
    """Where and how the post-CNN stages run."""

    device: str  # "cpu" or "cuda"
    impl: str  # kernel family for the stage functions: "numba" or "cuda"
    providers: tuple[str, ...]  # ONNX Runtime execution providers
    batch_size: int
    decode_threads: int = 1  # threads decoding images ahead of the CNN (``images.iter_batches``)

    @property
    def xp(self) -> ModuleType:
        """The array module of this backend."""
        return __import__("cupy") if self.device == "cuda" else np

    def asarray(self, a):  # type: ignore[no-untyped-def]
        """Move a host array to this backend's memory (no copy on the CPU)."""
        return self.xp.asarray(a)

    def synchronize(self) -> None:
        """Wait for the work queued on the device. CUDA kernels return at launch, so a clock read
        without this times the launch and bills the work to whatever synchronises next."""
        if self.device == "cuda":
            __import__("cupy").cuda.runtime.deviceSynchronize()

    @staticmethod
    def to_numpy(a) -> np.ndarray:  # type: ignore[no-untyped-def]
        """Any array (NumPy or CuPy) → NumPy."""
        return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


CPU = Backend("cpu", "numba", ("CPUExecutionProvider",), config.CPU_BATCH_SIZE)


@functools.lru_cache(maxsize=1)
def _cuda_problem() -> str | None:
    """Why the CUDA backend cannot run here, or None when it can."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA GPU is visible"
    except Exception as exc:  # ImportError, or CUDA driver errors from CuPy
        return f"CuPy is not usable ({type(exc).__name__}: {exc})"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "ONNX Runtime has no CUDAExecutionProvider (the CPU-only 'onnxruntime' package is installed)"
    import xgboost

    if not xgboost.build_info().get("USE_CUDA", False):
        return "XGBoost was built without CUDA (the 'xgboost-cpu' package is installed)"
    return None


def resolve(device: str = "auto") -> Backend:
    """The backend for ``device``; ``auto`` falls back to the CPU with a one-line notice."""
    if device not in DEVICES:
        raise ParameterError(f"device={device!r} is unknown; use one of {DEVICES}")
    if device == "cpu":
        return CPU
    problem = _cuda_problem()
    if problem is None:
        return Backend("cuda", "cuda", ("CUDAExecutionProvider", "CPUExecutionProvider"), config.GPU_BATCH_SIZE,
                       min(config.GPU_DECODE_THREADS, config.usable_cores()))
    if device == "cuda":
        raise DeviceUnavailableError(f"device='cuda' is not available: {problem}. Install with {GPU_INSTALL}")
    _notice_cpu_fallback(problem)
    return CPU


@functools.lru_cache(maxsize=1)
def _notice_cpu_fallback(problem: str) -> None:
    """Say once per process why ``auto`` chose the CPU."""
    log.info("fastvlad: running on the CPU (%s)", problem)
