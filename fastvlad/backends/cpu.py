"""The CPU backend: Numba kernels, and NumPy's BLAS for the GEMMs (``_blas``).

Kernels are ``@njit(parallel=True, cache=True)`` and compute in float32 (float16 inputs arrive as
their bits with a widening table, ``_half``); sums that feed a normalisation are float64. They do
not bounds-check: the stage modules validate shapes and index ranges before calling.

- gather: bilinear samples of every tap at the points (one task per point, neighbours prefetched);
- argmin: the nearest centre from a GEMM's cross term, fused into one pass over it;
- VLAD: per-(image, centre) residual sums in an L1-resident float64 row, normalised before the one
  write; the fused variant interpolates the taps straight into that row;
- soft assignment's weights: one pass over the cross term, each point's row in L1, written centre-major;
- the k-means mini-batch update (k-means always runs on the host).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np
from numba import njit, prange

from .. import config
from . import _blas
from ._half import kernel_input, widen
from ._prefetch import AHEAD, prefetch_row
from .base import Tables

# -- gather ------------------------------------------------------------------------------------


@njit(inline="always")  # pragma: no cover - jitted
def _put(dst, ch, value, accumulate):  # type: ignore[no-untyped-def]
    if accumulate:
        dst[ch] += value
    else:
        dst[ch] = value


@njit(cache=True)  # pragma: no cover - jitted
def _bilinear(img, y0, y1, wy, x0, x1, wx, table, dst, accumulate):  # type: ignore[no-untyped-def]
    # (1-wy)·((1-wx)·a + wx·b) + wy·((1-wx)·c + wx·d) in float32, in this order. A zero weight
    # makes its term exactly 0 and its partner's factor exactly 1, so skipping the neighbours it
    # multiplies changes no finite result (only the sign of a zero): the same-size first tap at
    # half-pixel reads one row instead of four. ``accumulate`` adds the value to ``dst``.
    one = np.float32(1.0)
    a = img[y0, x0]
    if wy == 0 and wx == 0:
        for ch in range(dst.shape[0]):
            _put(dst, ch, widen(a[ch], table), accumulate)
    elif wy == 0:
        b = img[y0, x1]
        for ch in range(dst.shape[0]):
            _put(dst, ch, (one - wx) * widen(a[ch], table) + wx * widen(b[ch], table), accumulate)
    elif wx == 0:
        c = img[y1, x0]
        for ch in range(dst.shape[0]):
            _put(dst, ch, (one - wy) * widen(a[ch], table) + wy * widen(c[ch], table), accumulate)
    else:
        b, c, d = img[y0, x1], img[y1, x0], img[y1, x1]
        for ch in range(dst.shape[0]):
            top = (one - wx) * widen(a[ch], table) + wx * widen(b[ch], table)
            bottom = (one - wx) * widen(c[ch], table) + wx * widen(d[ch], table)
            _put(dst, ch, (one - wy) * top + wy * bottom, accumulate)


@njit(inline="always")  # pragma: no cover - jitted
def _prefetch_neighbours(taps, n_taps, points, i, s, ylo, yhi, wyt, xlo, xhi, wxt):  # type: ignore[no-untyped-def]
    # Every row ``_bilinear`` will read for point s of image i in the first n_taps taps. The point
    # is read inside the loop: with no taps, ``points`` may be empty (vlad's hypercolumn-only path).
    for t in range(n_taps):
        r, c = points[i, s, 0], points[i, s, 1]
        img = taps[t][i]
        y0, y1, x0, x1 = ylo[t, r], yhi[t, r], xlo[t, c], xhi[t, c]
        prefetch_row(img[y0, x0])
        if wxt[t, c] != 0:
            prefetch_row(img[y0, x1])
        if wyt[t, r] != 0:
            prefetch_row(img[y1, x0])
            if wxt[t, c] != 0:
                prefetch_row(img[y1, x1])


@njit(cache=True)  # pragma: no cover - jitted
def _row_order(points, height):  # type: ignore[no-untyped-def]
    # Counting sort of one image's points by row: visiting them in this order makes consecutive
    # points share neighbours in the coarse taps and walk the fine ones front to back.
    counts = np.zeros(height + 1, dtype=np.int64)
    for s in range(points.shape[0]):
        counts[points[s, 0] + 1] += 1
    for r in range(height):
        counts[r + 1] += counts[r]
    order = np.empty(points.shape[0], dtype=np.int64)
    for s in range(points.shape[0]):
        r = points[s, 0]
        order[counts[r]] = s
        counts[r] += 1
    return order


@njit(parallel=True, cache=True)  # pragma: no cover - jitted
def _gather_kernel(taps, points, ylo, yhi, wyt, xlo, xhi, wxt, offsets, table, out, accumulate):  # type: ignore[no-untyped-def]
    # One task per point: every tap's channels go straight into the point's output row
    # (columns offsets[t]:offsets[t+1]; with ``accumulate`` every tap is added to the row instead).
    # The next point's neighbour rows are prefetched first (see _prefetch).
    n, s_count = points.shape[0], points.shape[1]
    order = np.empty((n, s_count), dtype=np.int64)
    for i in prange(n):
        order[i] = _row_order(points[i], ylo.shape[1])
    for p in prange(n * s_count):
        i = p // s_count
        q = p - i * s_count
        if q + AHEAD < s_count:
            _prefetch_neighbours(taps, offsets.shape[0] - 1, points, i, order[i, q + AHEAD], ylo, yhi, wyt, xlo, xhi,
                                 wxt)
        s = order[i, q]
        r = points[i, s, 0]
        c = points[i, s, 1]
        row = out[i, s]
        for t in range(offsets.shape[0] - 1):  # the taps; the tuple's padding slots are never read
            dst = row if accumulate else row[offsets[t] : offsets[t + 1]]
            _bilinear(taps[t][i], ylo[t, r], yhi[t, r], wyt[t, r], xlo[t, c], xhi[t, c], wxt[t, c], table, dst,
                      accumulate)


#: Slots of the tap tuple the Numba kernels take. A tuple's length is part of its Numba type, so
#: padding every tuple to one length (with never-read placeholders) compiles each kernel once
#: for 1 to 8 taps instead of once per tap count (about 6 s per extra compile on 2 cores).
TAP_SLOTS = 8


def padded_taps(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """``arrays`` (n, h, w, C) of one dtype, C-contiguous, as a tuple of at least ``TAP_SLOTS``
    read-only views: the kernels only read taps, and a read-only array is another Numba type, so
    views make one tuple type (indexable at run time) whether or not the caller's were writable."""
    filler = np.zeros((1, 1, 1, 1), dtype=arrays[0].dtype)
    views = []
    for a in (*arrays, *[filler] * (TAP_SLOTS - len(arrays))):
        view = a.view()
        view.flags.writeable = False
        views.append(view)
    return tuple(views)


