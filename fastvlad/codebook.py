"""K-means codebook: nearest-centre assignment as a blocked GEMM, k-means++ and mini-batch updates.

Distances are ``‖x‖² − 2x·c + ‖c‖²``: the cross term is one BLAS GEMM per block of rows
(NumPy's BLAS on the CPU, cuBLAS through CuPy on the GPU) and the argmin is fused into a
single pass over the block, so the (points × k × dim) broadcast is never formed.
``nearest_from_taps`` (what the encoder uses) gets the same labels with a third of the GEMM
work by computing the coarse taps' share of the cross term on the tap grid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import config, projection
from .backends import Backend, cpu
from .backends.cpu import CPU
from .errors import ParameterError

log = logging.getLogger("fastvlad")


def _assign_blocks(x: Any, centres: Any, backend: Backend, block_rows: int | None, with_dist: bool) -> tuple[Any, Any]:
    if x.ndim != 2 or centres.ndim != 2 or x.shape[1] != centres.shape[1]:
        raise ParameterError(f"x {tuple(x.shape)} must be (m, dim) and centres {tuple(centres.shape)} (k, dim)")
    return backend.assign(x, centres, block_rows or config.ASSIGN_BLOCK_ROWS, with_dist)  # read at call time


def assign(x: Any, centres: Any, backend: Backend = CPU, block_rows: int | None = None) -> tuple[Any, Any]:
    """Nearest centre of every point, and the squared distance to it.

    x: ``(m, dim)`` float32/float16 points, any strides; centres: ``(k, dim)`` float32.
    Returns labels ``(m,)`` int32 (lowest index on ties) and squared distances ``(m,)`` float32
    (on ``backend``).
    """
    return _assign_blocks(x, centres, backend, block_rows, with_dist=True)


def nearest(x: Any, centres: Any, backend: Backend = CPU, block_rows: int | None = None) -> Any:
    """The labels of ``assign`` alone (skips the ‖x‖² pass): ``(m,)`` int32."""
    return _assign_blocks(x, centres, backend, block_rows, with_dist=False)[0]


def nearest_from_taps(taps: Sequence[Any], points: Any, centres: Any, mode: str = "half_pixel",
                      backend: Backend = CPU, gathered: Any = None, out_hw: tuple[int, int] | None = None) -> Any:
    """The labels of ``nearest(hypercolumn.gather(taps, points), centres)``, without the hypercolumns.

    Only the cross term x·c decides the winner, and it is a linear map of the hypercolumn: the
    projection onto the centres, ``x @ centresᵀ``. ``projection.gather`` evaluates it tap by tap
    on whichever side is cheaper (a coarse tap is mapped on its own grid, 196 pixels for block5 at
    224², then interpolated): at 224² with 5,000 points VGG16's GEMM work drops from 1.47 to about
    0.45 GFLOP per image. Equal to ``nearest`` up to float32 rounding (labels differ only on near-ties).

    taps: ``(n, h_l, w_l, C_l)``; points: ``(n, S, 2)`` in the ``out_hw`` grid (default: the first
    tap's); centres ``(k, sum C_l)``;
    gathered: the point-side taps' hypercolumns when at hand (see ``projection.gather``).
    Returns ``(n·S,)`` int32.
    """
    xp = backend.xp
    c = xp.ascontiguousarray(xp.asarray(centres), dtype=xp.float32)
    channels = sum(int(t.shape[3]) for t in taps)
    if channels != c.shape[1]:
        raise ParameterError(f"the taps have {channels} channels but the centres {c.shape[1]}; "
                             "use the backbone and taps the codebook was fitted with")
    onto_centres = projection.Projection(c.T, xp.zeros(len(c), dtype=xp.float32))
    cross = projection.gather(taps, points, onto_centres, mode, backend, gathered=gathered, out_hw=out_hw)
    return nearest_from_cross(cross, c, backend)


def cross_per_image(x: Any, centres: Any, backend: Backend = CPU) -> Any:
    """The cross term x·cᵀ of a batch ``(n, S, dim)`` with the centres ``(k, dim)``, one GEMM per image
    (``Backend.matmul_per_image``: no value depends on the batch): ``(n, S, k)`` float32."""
    xp = backend.xp
    c = xp.ascontiguousarray(xp.asarray(centres), dtype=xp.float32)
    if x.ndim != 3 or c.ndim != 2 or x.shape[2] != c.shape[1]:
        raise ParameterError(f"x {tuple(x.shape)} must be (n, S, dim) and centres {tuple(c.shape)} (k, dim)")
    return backend.matmul_per_image(x.astype(xp.float32, copy=False), c.T)


def nearest_per_image(x: Any, centres: Any, backend: Backend = CPU) -> Any:
    """The labels of ``nearest`` for a batch ``(n, S, dim)`` from ``cross_per_image``: ``(n·S,)`` int32."""
    return nearest_from_cross(cross_per_image(x, centres, backend), centres, backend)


def nearest_from_cross(cross: Any, centres: Any, backend: Backend = CPU) -> Any:
    """argmin_j ‖c_j‖² − 2·cross[…, j] of a cross term ``(…, k)`` with centres ``(k, dim)``: ``(n·S,)``
    int32 (``cross`` is read, not changed)."""
    xp = backend.xp
    c = xp.ascontiguousarray(xp.asarray(centres), dtype=xp.float32)
    cross = cross.reshape(-1, c.shape[0])
    c_sq = (c * c).sum(axis=1)
    return backend.argmin_rows(cross, c_sq, xp.empty(len(cross), dtype=np.int32))


def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator, n_local_trials: int | None = None) -> np.ndarray:
    """Greedy k-means++ seeding (as scikit-learn does it): ``(m, dim)`` → ``(k, dim)`` float32."""
    m = x.shape[0]
    trials = n_local_trials or 2 + int(np.log(k))
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    centres[0] = x[rng.integers(m)]
    closest = assign(x, centres[:1])[1].astype(np.float64)
    x_sq = (x * x).sum(axis=1)  # once: recomputing it for every centre was most of the seeding's time
    for j in range(1, k):
        total = closest.sum()
        if total <= 0:  # every point already coincides with a centre
            centres[j:] = x[rng.integers(m, size=k - j)]
            break
        candidates = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
        candidates = np.minimum(candidates, m - 1)
        cand_d = _sq_dist_to(x, x_sq, x[candidates])  # (trials, m)
        new_closest = np.minimum(closest[None, :], cand_d)
        best = int(new_closest.sum(axis=1).argmin())
        centres[j] = x[candidates[best]]
        closest = new_closest[best]
    return centres


def _sq_dist_to(x: np.ndarray, x_sq: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances of all points ``(m, dim)``, squared norms ``x_sq``, to a few centres: (k, m) float64."""
    d = x_sq[None, :] - 2.0 * (c @ x.T) + (c * c).sum(axis=1)[:, None]
    return np.maximum(d, 0.0).astype(np.float64)


def fit_kmeans(
    x: np.ndarray,
    k: int,
    random_state: int = 0,
    batch_size: int = 4096,
    max_epochs: int = 20,
    tol: float = 1e-4,
) -> tuple[np.ndarray, float]:
    """Mini-batch k-means on a sample of hypercolumns: ``(m, dim)`` float32 → centres ``(k, dim)``, inertia.

    k-means++ seeding, then epochs of shuffled mini-batches with per-centre learning rates;
    stops when the mean squared distance improves by less than ``tol`` (relative). Centres
    that end up empty are re-seeded from the points farthest from their centre. Runs on the host
    (the CPU backend) whatever the encoder's device: the sample is small.
    """
    m = x.shape[0]
    if not 2 <= k <= m:
        raise ParameterError(f"k={k} must be ≥ 2 and ≤ the number of sampled points ({m}); lower k or raise density")
    rng = np.random.default_rng(random_state)
    x = np.ascontiguousarray(x, dtype=np.float32)
    seed_rows = rng.choice(m, size=min(m, max(20 * k, 10_000)), replace=False)
    centres = kmeans_plusplus(x[seed_rows], k, rng)
    counts = np.zeros(k, dtype=np.float64)
    previous = np.inf
    inertia = np.inf
    # One batch buffer for the whole fit: a fresh (4096, 1472) array per batch costs its page faults.
    buffer = np.empty((min(batch_size, m), x.shape[1]), dtype=np.float32)
    for _ in range(max_epochs):
        order = rng.permutation(m)
        for start in range(0, m, batch_size):
            rows = order[start : start + batch_size]
            batch = np.take(x, rows, axis=0, out=buffer[: len(rows)], mode="clip")  # "raise" would buffer out
            labels = nearest(batch, centres)
            cpu.minibatch_update(batch, labels, centres, counts)
        labels, dist = assign(x, centres)
        _reseed_empty(x, labels, dist, centres)
        inertia = float(dist.mean())
        if previous - inertia <= tol * inertia:
            break
        previous = inertia
    return centres, inertia


def _reseed_empty(x: np.ndarray, labels: np.ndarray, dist: np.ndarray, centres: np.ndarray) -> None:
    empty = np.flatnonzero(np.bincount(labels, minlength=len(centres)) == 0)
    if len(empty):
        log.debug("re-seeding %d empty centres", len(empty))
        far = np.argsort(dist)[::-1][: len(empty)]
        centres[empty] = x[far]
