"""A NumPy-backed stand-in for the part of CuPy that fastvlad's GPU path and the CUDA tests use.

"Device" arrays are the ``ndarray`` wrapper below (not a NumPy subclass), and they keep CuPy's
rule against implicit transfers, so host/device mix-ups in fastvlad fail here as they would on a
GPU: ``np.asarray(device)`` and NumPy functions writing a device array into a host one raise
TypeError; ufuncs, methods and ``cupy.*`` functions refuse host arrays (TypeError), and a host
array assigned into a device one raises ValueError. Everything else runs in NumPy on the wrapped
host memory. Kernels launched through ``RawModule`` run in the host emulator (``emu.h``); launches
check what a GPU would require of their arguments: device arrays only (a NumPy array reaching a
kernel is a bug in the launcher), C-contiguous except the gather's output (a column slice by
design), as many arguments as the kernel declares, each of the declared type (``signatures.json``
from build.py: a ``float*`` takes float32, ``unsigned short*`` float16, ``int*`` int32, ``int``
a numpy.int32 and ``long long`` a numpy.int64; CuPy passes a scalar by its NumPy size, so an int64
given for an ``int`` would shift every later argument on a GPU, while the emulator's C call would
hide it). ``RawModule`` refuses source text other than what the emulator was built from (the
tree's ``kernels/``), so a test never runs one kernel while fastvlad hands CuPy another.
"""

from __future__ import annotations

import ctypes
import types
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

float16, float32, float64, int32, int64 = np.float16, np.float32, np.float64, np.int32, np.int64
#: (kernel name, grid, block, shared bytes) of every launch, so tests can check a kernel ran.
LAUNCHES: list[tuple[str, tuple[int, ...], tuple[int, ...], int]] = []
_LIB: Any = None
_SIGNATURES: dict[str, list[str]] = {}
_SOURCES: dict[str, str] = {}
#: Device arrays each pointer parameter type takes.
_POINTER_DTYPES = {"float*": (np.float32,), "unsigned short*": (np.float16, np.uint16), "int*": (np.int32,)}
_SCALAR_TYPES = {"int": np.int32, "long long": np.int64}
_IMPLICIT = "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly."


def _device(value: Any, where: str) -> Any:
    """``value`` with device arrays unwrapped (in lists, tuples and dicts too); a host array in it
    is refused like CuPy refuses it. Python and NumPy scalars pass."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray):
        raise TypeError(f"{where}: Unsupported type {type(value)} (a host array given to a device operation)")
    if isinstance(value, (list, tuple)):
        return type(value)(_device(v, where) for v in value)
    if isinstance(value, dict):
        return {k: _device(v, where) for k, v in value.items()}
    return value


def _wrap(value: Any) -> Any:
    """NumPy results as device arrays (scalars from reductions as 0-d arrays, as CuPy returns them)."""
    if isinstance(value, (np.ndarray, np.generic)):
        return ndarray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class ndarray(NDArrayOperatorsMixin):  # noqa: N801 - CuPy's name
    """A device array: NumPy memory behind CuPy's interface and its no-implicit-transfer rule."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    T = property(lambda self: ndarray(self._a.T))

    def get(self) -> np.ndarray:
        return self._a.copy()

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(_IMPLICIT)

    def __len__(self) -> int:
        return len(self._a)

    def __repr__(self) -> str:
        return f"device{self._a!r}"

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def __getitem__(self, key: Any) -> Any:
        return _wrap(self._a[key._a if isinstance(key, ndarray) else key])

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, np.ndarray) and value.shape != ():
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        self._a[key._a if isinstance(key, ndarray) else key] = value._a if isinstance(value, ndarray) else value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("ctypes", "data", "base"):
            # Not NumPy's array protocols (__array_interface__, ...) nor host pointers: through
            # them NumPy would read the memory without asking, which a GPU array does not allow.
            raise AttributeError(name)
        attr = getattr(self._a, name)  # methods: reshape, astype, sum, copy, view, ...
        if not callable(attr):
            return _wrap(attr)
        return lambda *args, **kwargs: _wrap(attr(*_device(args, name), **_device(kwargs, name)))

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        where = f"{ufunc.__name__}.{method}"
        out = kwargs.get("out")
        result = getattr(ufunc, method)(*_device(inputs, where), **_device(kwargs, where))
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        if "out" in kwargs and isinstance(kwargs["out"], np.ndarray):
            raise TypeError(_IMPLICIT)  # a device result into host memory
        return _wrap(func(*_device(args, func.__name__), **_device(kwargs, func.__name__)))


def __getattr__(name: str) -> Any:
    """``cupy.<name>`` for NumPy's functions (sqrt, where, matmul, ...): device arrays only."""
    func = getattr(np, name)
    if not callable(func) or isinstance(func, type):
        raise AttributeError(name)
    return lambda *args, **kwargs: _wrap(func(*_device(args, name), **_device(kwargs, name)))


