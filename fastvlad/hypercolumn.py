"""Hypercolumns at sampled pixels: bilinear interpolation of every tap AT THE POINTS only.

The paper upsampled every tap to the full input size and then picked pixels; the values
at the picked pixels are the same when the interpolation is evaluated there directly,
and the (H, W, 1472) map is never built. Taps arrive channels-last, ``(n, h, w, C)``,
so each point reads C contiguous floats from four neighbours.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit, prange

from ._half import kernel_input, widen
from ._prefetch import AHEAD, prefetch_row
from .errors import ParameterError

INTERPOLATION_MODES = ("half_pixel", "asymmetric")


def points_for_density(density: float) -> int:
    """The paper's density d % → 500·d pixels per image."""
    return max(1, int(round(500 * density)))


def image_rng(random_state: int, image: np.ndarray) -> np.random.Generator:
    """A generator seeded by the seed and the image's content, so an image's points do not
    depend on its position in a batch, a fold or a worker's partition."""
    digest = zlib.crc32(np.ascontiguousarray(image).view(np.uint8).data)
    return np.random.default_rng([random_state, digest])


def sample_points(rng: np.random.Generator, n_points: int, height: int, width: int) -> np.ndarray:
    """``n_points`` distinct random pixels (all of them if fewer): (S, 2) int32 [row, col]."""
    n = min(n_points, height * width)
    # Sorted (row-major), so that the kernels walk the taps front to back; the draw is unchanged.
    flat = np.sort(rng.choice(height * width, size=n, replace=False))
    return np.stack([flat // width, flat % width], axis=1).astype(np.int32)


@dataclass(frozen=True)
class AxisTable:
    """Interpolation table of one axis: for every output index, two source indices and a weight."""

    lo: np.ndarray  # (out,) int32
    hi: np.ndarray  # (out,) int32
    w: np.ndarray  # (out,) float32, weight of ``hi``


def axis_table(out_size: int, in_size: int, mode: str) -> AxisTable:
    """Source indices and weights of every output pixel along one axis (see ``reference.source_coords``)."""
    if mode not in INTERPOLATION_MODES:
        raise ParameterError(f"interpolation={mode!r} is unknown; use one of {INTERPOLATION_MODES}")
    scale = in_size / out_size
    dst = np.arange(out_size, dtype=np.float64)
    src = (dst + 0.5) * scale - 0.5 if mode == "half_pixel" else dst * scale
    src = np.clip(src, 0.0, in_size - 1)
    lo = np.floor(src).astype(np.int32)
    hi = np.minimum(lo + 1, in_size - 1).astype(np.int32)
    return AxisTable(lo, hi, (src - lo).astype(np.float32))


def tap_tables(taps: Sequence[Any], mode: str, out_hw: tuple[int, int] | None = None
               ) -> list[tuple[AxisTable, AxisTable]]:
    """(row table, column table) of every tap ``(n, h, w, C)``, for points in the ``out_hw`` grid
    (default: the first tap's)."""
    out_h, out_w = out_hw or (int(taps[0].shape[1]), int(taps[0].shape[2]))
    return [(axis_table(out_h, int(t.shape[1]), mode), axis_table(out_w, int(t.shape[2]), mode)) for t in taps]


def _gather_numpy(tap: np.ndarray, points: np.ndarray, ty: AxisTable, tx: AxisTable, out: np.ndarray) -> None:
    """Vectorised NumPy gather of one tap into ``out`` (n, S, C)."""
    rows, cols = points[..., 0], points[..., 1]
    img = np.arange(tap.shape[0])[:, None]
    wy = ty.w[rows][..., None]
    wx = tx.w[cols][..., None]
    y0, y1, x0, x1 = ty.lo[rows], ty.hi[rows], tx.lo[cols], tx.hi[cols]
    t = tap.astype(np.float32, copy=False)
    one = np.float32(1)
    top = (one - wx) * t[img, y0, x0] + wx * t[img, y0, x1]
    bottom = (one - wx) * t[img, y1, x0] + wx * t[img, y1, x1]
    out[...] = (one - wy) * top + wy * bottom


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
def prefetch_neighbours(taps, n_taps, points, i, s, ylo, yhi, wyt, xlo, xhi, wxt):  # type: ignore[no-untyped-def]
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
            prefetch_neighbours(taps, offsets.shape[0] - 1, points, i, order[i, q + AHEAD], ylo, yhi, wyt, xlo, xhi,
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


def numba_tap_args(taps: Sequence[np.ndarray], points: np.ndarray,
                   tables: Sequence[tuple[AxisTable, AxisTable]]) -> tuple[Any, ...]:
    """What the Numba kernels that interpolate taps take (``_gather_kernel``, ``vlad``'s fused
    kernel): the taps as one tuple of contiguous arrays of one kernel dtype (``padded_taps``), the
    points as int32, the float16 table, the six stacked axis tables ``(n_taps, out)`` and the
    channel offsets ``(n_taps + 1,)``, whose length is how many taps the kernels read."""
    if not all(t.dtype == np.float16 for t in taps):  # one kernel dtype for all taps
        taps = [t.astype(np.float32, copy=False) for t in taps]
    inputs = [kernel_input(np.ascontiguousarray(t)) for t in taps]
    stack = [np.stack([getattr(tables[t][axis], f) for t in range(len(taps))]) for axis in (0, 1)
             for f in ("lo", "hi", "w")]
    offsets = np.concatenate([[0], np.cumsum([t.shape[3] for t in taps])]).astype(np.int64)
    return (padded_taps([a for a, _ in inputs]), np.ascontiguousarray(points, dtype=np.int32), inputs[0][1], *stack,
            offsets)


def _gather_numba(taps: Sequence[np.ndarray], points: np.ndarray, tables: Sequence[tuple[AxisTable, AxisTable]],
                  out: np.ndarray, accumulate: bool = False) -> None:
    """All taps at once into ``out`` (n, S, sum C) float32 — or, with ``accumulate``, their sum added
    to ``out`` (n, S, C) (all taps then have C channels); any layout and float dtype in."""
    taps_in, points_in, table, *stack, offsets = numba_tap_args(taps, points, tables)
    dense = out if out.flags.c_contiguous and out.dtype == np.float32 else np.empty(out.shape, np.float32)
    if accumulate and dense is not out:
        dense[...] = out
    kernel: Any = _gather_kernel  # a Numba dispatcher: mypy cannot see its signature
    kernel(taps_in, points_in, *stack, offsets, table, dense, accumulate)
    if dense is not out:
        out[...] = dense


def _gather_cupy(taps: Sequence[Any], points: Any, tables: Sequence[tuple[AxisTable, AxisTable]], out: Any) -> None:
    from . import _cuda

    offset = 0
    for tap, (ty, tx) in zip(taps, tables):
        _cuda.gather_tap(tap, points, ty, tx, out[:, :, offset : offset + tap.shape[3]])
        offset += tap.shape[3]


def _gather_numpy_taps(taps: Sequence[Any], points: Any, tables: Sequence[tuple[AxisTable, AxisTable]],
                      out: Any) -> None:
    offset = 0
    for tap, (ty, tx) in zip(taps, tables):
        _gather_numpy(tap, points, ty, tx, out[:, :, offset : offset + tap.shape[3]])
        offset += tap.shape[3]


_GATHER = {"numpy": _gather_numpy_taps, "numba": _gather_numba, "cuda": _gather_cupy}


def check_points(taps: Sequence[Any], points: Any, out_hw: tuple[int, int] | None = None) -> None:
    """Taps must be ``(n, h, w, C)`` and points ``(n, S, 2)`` [row, col] inside the ``out_hw`` grid
    (default: the first tap's), for the same n images: the kernels do not bounds-check."""
    if points.ndim != 3 or points.shape[2] != 2:
        raise ParameterError(f"points must be (n, S, 2) [row, col]; got shape {tuple(points.shape)}")
    if any(t.ndim != 4 or t.shape[0] != points.shape[0] for t in taps):
        raise ParameterError(f"taps must be (n, h, w, C) with n = {points.shape[0]} images, like the points; "
                             f"got {[tuple(t.shape) for t in taps]}")
    out_hw = out_hw or (int(taps[0].shape[1]), int(taps[0].shape[2]))
    if points.size and (int(points.min()) < 0 or int(points[..., 0].max()) >= out_hw[0]
                        or int(points[..., 1].max()) >= out_hw[1]):
        raise ParameterError(f"points lie outside the {out_hw[0]}×{out_hw[1]} pixel grid of the first tap")


def _gather_into(taps: Sequence[Any], points: Any, tables: Sequence[tuple[AxisTable, AxisTable]], impl: str,
                 out: Any) -> Any:
    """Validate, allocate ``out`` when missing and run the ``impl`` gather."""
    if impl not in _GATHER:
        raise ParameterError(f"impl={impl!r} is unknown; use one of {tuple(_GATHER)}")
    n, s = points.shape[:2]
    dim = sum(int(t.shape[3]) for t in taps)
    if out is None:
        xp = np if impl != "cuda" else __import__("cupy")
        out = xp.empty((n, s, dim), dtype=np.float32)
    elif tuple(out.shape) != (n, s, dim):
        raise ParameterError(f"out has shape {tuple(out.shape)}, expected {(n, s, dim)}")
    if n * s:
        _GATHER[impl](taps, points, tables, out)
    return out


def gather(taps: Sequence[Any], points: Any, mode: str = "half_pixel", impl: str = "numba", out: Any = None,
           out_hw: tuple[int, int] | None = None) -> Any:
    """Hypercolumns of every image at its points.

    taps: ``(n, h_l, w_l, C_l)`` channels-last maps, float32 or float16, any strides (NumPy, or
    CuPy for ``impl="cuda"``); contiguous taps of one dtype avoid a copy.
    points: ``(n, S, 2)`` int32 [row, col] in the ``out_hw`` pixel grid (default: the first tap's).
    Returns ``(n, S, sum C_l)`` float32, the first tap's channels first (written into ``out`` if given).
    """
    check_points(taps, points, out_hw)
    return _gather_into(taps, points, tap_tables(taps, mode, out_hw), impl, out)


def gather_add(maps: Sequence[Any], points: Any, out: Any, out_hw: tuple[int, int], mode: str = "half_pixel",
               impl: str = "numba") -> Any:
    """Add every map's bilinear samples to ``out`` in place: maps ``(n, h_l, w_l, C)`` with the same C,
    points ``(n, S, 2)`` in an ``out_hw`` grid, out ``(n, S, C)`` float32. Returns ``out``."""
    check_points(maps, points, out_hw)
    tables = tap_tables(maps, mode, out_hw)
    if impl == "numba":
        _gather_numba(maps, points, tables, out, accumulate=True)
        return out
    for m, table in zip(maps, tables):
        out += _gather_into([m], points, [table], impl, None)
    return out
