"""The CUDA backend: CuPy arrays, the CUDA kernels of ``kernels/*.cu`` and cuBLAS, ONNX Runtime's
CUDA provider, XGBoost on the GPU.

Each ``.cu`` file is compiled by NVRTC through ``cupy.RawModule`` on first use (per device; CuPy
also keeps the binary in its on-disk kernel cache). Inputs may be NumPy or CuPy, float32 or
float16, contiguous or not: they are moved/copied to contiguous device arrays here, so the
kernels only ever see dense row-major data. CuPy is imported lazily so that the package works,
and says what to install, without it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np

from .. import config
from ..errors import DeviceUnavailableError, ParameterError
from .base import GPU_INSTALL, AxisTable, Tables, normalise, soft_weights

#: Dynamic shared memory a block may use without an opt-in attribute, on every architecture.
SHARED_BYTES = 48 * 1024
#: Bytes of float32 temporaries (fp32 copy of an fp16 block + the cross-product block) per GEMM block.
ASSIGN_BLOCK_BYTES = 128 * 1024 * 1024
_WARPS_PER_BLOCK = 8  # gather / argmin: one warp per point or row, 8 per 256-thread block

#: The options fastvlad gives ``cupy.RawModule``; CuPy adds its include folders, ``-ftz=true`` and
#: ``-arch=sm_XX`` (tests/test_nvrtc.py compiles every kernel with NVRTC so).
NVRTC_OPTIONS = ("-std=c++17",)

_MODULES: dict[tuple[str, int], Any] = {}
_TABLES: OrderedDict[tuple[int, bytes], Any] = OrderedDict()
_TABLE_CACHE_SIZE = 64
_checked = False


def _cupy() -> Any:
    """CuPy, with a usable GPU behind it, or a DeviceUnavailableError saying what is missing."""
    global _checked
    try:
        import cupy
    except ImportError as exc:
        raise DeviceUnavailableError(f"the CUDA backend needs CuPy, which is not installed: {GPU_INSTALL}, "
                                     "or use device='cpu'") from exc
    if not _checked:
        try:  # without a driver CuPy raises here instead of returning 0
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:
            raise DeviceUnavailableError(f"the CUDA backend: CuPy cannot reach a GPU ({type(exc).__name__}: {exc})") from exc
        if count < 1:
            raise DeviceUnavailableError("the CUDA backend: no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES)")
        _checked = True
    return cupy


def _source(name: str) -> str:
    from fastvlad.kernels import source

    return source(name)


def _function(module: str, name: str) -> Any:
    """Kernel ``name`` of ``kernels/<module>.cu``, compiled for the current device on first use."""
    cp = _cupy()
    key = (module, cp.cuda.runtime.getDevice())
    if key not in _MODULES:
        _MODULES[key] = cp.RawModule(code=_source(module), options=NVRTC_OPTIONS)
    return _MODULES[key].get_function(name)


def _floats(a: Any, what: str) -> tuple[Any, str]:
    """Contiguous device copy/view of ``a`` as float32 or float16 (others → float32), and the kernel suffix."""
    cp = _cupy()
    a = cp.asarray(a)
    if a.dtype == np.float16:
        return cp.ascontiguousarray(a), "f16"
    if a.dtype.kind not in "fiu":
        raise ParameterError(f"{what} must hold real numbers, not {a.dtype}")
    return cp.ascontiguousarray(a, dtype=cp.float32), "f32"


def _ints(a: Any) -> Any:
    cp = _cupy()
    return cp.ascontiguousarray(cp.asarray(a), dtype=cp.int32)


def _write_back(out: Any, result: Any) -> None:
    """Copy a kernel's dense result into a caller's array of another layout or on the host."""
    if isinstance(out, np.ndarray):
        out[...] = result.get()
    else:
        out[...] = result


def _table(t: AxisTable) -> tuple[Any, Any, Any]:
    """Device copy of an axis table as (lo, hi, w), cached by content (the stage rebuilds the
    tables on every call, so identity would never hit) to avoid small uploads per batch."""
    cp = _cupy()
    packed = np.concatenate([t.lo.astype(np.int32), t.hi.astype(np.int32), t.w.astype(np.float32).view(np.int32)])
    key = (cp.cuda.runtime.getDevice(), packed.tobytes())
    dev = _TABLES.get(key)
    if dev is None:
        dev = _TABLES[key] = cp.asarray(packed)
        if len(_TABLES) > _TABLE_CACHE_SIZE:
            _TABLES.popitem(last=False)
    else:
        _TABLES.move_to_end(key)
    size = len(t.lo)
    return dev[:size], dev[size : 2 * size], dev[2 * size :].view(cp.float32)


def gather_tap(tap: Any, points: Any, ty: AxisTable, tx: AxisTable, out: Any) -> None:
    """Bilinear samples of one tap at the points, bit-identical to the Numba kernel.

    tap ``(n, h, w, C)`` float32/float16; points ``(n, S, 2)`` int32 [row, col] indexing ``ty``/``tx``;
    out ``(n, S, C)`` float32, typically a column slice of the ``(n, S, D)`` hypercolumns (written in place).
    """
    cp = _cupy()
    tap, suffix = _floats(tap, "tap")
    points = _ints(points)
    if tap.ndim != 4 or points.ndim != 3 or points.shape[2] != 2 or points.shape[0] != tap.shape[0]:
        raise ParameterError(f"tap {tap.shape} must be (n, h, w, C) and points {points.shape} (n, S, 2)")
    n, h, w, channels = tap.shape
    s_count = points.shape[1]
    if tuple(out.shape) != (n, s_count, channels):
        raise ParameterError(f"out has shape {tuple(out.shape)}, expected {(n, s_count, channels)}")
    if n * s_count == 0 or channels == 0:
        return
    # Write straight into a CuPy float32 view whose channels are adjacent (the column slice the
    # stage passes); any other out gets a dense temporary and a copy.
    direct = (
        isinstance(out, cp.ndarray) and out.dtype == cp.float32 and out.strides[2] == 4
        and out.strides[0] % 4 == 0 and out.strides[1] % 4 == 0
    )
    dst = out if direct else cp.empty((n, s_count, channels), dtype=cp.float32)
    (ylo, yhi, wy), (xlo, xhi, wx) = _table(ty), _table(tx)
    blocks = -(-n * s_count // _WARPS_PER_BLOCK)
    _function("gather", f"gather_{suffix}")(
        (blocks,), (32 * _WARPS_PER_BLOCK,),
        (tap, points, ylo, yhi, wy, xlo, xhi, wx, dst, np.int32(n), np.int32(s_count), np.int32(h), np.int32(w),
         np.int32(channels), np.int64(dst.strides[0] // 4), np.int64(dst.strides[1] // 4)),
    )
    if not direct:
        _write_back(out, dst)


def assign(x: Any, centres: Any) -> tuple[Any, Any]:
    """Nearest centre of every row: x ``(m, D)`` float32/float16, centres ``(k, D)`` →
    labels ``(m,)`` int32 and squared distances ``(m,)`` float32 (CuPy arrays).

    The cross term is a float32 cuBLAS GEMM (TF32 only if the user enabled CUPY_TF32) over row
    blocks that bound the temporaries; the argmin and the norms are one fused kernel per block.
    """
    cp = _cupy()
    x, suffix = _floats(x, "x")
    c = cp.ascontiguousarray(cp.asarray(centres), dtype=cp.float32)
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1] or c.shape[0] < 1:
        raise ParameterError(f"x {x.shape} must be (m, D) and centres {c.shape} (k ≥ 1, D)")
    m, dim = x.shape
    k = c.shape[0]
    labels = cp.empty(m, dtype=cp.int32)
    dist = cp.empty(m, dtype=cp.float32)
    c_sq = (c * c).sum(axis=1)
    per_row = 4 * (k + (dim if suffix == "f16" else 0))
    rows = max(1024, ASSIGN_BLOCK_BYTES // per_row)
    kernel = _function("assign", f"argmin_rows_{suffix}")
    for start in range(0, m, rows):
        xb = x[start : start + rows]  # a row range of a C-contiguous array: contiguous
        mb = xb.shape[0]
        cross = (xb if suffix == "f32" else xb.astype(cp.float32)) @ c.T
        kernel(
            (-(-mb // _WARPS_PER_BLOCK),), (32 * _WARPS_PER_BLOCK,),
            (xb, cross, c_sq, labels[start : start + mb], dist[start : start + mb], np.int32(mb), np.int32(dim),
             np.int32(k)),
        )
    return labels, dist


def argmin_rows(cross: Any, c_sq: Any, labels: Any) -> Any:
    """labels[i] = argmin_j c_sq[j] − 2·cross[i, j] (lowest j on ties) for a ready ``(m, k)`` cross
    term (``codebook.nearest_from_taps``); the assignment kernel with no ‖x‖² to compute."""
    cp = _cupy()
    cross = cp.ascontiguousarray(cp.asarray(cross), dtype=cp.float32)
    c_sq = cp.ascontiguousarray(cp.asarray(c_sq), dtype=cp.float32)
    m, k = cross.shape
    if m:
        dist = cp.empty(m, dtype=cp.float32)  # written by the kernel, not used
        _function("assign", "argmin_rows_f32")(
            (-(-m // _WARPS_PER_BLOCK),), (32 * _WARPS_PER_BLOCK,),
            (cross, cross, c_sq, labels, dist, np.int32(m), np.int32(0), np.int32(k)),  # D = 0: no x is read
        )
    return labels


def residual_sums(x: Any, labels: Any, centres: Any, out: Any) -> None:
    """Per-centre residual sums into out ``(n, k, D)``: x ``(n, S, D)`` float32/float16,
    labels ``(n, S)`` int32 in [0, k) (others are ignored), centres ``(k, D)``. Float32 accumulation
    in shared memory, deterministic order, no atomics."""
    cp = _cupy()
    x, suffix = _floats(x, "x")
    labels = _ints(labels)
    c = cp.ascontiguousarray(cp.asarray(centres), dtype=cp.float32)
    if x.ndim != 3 or labels.shape != x.shape[:2] or c.ndim != 2 or c.shape[1] != x.shape[2]:
        raise ParameterError(f"x {x.shape} must be (n, S, D), labels {labels.shape} (n, S), centres {c.shape} (k, D)")
    n, s_count, dim = x.shape
    k = c.shape[0]
    if tuple(out.shape) != (n, k, dim):
        raise ParameterError(f"out has shape {tuple(out.shape)}, expected {(n, k, dim)}")
    direct = isinstance(out, cp.ndarray) and out.dtype == cp.float32 and out.flags.c_contiguous
    dst = out if direct else cp.empty((n, k, dim), dtype=cp.float32)
    if n * k * dim:
        # One thread per column; a block's k_chunk × tile accumulators must fit the 48 KB of
        # shared memory: 64 columns up to k = 192, then 32 columns and centre chunks of 384.
        tile = 64 if k <= SHARED_BYTES // (64 * 4) else 32
        k_chunk = min(k, SHARED_BYTES // (tile * 4))
        _function("vlad", f"residual_sums_{suffix}")(
            (n, -(-dim // tile), -(-k // k_chunk)), (tile,),
            (x, labels, c, dst, np.int32(s_count), np.int32(dim), np.int32(k), np.int32(k_chunk)),
            shared_mem=k_chunk * tile * 4,
        )
    if not direct:
        _write_back(out, dst)


# -- the backend object --------------------------------------------------------------------------


@dataclass(frozen=True)
class CudaBackend:
    """CuPy arrays, the CUDA kernels above and cuBLAS, ONNX Runtime's CUDA provider, XGBoost on the GPU."""

    device: str = "cuda"
    providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    batch_size: int = config.GPU_BATCH_SIZE
    decode_threads: int = 1  # ``backends.resolve`` sets min(GPU_DECODE_THREADS, cores)

    @property
    def xp(self) -> ModuleType:
        return _cupy()

    def asarray(self, a: Any) -> Any:
        return _cupy().asarray(a)

    def to_numpy(self, a: Any) -> np.ndarray:
        return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)

    def synchronize(self) -> None:
        """CUDA kernels return at launch: without this a clock read times the launch and bills
        the work to whatever synchronises next."""
        _cupy().cuda.runtime.deviceSynchronize()

    def release_memory(self) -> None:
        _cupy().get_default_memory_pool().free_all_blocks()

    def with_batch_size(self, batch_size: int) -> CudaBackend:
        return replace(self, batch_size=batch_size)

    def gather(self, taps: Sequence[Any], points: Any, tables: Tables, out: Any, accumulate: bool = False) -> None:
        if accumulate:  # one tap at a time into a temporary, added to ``out``
            for tap, table in zip(taps, tables):
                part = _cupy().empty((*points.shape[:2], tap.shape[3]), dtype=np.float32)
                self.gather([tap], points, [table], part)
                out += part
            return
        offset = 0
        for tap, (ty, tx) in zip(taps, tables):
            gather_tap(tap, points, ty, tx, out[:, :, offset : offset + tap.shape[3]])
            offset += tap.shape[3]

    def matmul_per_image(self, a: Any, b: Any, out: Any = None) -> Any:
        return _cupy().matmul(a, b, out=out)  # batched cuBLAS: one GEMM per image

    def argmin_rows(self, cross: Any, c_sq: Any, labels: Any) -> Any:
        return argmin_rows(cross, c_sq, labels)

    def assign(self, x: Any, centres: Any, block_rows: int, with_dist: bool) -> tuple[Any, Any]:
        labels, dist = assign(x, centres)  # blocks sized by ASSIGN_BLOCK_BYTES, not rows
        return labels, dist if with_dist else None

    def residual_sums(self, x: Any, labels: Any, centres: Any) -> Any:
        out = _cupy().empty((x.shape[0], centres.shape[0], x.shape[2]), dtype=np.float32)
        residual_sums(x, labels, centres, out)
        return out

    def vlad(self, x: Any, labels: Any, centres: Any, intra: bool, power: bool, taps: Sequence[Any] = (),
             points: Any = None, tables: Tables = ()) -> Any:
        if len(taps):  # no fused kernel here: the hypercolumns are gathered first
            hc = _cupy().empty((*x.shape[:2], x.shape[2] + sum(int(t.shape[3]) for t in taps)), dtype=np.float32)
            hc[..., : x.shape[2]] = x
            if x.shape[0] * x.shape[1]:
                self.gather(taps, points, tables, hc[..., x.shape[2] :])
            x = hc
        return normalise(self.residual_sums(x, labels, centres), intra, power, _cupy())

    def soft_weights(self, cross: Any, c_sq: Any, scale: float, cutoff: float) -> Any:
        return soft_weights(cross, c_sq, scale, cutoff, _cupy())  # CuPy's elementwise kernels
