"""Hypercolumns at sampled pixels: bilinear interpolation of every tap AT THE POINTS only.

The paper upsampled every tap to the full input size and then picked pixels; the values
at the picked pixels are the same when the interpolation is evaluated there directly,
and the (H, W, 1472) map is never built. Taps arrive channels-last, ``(n, h, w, C)``,
so each point reads C contiguous floats from four neighbours.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .backends import AxisTable, Backend
from .backends.cpu import CPU
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


def key_rng(random_state: int, key: tuple[int, ...]) -> np.random.Generator:
    """A generator seeded by the seed and a key of integers that names the image (an augmented
    copy: ``images.augmented``), whatever its pixels."""
    return np.random.default_rng([random_state, *key])


def size_rng(random_state: int, height: int, width: int) -> np.random.Generator:
    """A generator seeded by the seed and an image's size only: every image of one size gets the same
    points, so a change of an image's gray levels leaves them where they were."""
    return np.random.default_rng([random_state, 0x504F494E, height, width])  # 0x504F494E: "POIN"


def sample_points(rng: np.random.Generator, n_points: int, height: int, width: int) -> np.ndarray:
    """``n_points`` distinct random pixels (all of them if fewer): (S, 2) int32 [row, col]."""
    n = min(n_points, height * width)
    # Sorted (row-major), so that the kernels walk the taps front to back; the draw is unchanged.
    flat = np.sort(rng.choice(height * width, size=n, replace=False))
    return np.stack([flat // width, flat % width], axis=1).astype(np.int32)


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


def points_grid(taps: Sequence[Any], out_hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (H, W) pixel grid the points lie in: ``out_hw``, or by default the first tap's."""
    return out_hw or (int(taps[0].shape[1]), int(taps[0].shape[2]))


def tap_tables(taps: Sequence[Any], mode: str, out_hw: tuple[int, int] | None = None
               ) -> list[tuple[AxisTable, AxisTable]]:
    """(row table, column table) of every tap ``(n, h, w, C)``, for points in the ``out_hw`` grid
    (default: the first tap's)."""
    out_h, out_w = points_grid(taps, out_hw)
    return [(axis_table(out_h, int(t.shape[1]), mode), axis_table(out_w, int(t.shape[2]), mode)) for t in taps]


def check_points(taps: Sequence[Any], points: Any, out_hw: tuple[int, int] | None = None) -> None:
    """Taps must be ``(n, h, w, C)`` and points ``(n, S, 2)`` [row, col] inside the ``out_hw`` grid
    (default: the first tap's), for the same n images: the kernels do not bounds-check."""
    if points.ndim != 3 or points.shape[2] != 2:
        raise ParameterError(f"points must be (n, S, 2) [row, col]; got shape {tuple(points.shape)}")
    if any(t.ndim != 4 or t.shape[0] != points.shape[0] for t in taps):
        raise ParameterError(f"taps must be (n, h, w, C) with n = {points.shape[0]} images, like the points; "
                             f"got {[tuple(t.shape) for t in taps]}")
    out_hw = points_grid(taps, out_hw)
    if points.size and (int(points.min()) < 0 or int(points[..., 0].max()) >= out_hw[0]
                        or int(points[..., 1].max()) >= out_hw[1]):
        raise ParameterError(f"points lie outside the {out_hw[0]}×{out_hw[1]} pixel grid they were drawn on")


def gather(taps: Sequence[Any], points: Any, mode: str = "half_pixel", backend: Backend = CPU, out: Any = None,
           out_hw: tuple[int, int] | None = None) -> Any:
    """Hypercolumns of every image at its points.

    taps: ``(n, h_l, w_l, C_l)`` channels-last maps, float32 or float16, any strides, on ``backend``;
    contiguous taps of one dtype avoid a copy.
    points: ``(n, S, 2)`` int32 [row, col] in the ``out_hw`` pixel grid (default: the first tap's).
    Returns ``(n, S, sum C_l)`` float32, the first tap's channels first (written into ``out`` if given).
    """
    check_points(taps, points, out_hw)
    n, s = points.shape[:2]
    dim = sum(int(t.shape[3]) for t in taps)
    if out is None:
        out = backend.xp.empty((n, s, dim), dtype=np.float32)
    elif tuple(out.shape) != (n, s, dim):
        raise ParameterError(f"out has shape {tuple(out.shape)}, expected {(n, s, dim)}")
    if n * s:
        backend.gather(taps, points, tap_tables(taps, mode, out_hw), out)
    return out


def gather_add(maps: Sequence[Any], points: Any, out: Any, out_hw: tuple[int, int], mode: str = "half_pixel",
               backend: Backend = CPU) -> Any:
    """Add every map's bilinear samples to ``out`` in place: maps ``(n, h_l, w_l, C)`` with the same C,
    points ``(n, S, 2)`` in an ``out_hw`` grid, out ``(n, S, C)`` float32. Returns ``out``."""
    check_points(maps, points, out_hw)
    if points.shape[0] * points.shape[1]:
        backend.gather(maps, points, tap_tables(maps, mode, out_hw), out, accumulate=True)
    return out
