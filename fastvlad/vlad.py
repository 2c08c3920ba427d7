"""VLAD: per-centre residual sums of each image's hypercolumns, then the normalisations.

Memory-bound: every point is read once. The Numba kernel sorts each image's points by centre
(a counting sort) and gives each (image, centre) task one float64 row that stays in L1, then
applies the normalisations to that row before writing it: no atomics, no (n, k, dim) float64
intermediate. The CUDA kernel keeps one centre's slice of the accumulator in shared memory per block.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._half import kernel_input, widen
from .errors import ParameterError

NORMALISATIONS = ("intra", "power")


def normalise(v, intra: bool = True, power: bool = False):  # type: ignore[no-untyped-def]
    """Normalise residual sums in place-free fashion: ``(n, k, dim)`` → ``(n, k·dim)`` float32.

    Optional signed square root, then per-centre L2 (a zero centre stays zero), then global L2.
    Written once against the array module of ``v`` (NumPy or CuPy).
    """
    xp = _namespace(v)
    if power:
        v = xp.sign(v) * xp.sqrt(xp.abs(v))
    if intra:
        norms = xp.sqrt((v * v).sum(axis=2, keepdims=True))
        v = v / xp.where(norms > 0, norms, 1)
    flat = v.reshape(v.shape[0], -1)
    norms = xp.sqrt((flat * flat).sum(axis=1, keepdims=True))
    return (flat / xp.where(norms > 0, norms, 1)).astype(np.float32)


def _namespace(a):  # type: ignore[no-untyped-def]
    """NumPy for NumPy arrays, CuPy for CuPy arrays (scikit-learn's get_namespace, simplified)."""
    return np if isinstance(a, np.ndarray) else __import__("cupy")


@njit(cache=True)  # pragma: no cover - jitted
def _label_order(labels, k):  # type: ignore[no-untyped-def]
    # Counting sort of one image's points by label; labels outside [0, k) are dropped (as on the GPU).
    starts = np.zeros(k + 1, dtype=np.int64)
    for s in range(labels.shape[0]):
        j = labels[s]
        if 0 <= j < k:
            starts[j + 1] += 1
    for j in range(k):
        starts[j + 1] += starts[j]
    fill = starts[:k].copy()
    order = np.empty(starts[k], dtype=np.int64)
    for s in range(labels.shape[0]):
        j = labels[s]
        if 0 <= j < k:
            order[fill[j]] = s
            fill[j] += 1
    return order, starts


@njit(parallel=True, cache=True)  # pragma: no cover - jitted
def _vlad_numba(x, table, labels, centres, power, intra, out, row_sq):  # type: ignore[no-untyped-def]
    # One task per (image, centre): its members' rows are summed into a float64 row that stays in
    # L1 (the points are visited grouped by centre), then Σx − count·c, the signed square root and
    # the per-centre L2 are applied on that row before one write to ``out`` (float64 residual
    # sums, or float32 codes before the global L2). ``row_sq`` gets each written row's squared norm.
    n, s_count, dim = x.shape
    k = centres.shape[0]
    orders = np.empty((n, s_count), dtype=np.int64)
    starts = np.empty((n, k + 1), dtype=np.int64)
    for i in prange(n):
        order, st = _label_order(labels[i], k)
        orders[i, : order.shape[0]] = order
        starts[i] = st
    for p in prange(n * k):
        i = p // k
        j = p - i * k
        acc = np.zeros(dim, dtype=np.float64)
        for m in range(starts[i, j], starts[i, j + 1]):
            row = x[i, orders[i, m]]
            for d in range(dim):
                acc[d] += widen(row[d], table)
        count = np.float64(starts[i, j + 1] - starts[i, j])
        total = 0.0
        for d in range(dim):
            v = acc[d] - count * np.float64(centres[j, d])
            if power:
                v = np.sign(v) * np.sqrt(np.abs(v))
            acc[d] = v
            total += v * v
        scale = 1.0 / np.sqrt(total) if intra and total > 0 else 1.0
        for d in range(dim):
            out[i, j, d] = acc[d] * scale
        row_sq[i, j] = total * scale * scale


@njit(parallel=True, cache=True)  # pragma: no cover - jitted
def _global_l2(codes, row_sq):  # type: ignore[no-untyped-def]
    # codes (n, k, dim) float32 divided by each image's L2 norm (a zero code stays zero).
    n, k, dim = codes.shape
    for i in prange(n):
        norm = np.sqrt(row_sq[i].sum())
        if norm > 0:
            for j in range(k):
                for d in range(dim):
                    codes[i, j, d] = np.float32(np.float64(codes[i, j, d]) / norm)


def _numba_args(x, labels, centres):  # type: ignore[no-untyped-def]
    """Kernel inputs: x as float32 or float16 bits (any strides), labels as integers, centres float32."""
    x, table = kernel_input(np.asarray(x))
    labels, centres = np.asarray(labels), np.ascontiguousarray(centres, dtype=np.float32)
    if x.ndim != 3 or labels.shape != x.shape[:2] or centres.ndim != 2 or centres.shape[1] != x.shape[2]:
        raise ParameterError(f"x {x.shape} must be (n, S, dim), labels {labels.shape} (n, S) and centres "
                             f"{centres.shape} (k, dim)")
    if labels.dtype.kind not in "iu":
        raise ParameterError(f"labels must be integers, not {labels.dtype}")
    return x, table, labels, centres


def _residual_sums_numba(x, labels, centres, out) -> None:  # type: ignore[no-untyped-def]
    x, table, labels, centres = _numba_args(x, labels, centres)
    _vlad_numba(x, table, labels, centres, False, False, out, np.empty(out.shape[:2]))


def _encode_numba(x, labels, centres, intra: bool, power: bool):  # type: ignore[no-untyped-def]
    """The whole VLAD in two kernels: ``(n, S, dim)`` → ``(n, k·dim)`` float32."""
    x, table, labels, centres = _numba_args(x, labels, centres)
    codes = np.empty((x.shape[0], centres.shape[0], x.shape[2]), dtype=np.float32)
    row_sq = np.empty(codes.shape[:2])
    _vlad_numba(x, table, labels, centres, power, intra, codes, row_sq)
    _global_l2(codes, row_sq)
    return codes.reshape(len(codes), -1)


def _residual_sums_numpy(x, labels, centres, out) -> None:  # type: ignore[no-untyped-def]
    k = centres.shape[0]
    for i in range(x.shape[0]):
        onehot = np.zeros((k, x.shape[1]))
        onehot[labels[i], np.arange(x.shape[1])] = 1.0
        out[i] = onehot @ x[i].astype(np.float64) - onehot.sum(axis=1)[:, None] * centres


def _residual_sums_cupy(x, labels, centres, out) -> None:  # type: ignore[no-untyped-def]
    from . import _cuda

    _cuda.residual_sums(x, labels, centres, out)


_RESIDUALS = {"numpy": _residual_sums_numpy, "numba": _residual_sums_numba, "cuda": _residual_sums_cupy}


def residual_sums(x, labels, centres, impl: str = "numba"):  # type: ignore[no-untyped-def]
    """Per-centre residual sums: x ``(n, S, dim)``, labels ``(n, S)`` int32, centres ``(k, dim)`` float32
    → ``(n, k, dim)`` float64 on the CPU, float32 on the GPU."""
    n, _, dim = x.shape
    xp = _namespace(x)
    dtype = np.float32 if impl == "cuda" else np.float64
    out = xp.empty((n, centres.shape[0], dim), dtype=dtype)
    _RESIDUALS[impl](x, labels, centres, out)
    return out


def encode(x, labels, centres, intra: bool = True, power: bool = False, impl: str = "numba"):  # type: ignore[no-untyped-def]
    """VLAD codes: ``(n, S, dim)`` points with their labels → ``(n, k·dim)`` float32."""
    if impl == "numba":
        return _encode_numba(x, labels, centres, intra, power)
    return normalise(residual_sums(x, labels, centres, impl), intra=intra, power=power)
