"""A NumPy-backed stand-in for the part of CuPy that ``fastvlad._cuda`` and the CUDA tests use.

"Device" arrays are the ``ndarray`` subclass below; kernels launched through ``RawModule`` run in
the host emulator (``emu.h``). Launches check what a GPU would require of their arguments: device
arrays only (a NumPy array reaching a kernel is a bug in the launcher), C-contiguous except the
gather's output (a column slice by design), and int32/int64 scalars typed as the kernel expects.
"""

from __future__ import annotations

import ctypes
import types
from pathlib import Path
from typing import Any

import numpy as np

float16, float32, float64, int32, int64 = np.float16, np.float32, np.float64, np.int32, np.int64
#: (kernel name, grid, block, shared bytes) of every launch, so tests can check a kernel ran.
LAUNCHES: list[tuple[str, tuple[int, ...], tuple[int, ...], int]] = []
_LIB: Any = None


class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
    def get(self) -> np.ndarray:
        return np.array(self)


def load(lib: Path) -> types.ModuleType:
    """This module, with kernels running in the emulator library ``lib``."""
    global _LIB
    _LIB = ctypes.CDLL(str(lib))
    LAUNCHES.clear()
    import sys

    return sys.modules[__name__]


def asarray(a: Any, dtype: Any = None) -> ndarray:
    return np.asarray(a, dtype=dtype).view(ndarray)


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    return np.ascontiguousarray(a, dtype=dtype).view(ndarray)


def empty(shape: Any, dtype: Any = np.float32) -> ndarray:
    """Uninitialised device memory: NaN (or -7 for integers), so unwritten outputs show."""
    return np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -7, dtype=dtype).view(ndarray)


def zeros(shape: Any, dtype: Any = np.float32) -> ndarray:
    return np.zeros(shape, dtype=dtype).view(ndarray)


def asnumpy(a: Any) -> np.ndarray:
    return np.array(a)


class _Runtime:
    @staticmethod
    def getDeviceCount() -> int:  # noqa: N802 - CuPy's name
        return 1

    @staticmethod
    def getDevice() -> int:  # noqa: N802
        return 0

    @staticmethod
    def getDeviceProperties(device: int) -> dict[str, Any]:  # noqa: N802
        return {"name": b"host emulator"}


class _Event:
    """A CUDA event's host-clock stand-in (for ``benchmarks/gpu_kernels.py``)."""

    def record(self) -> None:
        import time

        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass


def _elapsed_ms(start: _Event, stop: _Event) -> float:
    return 1e3 * (stop.t - start.t)


cuda = types.SimpleNamespace(runtime=_Runtime, Event=_Event, get_elapsed_time=_elapsed_ms)


class RawModule:
    def __init__(self, code: str, options: tuple[str, ...] = ()) -> None:
        self.code, self.options = code, options

    def get_function(self, name: str) -> _Function:
        assert f'extern "C" __global__ void {name}(' in self.code, f"no kernel {name} in the module source"
        return _Function(name)


class _Function:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...], shared_mem: int = 0) -> None:
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        cargs: list[Any] = []
        for pos, a in enumerate(args):
            if isinstance(a, np.ndarray):
                assert type(a) is ndarray, f"{self.name} argument {pos}: a host array reached a kernel"
                strided_ok = self.name.startswith("gather") and pos == 8  # out: a column slice
                assert strided_ok or a.flags.c_contiguous, f"{self.name} argument {pos}: strides {a.strides}"
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.int32):
                cargs.append(ctypes.c_int(int(a)))
            elif isinstance(a, np.int64):
                cargs.append(ctypes.c_longlong(int(a)))
            else:
                raise TypeError(f"{self.name} argument {pos}: {type(a).__name__} is not a device array or a sized int")
        LAUNCHES.append((self.name, grid, block, shared_mem))
        if getattr(_LIB, f"emu_{self.name}")(*grid, *block, ctypes.c_int(shared_mem), *cargs):
            _LIB.emu_last_error.restype = ctypes.c_char_p
            raise RuntimeError(f"{self.name}: {_LIB.emu_last_error().decode()}")
