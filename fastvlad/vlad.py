"""VLAD: per-centre residual sums of each image's hypercolumns, then the normalisations.

Memory-bound: every point is read once. On the CPU one kernel sorts each image's points by
centre and gives each (image, centre) task one float64 row that stays in L1, normalised before
it is written: no atomics, no (n, k, dim) float64 intermediate. The CUDA kernel keeps one
centre's slice of the accumulator in shared memory per block (``backends/``).

``encode_from_taps`` (what the encoder runs without PCA) fuses the hypercolumn gather into that
kernel on the CPU: each member's hypercolumn is interpolated from the CNN taps straight into its
centre's row, so the (n, S, 1472) hypercolumns are never written (1.7× faster than gather then VLAD).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import hypercolumn
from .backends import Backend, normalise
from .backends.cpu import CPU
from .errors import ParameterError

NORMALISATIONS = ("intra", "power")
__all__ = ["encode", "encode_from_taps", "normalise", "residual_sums"]


def _check(x: Any, labels: Any, centres: Any) -> None:
    if x.ndim != 3 or centres.ndim != 2 or centres.shape[1] != x.shape[2]:
        raise ParameterError(f"x {tuple(x.shape)} must be (n, S, dim) and centres {tuple(centres.shape)} (k, dim)")
    _check_labels(labels, x.shape[:2])


def _check_labels(labels: Any, shape: tuple[int, ...]) -> None:
    if tuple(labels.shape) != tuple(shape) or labels.dtype.kind not in "iu":
        raise ParameterError(f"labels must be integers of shape {tuple(shape)} (n, S); got {labels.dtype} "
                             f"{tuple(labels.shape)}")


def residual_sums(x: Any, labels: Any, centres: Any, backend: Backend = CPU) -> Any:
    """Per-centre residual sums: x ``(n, S, dim)``, labels ``(n, S)`` int32, centres ``(k, dim)`` float32
    → ``(n, k, dim)`` float64 on the CPU, float32 on the GPU."""
    _check(x, labels, centres)
    return backend.residual_sums(x, labels, centres)


def encode(x: Any, labels: Any, centres: Any, intra: bool = True, power: bool = False,
           backend: Backend = CPU) -> Any:
    """VLAD codes: ``(n, S, dim)`` points with their labels ``(n, S)`` → ``(n, k·dim)`` float32."""
    _check(x, labels, centres)
    return backend.vlad(x, labels, centres, intra, power)


def encode_from_taps(taps: Any, points: Any, labels: Any, centres: Any, mode: str = "half_pixel",
                     intra: bool = True, power: bool = False, backend: Backend = CPU, gathered: Any = None,
                     out_hw: tuple[int, int] | None = None) -> Any:
    """``encode(hypercolumn.gather(taps, points, mode), labels, centres)`` without the hypercolumns.

    taps: ``(n, h_l, w_l, C_l)`` float32/float16; points: ``(n, S, 2)`` int32 in the ``out_hw`` pixel
    grid (default: the first tap's); labels: ``(n, S)`` integers; centres: ``(k, sum C_l)`` float32;
    gathered: the first taps' hypercolumns ``(n, S, C_0 + … + C_{m-1})`` when at hand (read instead of
    interpolated). Returns ``(n, k·dim)`` float32. On the CPU one fused kernel builds each point's
    hypercolumn in its centre's accumulator (the same values, summed in the same order, as gathering
    first); the CUDA backend gathers the hypercolumns first.
    """
    out_hw = hypercolumn.points_grid(taps, out_hw)
    hypercolumn.check_points(taps, points, out_hw)
    m, x = _leading_taps(taps, points, gathered, backend)
    _check_labels(labels, points.shape[:2])
    dim = sum(int(t.shape[3]) for t in taps)
    if centres.ndim != 2 or centres.shape[1] != dim:
        raise ParameterError(f"centres {tuple(centres.shape)} must be (k, {dim}): the taps have {dim} channels")
    rest = taps[m:]
    tables = hypercolumn.tap_tables(rest, mode, out_hw) if rest else []
    return backend.vlad(x, labels, centres, intra, power, rest, points, tables)


def _leading_taps(taps: Any, points: Any, gathered: Any, backend: Backend) -> tuple[int, Any]:
    """How many leading taps ``gathered`` holds, and it (``(n, S, 0)`` when None)."""
    n, s = points.shape[:2]
    if gathered is None:
        return 0, backend.xp.zeros((n, s, 0), dtype=np.float32)
    widths = np.cumsum([int(t.shape[3]) for t in taps])
    if gathered.ndim != 3 or tuple(gathered.shape[:2]) != (n, s) or gathered.shape[2] not in widths:
        raise ParameterError(f"gathered has shape {tuple(gathered.shape)}; expected ({n}, {s}, C) with C the "
                             f"channels of the first taps, one of {[int(w) for w in widths]}")
    return int(np.searchsorted(widths, gathered.shape[2])) + 1, gathered