def tap_args(taps: Sequence[np.ndarray], points: np.ndarray, tables: Tables) -> tuple[Any, ...]:
    """What the kernels that interpolate taps take (``_gather_kernel``, ``_vlad_kernel``): the taps
    as one tuple of contiguous arrays of one kernel dtype (``padded_taps``), the points as int32,
    the float16 table, the six stacked axis tables ``(n_taps, out)`` and the channel offsets
    ``(n_taps + 1,)``, whose length is how many taps the kernels read."""
    if not all(t.dtype == np.float16 for t in taps):  # one kernel dtype for all taps
        taps = [t.astype(np.float32, copy=False) for t in taps]
    inputs = [kernel_input(np.ascontiguousarray(t)) for t in taps]
    stack = [np.stack([getattr(tables[t][axis], f) for t in range(len(taps))]) for axis in (0, 1)
             for f in ("lo", "hi", "w")]
    offsets = np.concatenate([[0], np.cumsum([t.shape[3] for t in taps])]).astype(np.int64)
    return (padded_taps([a for a, _ in inputs]), np.ascontiguousarray(points, dtype=np.int32), inputs[0][1], *stack,
            offsets)


def no_taps(n: int) -> tuple[Any, ...]:
    """``_vlad_kernel``'s tap arguments when every column comes from ``x`` (the loop over taps is empty)."""
    table = np.zeros((1, 1), dtype=np.int32)
    weight = np.zeros((1, 1), dtype=np.float32)
    taps = padded_taps([np.zeros((n, 1, 1, 1), np.float32)])
    return (taps, np.zeros((n, 0, 2), np.int32), np.zeros(0, np.float32), table, table, weight, table, table, weight,
            np.zeros(1, dtype=np.int64))


