"""VLAD: per-centre residual sums of each image's hypercolumns, then the normalisations.

Memory-bound: every point is read once. On the CPU one kernel sorts each image's points by
centre and gives each (image, centre) task one float64 row that stays in L1, normalised before
it is written: no atomics, no (n, k, dim) float64 intermediate. The CUDA kernel keeps one
centre's slice of the accumulator in shared memory per block (``backends/``).

``encode_from_taps`` (what the encoder runs without PCA) fuses the hypercolumn gather into that
kernel on the CPU: each member's hypercolumn is interpolated from the CNN taps straight into its
centre's row, so the (n, S, 1472) hypercolumns are never written (1.7× faster than gather then VLAD).

``encode_soft`` (the default, ``softness``) weighs every point against every centre: the backend's
``soft_weights`` turns the cross term x·cᵀ into centre-major weights (on the CPU one Numba pass with
each point's row in L1), and one GEMM per image sums the weighted residuals.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import codebook, hypercolumn
from .backends import Backend, normalise
from .backends.cpu import CPU
from .errors import ParameterError

__all__ = ["SOFT_CUTOFF", "SOFT_SCALE_MAX", "encode", "encode_from_taps", "encode_soft", "normalise", "residual_sums",
           "soft_scale", "soft_weights", "spacing"]


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


def spacing(centres: np.ndarray) -> float:
    """The codebook's unit of squared distance for ``soft_weights``: the median over centres ``(k, dim)``
    of the squared distance to the nearest other centre (float64, on the host)."""
    c = np.asarray(centres, dtype=np.float64)
    if c.ndim != 2 or len(c) < 2:
        raise ParameterError(f"centres {tuple(c.shape)} must be (k, dim) with k >= 2")
    sq = (c * c).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (c @ c.T), 0.0)
    np.fill_diagonal(d2, np.inf)
    unit = float(np.median(d2.min(axis=1)))
    return unit if unit > 0 else 1.0  # coincident centres: any unit serves, the weights tie anyway


#: A weight under exp(−SOFT_CUTOFF) (1e-13 of the nearest centre's) is zero. The per-centre L2 would
#: otherwise give a centre that only such weights reach a unit-length block, decided by where float32
#: and float64 (or a CPU and a GPU) underflow; with 5,000 points per image no centre was that far from
#: all of them (40 images of the shared set checked, ACCURACY.md run 68), so the cutoff changed
#: no code there.
SOFT_CUTOFF = 30.0


#: Largest factor on d² − min d²: past it every weight but the nearest centres' is under the cutoff
#: anyway, and an infinite factor would make 0·∞ = NaN of the nearest centre's own term (a codebook
#: whose centres nearly coincide makes ``unit`` tiny).
SOFT_SCALE_MAX = 1e30


def soft_scale(softness: float, unit: float) -> float:
    """The factor on ``d² − min d²`` in the soft weights: ``softness / unit``, at most ``SOFT_SCALE_MAX``."""
    return min(softness / unit, SOFT_SCALE_MAX)


def soft_weights(x: Any, centres: Any, softness: float, unit: float, backend: Backend = CPU,
                 cross: Any = None) -> Any:
    """Each point's weight on each centre, ``exp(−softness·(d²_j − min d²) / unit)`` normalised over
    the centres, zero under ``exp(−SOFT_CUTOFF)``: x ``(n, S, dim)``, centres ``(k, dim)`` →
    ``(n, S, k)`` float32 (rows sum to 1; ``softness`` → ∞ is the nearest centre's one-hot row), a view
    of the backend's centre-major ``(n, k, S)`` array. ``cross``: x·cᵀ ``(n, S, k)`` float32 when at
    hand (``codebook.cross_per_image``), else one GEMM per image computes it."""
    xp = backend.xp
    c = xp.ascontiguousarray(xp.asarray(centres), dtype=xp.float32)
    if cross is None:
        cross = codebook.cross_per_image(x, c, backend)
    return backend.soft_weights(cross, (c * c).sum(axis=1), soft_scale(softness, unit), SOFT_CUTOFF).transpose(0, 2, 1)


def encode_soft(x: Any, centres: Any, softness: float, intra: bool = True, power: bool = False,
                backend: Backend = CPU, unit: float | None = None, cross: Any = None) -> Any:
    """Soft-assignment VLAD: every point's residual to every centre, weighted by ``soft_weights``,
    summed per centre, then ``normalise``: x ``(n, S, dim)`` float32/float16, centres ``(k, dim)`` →
    ``(n, k·dim)`` float32. ``unit``: ``spacing(centres)``, computed here when not given; ``cross``:
    x·cᵀ when at hand (an encoder has both already: the same codes, less work per batch).

    A point near a Voronoi border counts for both centres instead of jumping from one to the other,
    so a small change of the image moves the code a little (ACCURACY.md, runs 68–70). The sums are GEMMs
    (``W_iᵀ x_i − (Σ_s W_i)ᵀ c``), one per image, on whichever device ``backend`` runs."""
    if x.ndim != 3 or centres.ndim != 2 or centres.shape[1] != x.shape[2]:
        raise ParameterError(f"x {tuple(x.shape)} must be (n, S, dim) and centres {tuple(centres.shape)} (k, dim)")
    if not softness > 0:
        raise ParameterError(f"softness={softness!r} must be > 0 (None for hard assignment)")
    if cross is not None and tuple(cross.shape) != (*x.shape[:2], centres.shape[0]):
        raise ParameterError(f"cross {tuple(cross.shape)} must be (n, S, k) = {(*x.shape[:2], centres.shape[0])}")
    xp = backend.xp
    c = xp.ascontiguousarray(xp.asarray(centres), dtype=xp.float32)
    unit = spacing(backend.to_numpy(c)) if unit is None else unit
    wt = soft_weights(x, c, softness, unit, backend, cross).transpose(0, 2, 1)  # (n, k, S), contiguous
    sums = backend.matmul_per_image(wt, x.astype(xp.float32, copy=False)) - wt.sum(axis=2)[:, :, None] * c  # (n, k, dim)
    return normalise(sums, intra, power, xp)


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
