"""K-means codebook: nearest-centre assignment as a blocked GEMM, k-means++ and mini-batch updates.

Distances are ``‖x‖² − 2x·c + ‖c‖²``: the cross term is one BLAS GEMM per block of rows
(NumPy's BLAS on the CPU, cuBLAS through CuPy on the GPU) and the argmin is fused into a
single pass over the block, so the (points × k × dim) broadcast is never formed.
"""

from __future__ import annotations

import logging

import numpy as np
from numba import njit, prange

from . import config
from .errors import ParameterError

log = logging.getLogger("fastvlad")


@njit(parallel=True, cache=True)
def _argmin_rows_kernel(cross, x_sq, c_sq, labels, dist):  # pragma: no cover - jitted
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
        dist[i] = max(best + x_sq[i], 0.0)


def _argmin_rows_numpy(cross, x_sq, c_sq, labels, dist) -> None:  # type: ignore[no-untyped-def]
    d = c_sq[None, :] - 2.0 * cross
    labels[:] = d.argmin(axis=1)
    dist[:] = np.maximum(d[np.arange(len(d)), labels] + x_sq, 0.0)


_ARGMIN = {"numpy": _argmin_rows_numpy, "numba": _argmin_rows_kernel}


def assign(x, centres, impl: str = "numba", block_rows: int = config.ASSIGN_BLOCK_ROWS):  # type: ignore[no-untyped-def]
    """Nearest centre of every point.

    x: ``(m, dim)`` float32/float16 points; centres: ``(k, dim)`` float32.
    Returns labels ``(m,)`` int32 and squared distances ``(m,)`` float32.
    """
    if impl == "cuda":
        from . import _cuda

        return _cuda.assign(x, centres)
    m = x.shape[0]
    c = np.ascontiguousarray(centres, dtype=np.float32)
    c_sq = np.einsum("ij,ij->i", c, c)
    labels = np.empty(m, dtype=np.int32)
    dist = np.empty(m, dtype=np.float32)
    argmin = _ARGMIN[impl]
    for start in range(0, m, block_rows):
        xb = np.asarray(x[start : start + block_rows], dtype=np.float32)
        x_sq = np.einsum("ij,ij->i", xb, xb)
        argmin(xb @ c.T, x_sq, c_sq, labels[start : start + len(xb)], dist[start : start + len(xb)])
    return labels, dist


def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator, n_local_trials: int | None = None) -> np.ndarray:
    """Greedy k-means++ seeding (as scikit-learn does it): ``(m, dim)`` → ``(k, dim)`` float32."""
    m = x.shape[0]
    trials = n_local_trials or 2 + int(np.log(k))
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    centres[0] = x[rng.integers(m)]
    closest = assign(x, centres[:1])[1].astype(np.float64)
    for j in range(1, k):
        total = closest.sum()
        if total <= 0:  # every point already coincides with a centre
            centres[j:] = x[rng.integers(m, size=k - j)]
            break
        candidates = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
        candidates = np.minimum(candidates, m - 1)
        cand_d = _sq_dist_to(x, x[candidates])  # (trials, m)
        new_closest = np.minimum(closest[None, :], cand_d)
        best = int(new_closest.sum(axis=1).argmin())
        centres[j] = x[candidates[best]]
        closest = new_closest[best]
    return centres


def _sq_dist_to(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances of all points to a few centres: (k, m) float64."""
    d = (x * x).sum(axis=1)[None, :] - 2.0 * (c @ x.T) + (c * c).sum(axis=1)[:, None]
    return np.maximum(d, 0.0).astype(np.float64)


@njit(cache=True)
def _minibatch_update_kernel(batch, labels, centres, counts):  # pragma: no cover - jitted
    # Sculley's per-centre learning rate 1/count, applied as a batch mean (as scikit-learn does).
    k, dim = centres.shape
    sums = np.zeros((k, dim), dtype=np.float64)
    n_new = np.zeros(k, dtype=np.int64)
    for i in range(batch.shape[0]):
        j = labels[i]
        n_new[j] += 1
        for d in range(dim):
            sums[j, d] += batch[i, d]
    for j in range(k):
        if n_new[j] == 0:
            continue
        total = counts[j] + n_new[j]
        for d in range(dim):
            centres[j, d] = (centres[j, d] * counts[j] + sums[j, d]) / total
        counts[j] = total


def _minibatch_update_numpy(batch, labels, centres, counts) -> None:  # type: ignore[no-untyped-def]
    k = centres.shape[0]
    n_new = np.bincount(labels, minlength=k)
    sums = np.zeros(centres.shape, dtype=np.float64)
    np.add.at(sums, labels, batch)
    hit = n_new > 0
    total = counts[hit] + n_new[hit]
    centres[hit] = (centres[hit] * counts[hit, None] + sums[hit]) / total[:, None]
    counts[hit] = total


_UPDATE = {"numpy": _minibatch_update_numpy, "numba": _minibatch_update_kernel}


def fit_kmeans(
    x: np.ndarray,
    k: int,
    random_state: int = 0,
    batch_size: int = 4096,
    max_epochs: int = 20,
    tol: float = 1e-4,
    impl: str = "numba",
) -> tuple[np.ndarray, float]:
    """Mini-batch k-means on a sample of hypercolumns: ``(m, dim)`` float32 → centres ``(k, dim)``, inertia.

    k-means++ seeding, then epochs of shuffled mini-batches with per-centre learning rates;
    stops when the mean squared distance improves by less than ``tol`` (relative). Centres
    that end up empty are re-seeded from the points farthest from their centre.
    """
    m = x.shape[0]
    if not 2 <= k <= m:
        raise ParameterError(f"k={k} must be ≥ 2 and ≤ the number of sampled points ({m}); lower k or raise density")
    rng = np.random.default_rng(random_state)
    x = np.ascontiguousarray(x, dtype=np.float32)
    seed_rows = rng.choice(m, size=min(m, max(20 * k, 10_000)), replace=False)
    centres = kmeans_plusplus(x[seed_rows], k, rng)
    counts = np.zeros(k, dtype=np.float64)
    update = _UPDATE["numba" if impl == "cuda" else impl]
    previous = np.inf
    inertia = np.inf
    for _ in range(max_epochs):
        order = rng.permutation(m)
        for start in range(0, m, batch_size):
            batch = x[order[start : start + batch_size]]
            labels = assign(batch, centres, impl="numba" if impl == "cuda" else impl)[0]
            update(batch, labels, centres, counts)
        labels, dist = assign(x, centres, impl="numba" if impl == "cuda" else impl)
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