def gather(taps: Sequence[np.ndarray], points: np.ndarray, tables: Tables, out: np.ndarray,
           accumulate: bool = False) -> None:
    """All taps at once into ``out`` (n, S, sum C) float32 — or, with ``accumulate``, their sum added
    to ``out`` (n, S, C) (all taps then have C channels); any layout and float dtype in."""
    taps_in, points_in, table, *stack, offsets = tap_args(taps, points, tables)
    dense = out if out.flags.c_contiguous and out.dtype == np.float32 else np.empty(out.shape, np.float32)
    if accumulate and dense is not out:
        dense[...] = out
    kernel: Any = _gather_kernel  # a Numba dispatcher: mypy cannot see its signature
    kernel(taps_in, points_in, *stack, offsets, table, dense, accumulate)
    if dense is not out:
        out[...] = dense


# -- nearest centre ------------------------------------------------------------------------------


@njit(parallel=True, cache=True)  # pragma: no cover - jitted
def _argmin_rows_kernel(cross, x_sq, c_sq, labels, dist):  # type: ignore[no-untyped-def]
    # argmin_j ‖c_j‖² − 2 x·c_j (‖x‖² does not change the winner), lowest j on ties; the literal
    # 2.0 makes the comparison float64, as on the GPU. Distances only when ``dist`` has rows.
    m, k = cross.shape
    for i in prange(m):
        best = np.inf
        arg = 0
        for j in range(k):
            d = c_sq[j] - 2.0 * cross[i, j]
            if d < best:
                best = d
                arg = j
        labels[i] = arg
        if dist.shape[0]:
            dist[i] = max(best + x_sq[i], 0.0)


_NONE = np.zeros(0, dtype=np.float32)  # "no distances" for the argmin kernel


def assign(x: np.ndarray, centres: np.ndarray, block_rows: int, with_dist: bool) -> tuple[np.ndarray, Any]:
    """Nearest centre of every row: one float32 GEMM per block of ``block_rows`` rows, each followed
    by the fused argmin (``Backend.assign``)."""
    x = np.asarray(x)
    m = x.shape[0]
    c = np.ascontiguousarray(centres, dtype=np.float32)
    c_sq = np.einsum("ij,ij->i", c, c)
    labels = np.empty(m, dtype=np.int32)
    dist = np.empty(m if with_dist else 0, dtype=np.float32)
    cross = np.empty((min(block_rows, m), len(c)), dtype=np.float32)  # reused: no allocation per block
    for start in range(0, m, block_rows):
        # A contiguous float32 block (a view for the usual input) so the GEMM runs at BLAS speed.
        xb = np.ascontiguousarray(x[start : start + block_rows], dtype=np.float32)
        cb = cross[: len(xb)]
        np.matmul(xb, c.T, out=cb)
        # ‖x‖² by einsum: NumPy's SIMD pairwise sum (a jitted float reduction would be serial).
        x_sq = np.einsum("ij,ij->i", xb, xb) if with_dist else _NONE
        _argmin_rows_kernel(cb, x_sq, c_sq, labels[start : start + len(xb)], dist[start : start + len(xb)])
    return labels, dist if with_dist else None