def load(lib: Path) -> types.ModuleType:
    """This module, with kernels running in the emulator library ``lib``."""
    import json

    global _LIB
    _LIB = ctypes.CDLL(str(lib))
    _SIGNATURES.clear()
    _SIGNATURES.update(json.loads((lib.parent / "signatures.json").read_text()))
    _SOURCES.clear()
    _SOURCES.update(json.loads((lib.parent / "sources.json").read_text()))
    LAUNCHES.clear()
    import sys

    return sys.modules[__name__]


def asarray(a: Any, dtype: Any = None) -> ndarray:
    """A device array: ``a`` itself (or a cast) when on the device, else a copy of the host data."""
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else ndarray(a._a.astype(dtype))
    return ndarray(np.array(a, dtype=dtype))


def ascontiguousarray(a: ndarray, dtype: Any = None) -> ndarray:
    return ndarray(np.ascontiguousarray(_device(a, "ascontiguousarray"), dtype=dtype))


def empty(shape: Any, dtype: Any = np.float32) -> ndarray:
    """Uninitialised device memory: NaN (or -7 for integers), so unwritten outputs show."""
    return ndarray(np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -7, dtype=dtype))


def zeros(shape: Any, dtype: Any = np.float32) -> ndarray:
    return ndarray(np.zeros(shape, dtype=dtype))


def asnumpy(a: Any) -> np.ndarray:
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


class _MemoryPool:
    def free_all_blocks(self) -> None:
        pass


_POOL = _MemoryPool()


def get_default_memory_pool() -> _MemoryPool:
    return _POOL


class _Runtime:
    @staticmethod
    def getDeviceCount() -> int:  # noqa: N802 - CuPy's name
        return 1

    @staticmethod
    def deviceSynchronize() -> None:  # noqa: N802 - the emulator's kernels finish before returning
        pass

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
        if code not in _SOURCES.values():
            raise AssertionError("RawModule got CUDA source that is not one of the tree's kernels/*.cu the emulator "
                                 "was built from: is the installed fastvlad another checkout than these tests'?")
        self.code, self.options = code, options

    def get_function(self, name: str) -> _Function:
        assert f'extern "C" __global__ void {name}(' in self.code, f"no kernel {name} in the module source"
        return _Function(name)


class _Function:
    def __init__(self, name: str) -> None:
        self.name = name
        self.params = _SIGNATURES[name]

    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...], shared_mem: int = 0) -> None:
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments ({', '.join(self.params)}), "
                            f"given {len(args)}")
        cargs: list[Any] = []
        for pos, (a, param) in enumerate(zip(args, self.params)):
            if isinstance(a, np.ndarray):
                raise AssertionError(f"{self.name} argument {pos}: a host array reached a kernel")
            if param.endswith("*"):
                if not isinstance(a, ndarray) or a.dtype.type not in _POINTER_DTYPES.get(param, ()):
                    what = f"a device array of {a.dtype}" if isinstance(a, ndarray) else type(a).__name__
                    raise TypeError(f"{self.name} argument {pos} is declared {param}: {what} given")
                strided_ok = self.name.startswith("gather") and pos == 8  # out: a column slice
                assert strided_ok or a.flags.c_contiguous, f"{self.name} argument {pos}: strides {a.strides}"
                cargs.append(ctypes.c_void_p(a._a.ctypes.data))
            elif type(a) is _SCALAR_TYPES.get(param):
                cargs.append(ctypes.c_int(int(a)) if param == "int" else ctypes.c_longlong(int(a)))
            else:
                raise TypeError(f"{self.name} argument {pos} is declared {param}: {type(a).__name__} given "
                                f"(pass numpy.{_SCALAR_TYPES[param].__name__} for {param})" if param in _SCALAR_TYPES
                                else f"{self.name} argument {pos}: parameter type {param!r} is not emulated")
        LAUNCHES.append((self.name, grid, block, shared_mem))
        if getattr(_LIB, f"emu_{self.name}")(*grid, *block, ctypes.c_int(shared_mem), *cargs):
            _LIB.emu_last_error.restype = ctypes.c_char_p
            raise RuntimeError(f"{self.name}: {_LIB.emu_last_error().decode()}")


class only_blocks:  # noqa: N801 - a context manager used like a function
    """Within it, launches run only the blocks whose ``blockIdx.x`` is in ``xs`` (the others are
    skipped, their outputs stay unwritten): for grids too large to emulate whole, e.g. a batch whose
    indices pass 2³¹, of which the first and last images are checked."""

    def __init__(self, xs: list[int]) -> None:
        self.xs = (ctypes.c_uint * len(xs))(*xs)

    def __enter__(self) -> None:
        _LIB.emu_only_blocks_x(self.xs, len(self.xs))

    def __exit__(self, *exc: object) -> None:
        _LIB.emu_only_blocks_x(None, 0)
