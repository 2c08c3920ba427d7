"""VLAD: per-centre residual sums of each image's hypercolumns, then the normalisations.

Memory-bound: every point is read once. The Numba kernel sorts each image's points by centre
(a counting sort) and gives each (image, centre) task one float64 row that stays in L1, then
applies the normalisations to that row before writing it: no atomics, no (n, k, dim) float64
intermediate. The CUDA kernel keeps one centre's slice of the accumulator in shared memory per block.

``encode_from_taps`` (what the encoder runs without PCA) fuses the hypercolumn gather into that
kernel: each member's hypercolumn is interpolated from the CNN taps straight into its centre's
row, so the (n, S, 1472) hypercolumns are never written (1.7× faster than gather then VLAD).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from . import hypercolumn
from ._half import kernel_input, widen
from ._prefetch import AHEAD, prefetch_row
from .errors import ParameterError
from .hypercolumn import _bilinear, prefetch_neighbours

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
def _orders(labels, k):  # type: ignore[no-untyped-def]
    # Every image's points grouped by centre: orders[i, starts[i, j]:starts[i, j + 1]] are centre j's.
    n, s_count = labels.shape
    orders = np.empty((n, s_count), dtype=np.int64)
    starts = np.empty((n, k + 1), dtype=np.int64)
    for i in prange(n):
        order, st = _label_order(labels[i], k)
        orders[i, : order.shape[0]] = order
        starts[i] = st
    return orders, starts


@njit(cache=True)  # pragma: no cover - jitted
def _finish_row(acc, count, centre, power, intra, out_row):  # type: ignore[no-untyped-def]
    # Σx (float64) → Σx − count·c, the signed square root, the per-centre L2, written to out_row;
    # returns the written row's squared norm (for the global L2).
    total = 0.0
    for d in range(acc.shape[0]):
        v = acc[d] - count * np.float64(centre[d])
        if power:
            v = np.sign(v) * np.sqrt(np.abs(v))
        acc[d] = v
        total += v * v
    scale = 1.0 / np.sqrt(total) if intra and total > 0 else 1.0
    for d in range(acc.shape[0]):
        out_row[d] = acc[d] * scale
    return total * scale * scale


@njit(parallel=True, cache=True)  # pragma: no cover - jitted
def _vlad_numba(x, x_table, taps, points, table, ylo, yhi, wyt, xlo, xhi, wxt, offsets, labels, centres,  # type: ignore[no-untyped-def]
                power, intra, out, row_sq):
    # One task per (image, centre): its members' hypercolumns are summed into a float64 row that
    # stays in L1 (the points are visited grouped by centre), then finished on that row before
    # one write to ``out`` (float64 residual sums, or float32 codes before the global L2).
    # A member's first columns are read from ``x``; the rest, if any taps are given, are
    # interpolated from them straight into the row (the same float32 values ``hypercolumn.gather``
    # writes), so the hypercolumns of the fused path are never written or read back.
    n, _, x_dim = x.shape
    k, dim = centres.shape
    orders, starts = _orders(labels, k)
    for p in prange(n * k):
        i = p // k
        j = p - i * k
        acc = np.zeros(dim, dtype=np.float64)
        end = starts[i, j + 1]
        for m in range(starts[i, j], end):
            if m + AHEAD < end:  # the next member's rows, scattered over the image (see _prefetch)
                ahead = orders[i, m + AHEAD]
                prefetch_row(x[i, ahead])
                prefetch_neighbours(taps, offsets.shape[0] - 1, points, i, ahead, ylo, yhi, wyt, xlo, xhi, wxt)
            s = orders[i, m]
            row = x[i, s]
            for d in range(x_dim):
                acc[d] += widen(row[d], x_table)
            for t in range(offsets.shape[0] - 1):
                r, c = points[i, s, 0], points[i, s, 1]  # in the loop: without taps ``points`` is empty
                _bilinear(taps[t][i], ylo[t, r], yhi[t, r], wyt[t, r], xlo[t, c], xhi[t, c], wxt[t, c], table,
                          acc[x_dim + offsets[t] : x_dim + offsets[t + 1]], True)
        count = np.float64(starts[i, j + 1] - starts[i, j])
        row_sq[i, j] = _finish_row(acc, count, centres[j], power, intra, out[i, j])


def _no_taps(n: int) -> tuple[Any, ...]:
    """``_vlad_numba``'s tap arguments when every column comes from ``x`` (the loop over taps is empty)."""
    table = np.zeros((1, 1), dtype=np.int32)
    weight = np.zeros((1, 1), dtype=np.float32)
    taps = hypercolumn.padded_taps([np.zeros((n, 1, 1, 1), np.float32)])
    return (taps, np.zeros((n, 0, 2), np.int32), np.zeros(0, np.float32), table, table, weight, table, table, weight,
            np.zeros(1, dtype=np.int64))


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
    if x.ndim != 3 or centres.ndim != 2 or centres.shape[1] != x.shape[2]:
        raise ParameterError(f"x {x.shape} must be (n, S, dim) and centres {centres.shape} (k, dim)")
    _check_labels(labels, x.shape[:2])
    return x, table, labels, centres