# -- VLAD ----------------------------------------------------------------------------------------


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
def _vlad_kernel(x, x_table, taps, points, table, ylo, yhi, wyt, xlo, xhi, wxt, offsets, labels, centres,  # type: ignore[no-untyped-def]
                 power, intra, out, row_sq):
    # One task per (image, centre): its members' hypercolumns are summed into a float64 row that
    # stays in L1 (the points are visited grouped by centre), then finished on that row before
    # one write to ``out`` (float64 residual sums, or float32 codes before the global L2).
    # A member's first columns are read from ``x``; the rest, if any taps are given, are
    # interpolated from them straight into the row (the same float32 values ``gather`` writes),
    # so the hypercolumns of the fused path are never written or read back.
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
                _prefetch_neighbours(taps, offsets.shape[0] - 1, points, i, ahead, ylo, yhi, wyt, xlo, xhi, wxt)
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


def residual_sums(x: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Per-centre residual sums ``(n, k, D)`` float64 (``Backend.residual_sums``)."""
    x, table = kernel_input(np.asarray(x))
    centres = np.ascontiguousarray(centres, dtype=np.float32)
    out = np.empty((x.shape[0], centres.shape[0], x.shape[2]), dtype=np.float64)
    kernel: Any = _vlad_kernel  # a Numba dispatcher: mypy cannot see its signature
    kernel(x, table, *no_taps(len(x)), np.asarray(labels), centres, False, False, out, np.empty(out.shape[:2]))
    return out


def vlad(x: np.ndarray, labels: np.ndarray, centres: np.ndarray, intra: bool, power: bool,
         taps: Sequence[np.ndarray] = (), points: Any = None, tables: Tables = ()) -> np.ndarray:
    """The whole VLAD in two kernels (``_vlad_kernel``, then the global L2): ``(n, k·D)`` float32
    (``Backend.vlad``; with taps, the fused path that never writes their hypercolumns)."""
    x, table = kernel_input(np.ascontiguousarray(x))
    centres = np.ascontiguousarray(centres, dtype=np.float32)
    interpolated = tap_args(taps, points, tables) if len(taps) else no_taps(len(x))
    codes = np.empty((x.shape[0], centres.shape[0], centres.shape[1]), dtype=np.float32)
    row_sq = np.empty(codes.shape[:2])
    kernel: Any = _vlad_kernel  # a Numba dispatcher: mypy cannot see its signature
    kernel(x, table, *interpolated, np.asarray(labels), centres, power, intra, codes, row_sq)
    _global_l2(codes, row_sq)
    return codes.reshape(len(codes), -1)


# -- soft assignment's weights ------------------------------------------------------------------

#: Points per task of the soft-weights kernel: one task writes a 64-point run of every centre's row of
#: the centre-major output, so each of its k destination cache lines is filled whole while it lives in L1.
SOFT_BLOCK = 64


@njit(parallel=True, cache=True)  # pragma: no cover - jitted
def _soft_weights_kernel(cross, c_sq, scale, cutoff, out):  # type: ignore[no-untyped-def]
    # Each point's k weights are worked in one float32 row that stays in L1, with the operations of
    # ``base.soft_weights`` in its order (``exp`` and the row's sum round differently: NumPy's float32
    # exp is within a few ulps, its sum pairwise in float32), then written centre-major. A NaN in the
    # row makes its minimum NaN, as NumPy's does: every weight 0, the row NaN.
    n, s_count, k = cross.shape
    blocks = (s_count + SOFT_BLOCK - 1) // SOFT_BLOCK
    for task in prange(n * blocks):
        i = task // blocks
        first = (task - i * blocks) * SOFT_BLOCK
        z = np.empty(k, dtype=np.float32)
        for s in range(first, min(s_count, first + SOFT_BLOCK)):
            row = cross[i, s]
            low = np.float32(np.inf)
            for j in range(k):
                v = row[j] * np.float32(-2.0) + c_sq[j]
                z[j] = v
                if v < low or v != v:
                    low = v
            total = 0.0  # float64: the row's sum to float32 rounding whatever its order
            for j in range(k):
                v = (z[j] - low) * scale
                e = np.exp(-v) if v <= cutoff else np.float32(0.0)
                z[j] = e
                total += e
            norm = np.float32(total)
            for j in range(k):
                out[i, j, s] = z[j] / norm if total > 0 else np.float32(np.nan)


def soft_weights(cross: np.ndarray, c_sq: np.ndarray, scale: float, cutoff: float) -> np.ndarray:
    """``Backend.soft_weights`` in one pass over the cross term: ``(n, S, k)`` → ``(n, k, S)`` float32."""
    cross = np.ascontiguousarray(cross, dtype=np.float32)
    out = np.empty((cross.shape[0], cross.shape[2], cross.shape[1]), dtype=np.float32)
    kernel: Any = _soft_weights_kernel  # a Numba dispatcher: mypy cannot see its signature
    kernel(cross, np.ascontiguousarray(c_sq, dtype=np.float32), np.float32(scale), np.float32(cutoff), out)
    return out


# -- k-means -------------------------------------------------------------------------------------


@njit(cache=True)  # pragma: no cover - jitted
def _minibatch_update_kernel(batch, table, labels, centres, counts):  # type: ignore[no-untyped-def]
    # Sculley's per-centre learning rate 1/count, applied as a batch mean (as scikit-learn does).
    k, dim = centres.shape
    sums = np.zeros((k, dim), dtype=np.float64)
    n_new = np.zeros(k, dtype=np.int64)
    for i in range(batch.shape[0]):
        j = labels[i]
        n_new[j] += 1
        for d in range(dim):
            sums[j, d] += widen(batch[i, d], table)
    for j in range(k):
        if n_new[j] == 0:
            continue
        total = counts[j] + n_new[j]
        for d in range(dim):
            centres[j, d] = (centres[j, d] * counts[j] + sums[j, d]) / total
        counts[j] = total


def minibatch_update(batch: np.ndarray, labels: np.ndarray, centres: np.ndarray, counts: np.ndarray) -> None:
    """In place: centres ``(k, dim)`` float32 and counts ``(k,)`` float64 after a batch ``(b, dim)``
    (float32/float16, any strides) with labels ``(b,)`` in [0, k)."""
    _minibatch_update_kernel(*kernel_input(np.asarray(batch)), labels, centres, counts)


# -- the backend object --------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuBackend:
    """NumPy arrays, Numba kernels, ONNX Runtime's CPU provider, XGBoost on the CPU."""

    device: str = "cpu"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    batch_size: int = config.CPU_BATCH_SIZE
    decode_threads: int = 1  # one thread keeps ahead of the CNN on a CPU

    @property
    def xp(self) -> ModuleType:
        return np

    def asarray(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def to_numpy(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def synchronize(self) -> None:
        """Nothing is queued: the kernels return when done."""

    def release_memory(self) -> None:
        """Nothing is cached."""

    def with_batch_size(self, batch_size: int) -> CpuBackend:
        return replace(self, batch_size=batch_size)

    def gather(self, taps: Sequence[Any], points: Any, tables: Tables, out: Any, accumulate: bool = False) -> None:
        gather(taps, points, tables, out, accumulate)

    def matmul_per_image(self, a: Any, b: Any, out: Any = None) -> Any:
        return _blas.per_image(a, b, out)

    def argmin_rows(self, cross: Any, c_sq: Any, labels: Any) -> Any:
        _argmin_rows_kernel(cross, _NONE, c_sq, labels, _NONE)
        return labels

    def assign(self, x: Any, centres: Any, block_rows: int, with_dist: bool) -> tuple[Any, Any]:
        return assign(x, centres, block_rows, with_dist)

    def residual_sums(self, x: Any, labels: Any, centres: Any) -> Any:
        return residual_sums(x, labels, centres)

    def vlad(self, x: Any, labels: Any, centres: Any, intra: bool, power: bool, taps: Sequence[Any] = (),
             points: Any = None, tables: Tables = ()) -> Any:
        return vlad(x, labels, centres, intra, power, taps, points, tables)

    def soft_weights(self, cross: Any, c_sq: Any, scale: float, cutoff: float) -> Any:
        return soft_weights(cross, c_sq, scale, cutoff)


CPU = CpuBackend()
