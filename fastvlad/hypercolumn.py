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

import numpy as np
from numba import njit, prange

from .errors import ParameterError

INTERPOLATION_MODES = ("half_pixel", "asymmetric")


def points_for_density(density: float) -> int:
    """The paper's density d % → 500·d pixels per image."""
    return max(1, int(round(500 * density)))


def image_rng(random_state: int, image: np.ndarray) -> np.random.Generator:
    """A generator seeded by the seed and the image's content, so an image's points do not
    depend on its position in a batch, a fold or a worker's partition."""
    digest = zlib.crc32(np.ascontiguousarray(image).view(np.uint8).ravel())
    return np.random.default_rng([random_state, digest])


def sample_points(rng: np.random.Generator, n_points: int, height: int, width: int) -> np.ndarray:
    """``n_points`` distinct random pixels (all of them if fewer): (S, 2) int32 [row, col]."""
    n = min(n_points, height * width)
    flat = rng.choice(height * width, size=n, replace=False)
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


def tap_tables(tap_hw: Sequence[tuple[int, int]], mode: str) -> list[tuple[AxisTable, AxisTable]]:
    """(row table, column table) of every tap, relative to the first tap's size."""
    out_h, out_w = tap_hw[0]
    return [(axis_table(out_h, h, mode), axis_table(out_w, w, mode)) for h, w in tap_hw]


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


@njit(parallel=True, cache=True)
def _gather_numba_kernel(tap, points, ylo, yhi, wyt, xlo, xhi, wxt, out):  # pragma: no cover - jitted
    n, s_count = points.shape[0], points.shape[1]
    channels = tap.shape[3]
    one = np.float32(1.0)
    for p in prange(n * s_count):
        i = p // s_count
        s = p - i * s_count
        r = points[i, s, 0]
        c = points[i, s, 1]
        y0, y1, wy = ylo[r], yhi[r], wyt[r]
        x0, x1, wx = xlo[c], xhi[c], wxt[c]
        for ch in range(channels):
            top = (one - wx) * np.float32(tap[i, y0, x0, ch]) + wx * np.float32(tap[i, y0, x1, ch])
            bottom = (one - wx) * np.float32(tap[i, y1, x0, ch]) + wx * np.float32(tap[i, y1, x1, ch])
            out[i, s, ch] = (one - wy) * top + wy * bottom


def _gather_numba(tap: np.ndarray, points: np.ndarray, ty: AxisTable, tx: AxisTable, out: np.ndarray) -> None:
    _gather_numba_kernel(tap, points, ty.lo, ty.hi, ty.w, tx.lo, tx.hi, tx.w, out)


def _gather_cupy(tap, points, ty: AxisTable, tx: AxisTable, out) -> None:  # type: ignore[no-untyped-def]
    from . import _cuda

    _cuda.gather_tap(tap, points, ty, tx, out)


_GATHER = {"numpy": _gather_numpy, "numba": _gather_numba, "cuda": _gather_cupy}


def gather(taps: Sequence, points, mode: str = "half_pixel", impl: str = "numba", out=None):  # type: ignore[no-untyped-def]
    """Hypercolumns of every image at its points.

    taps: ``(n, h_l, w_l, C_l)`` channels-last maps, float32 or float16 (NumPy, or CuPy for ``impl="cuda"``).
    points: ``(n, S, 2)`` int32 [row, col] in the first tap's pixel grid.
    Returns ``(n, S, sum C_l)`` float32, the first tap's channels first.
    """
    tables = tap_tables([t.shape[1:3] for t in taps], mode)
    n, s = points.shape[:2]
    dim = sum(t.shape[3] for t in taps)
    if out is None:
        xp = np if impl != "cuda" else __import__("cupy")
        out = xp.empty((n, s, dim), dtype=np.float32)
    kernel = _GATHER[impl]
    offset = 0
    for tap, (ty, tx) in zip(taps, tables):
        kernel(tap, points, ty, tx, out[:, :, offset : offset + tap.shape[3]])
        offset += tap.shape[3]
    return out