def _residual_sums_numba(x, labels, centres, out) -> None:  # type: ignore[no-untyped-def]
    x, table, labels, centres = _numba_args(x, labels, centres)
    kernel: Any = _vlad_numba  # a Numba dispatcher: mypy cannot see its signature
    kernel(x, table, *_no_taps(len(x)), labels, centres, False, False, out, np.empty(out.shape[:2]))


def _codes_numba(x, table, tap_args, labels, centres, intra: bool, power: bool):  # type: ignore[no-untyped-def]
    """The whole VLAD in two kernels (``_vlad_numba``, then the global L2): ``(n, k·dim)`` float32."""
    dim = centres.shape[1]
    codes = np.empty((x.shape[0], centres.shape[0], dim), dtype=np.float32)
    row_sq = np.empty(codes.shape[:2])
    kernel: Any = _vlad_numba  # a Numba dispatcher: mypy cannot see its signature
    kernel(x, table, *tap_args, labels, centres, power, intra, codes, row_sq)
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
        x, table, labels, centres = _numba_args(x, labels, centres)
        return _codes_numba(x, table, _no_taps(len(x)), labels, centres, intra, power)
    return normalise(residual_sums(x, labels, centres, impl), intra=intra, power=power)


def _check_labels(labels, shape: tuple[int, ...]) -> None:  # type: ignore[no-untyped-def]
    if tuple(labels.shape) != tuple(shape) or labels.dtype.kind not in "iu":
        raise ParameterError(f"labels must be integers of shape {tuple(shape)} (n, S); got {labels.dtype} "
                             f"{tuple(labels.shape)}")


def encode_from_taps(taps, points, labels, centres, mode: str = "half_pixel", intra: bool = True,  # type: ignore[no-untyped-def]
                     power: bool = False, impl: str = "numba", gathered=None):
    """``encode(hypercolumn.gather(taps, points, mode), labels, centres)`` without the hypercolumns.

    taps: ``(n, h_l, w_l, C_l)`` float32/float16; points: ``(n, S, 2)`` int32 in the first tap's
    grid; labels: ``(n, S)`` integers; centres: ``(k, sum C_l)`` float32; gathered: the first
    taps' hypercolumns ``(n, S, C_0 + … + C_{m-1})`` when at hand (read instead of interpolated).
    Returns ``(n, k·dim)`` float32. On the CPU one fused kernel builds each point's hypercolumn in
    its centre's accumulator (the same values, summed in the same order, as gathering first);
    elsewhere the hypercolumns are gathered first.
    """
    hypercolumn.check_points(taps, points)
    m, x = _leading_taps(taps, points, gathered)
    if impl != "numba":
        xp = np if impl == "numpy" else __import__("cupy")
        hc = xp.empty((*points.shape[:2], sum(int(t.shape[3]) for t in taps)), dtype=np.float32)
        hc[..., : x.shape[2]] = x
        if taps[m:]:
            hypercolumn.gather(taps[m:], points, mode, impl, out=hc[..., x.shape[2] :], out_hw=taps[0].shape[1:3])
        return encode(hc, labels, centres, intra, power, impl)
    labels, centres = np.asarray(labels), np.ascontiguousarray(centres, dtype=np.float32)
    _check_labels(labels, points.shape[:2])
    dim = sum(int(t.shape[3]) for t in taps)
    if centres.ndim != 2 or centres.shape[1] != dim:
        raise ParameterError(f"centres {centres.shape} must be (k, {dim}): the taps have {dim} channels")
    if taps[m:]:
        tables = hypercolumn.tap_tables(taps[m:], mode, (int(taps[0].shape[1]), int(taps[0].shape[2])))
        tap_args = hypercolumn.numba_tap_args(taps[m:], points, tables)
    else:
        tap_args = _no_taps(len(points))
    return _codes_numba(*kernel_input(np.ascontiguousarray(x)), tap_args, labels, centres, intra, power)


def _leading_taps(taps, points, gathered):  # type: ignore[no-untyped-def]
    """How many leading taps ``gathered`` holds, and it (``(n, S, 0)`` when None)."""
    n, s = points.shape[:2]
    if gathered is None:
        return 0, _namespace(points).zeros((n, s, 0), dtype=np.float32)
    widths = np.cumsum([int(t.shape[3]) for t in taps])
    if gathered.ndim != 3 or tuple(gathered.shape[:2]) != (n, s) or gathered.shape[2] not in widths:
        raise ParameterError(f"gathered has shape {tuple(gathered.shape)}; expected ({n}, {s}, C) with C the "
                             f"channels of the first taps, one of {[int(w) for w in widths]}")
    return int(np.searchsorted(widths, gathered.shape[2])) + 1, gathered
