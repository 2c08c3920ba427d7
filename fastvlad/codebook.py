"""K-means codebook: nearest-centre assignment as a blocked GEMM, k-means++ and mini-batch updates.

Distances are ``‖x‖² − 2x·c + ‖c‖²``: the cross term is one BLAS GEMM per block of rows
(NumPy's BLAS on the CPU, cuBLAS through CuPy on the GPU) and the argmin is fused into a
single pass over the block, so the (points × k × dim) broadcast is never formed.
``nearest_from_taps`` (what the encoder uses) gets the same labels with a third of the GEMM
work by computing the coarse taps' share of the cross term on the tap grid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numba import njit, prange

from . import _gemm, config, projection
from ._half import kernel_input, widen
from .errors import ParameterError

log = logging.getLogger("fastvlad")


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


def _argmin_rows_numpy(cross, x_sq, c_sq, labels, dist) -> None:  # type: ignore[no-untyped-def]
    d = c_sq[None, :] - 2.0 * cross
    labels[:] = d.argmin(axis=1)
    if len(dist):
        dist[:] = np.maximum(d[np.arange(len(d)), labels] + x_sq, 0.0)


_NONE = np.zeros(0, dtype=np.float32)  # "no distances" for the argmin kernels
_ARGMIN: dict[str, Callable[..., None]] = {"numpy": _argmin_rows_numpy, "numba": _argmin_rows_kernel}


def _assign_blocks(x, centres, impl: str, block_rows: int, with_dist: bool):  # type: ignore[no-untyped-def]
    if impl == "cuda":
        from . import _cuda

        labels, dist = _cuda.assign(x, centres)
        return labels, dist if with_dist else None
    if impl not in _ARGMIN:
        raise ParameterError(f"impl={impl!r} is unknown; use one of {(*_ARGMIN, 'cuda')}")
    x = np.asarray(x)
    if x.ndim != 2 or np.ndim(centres) != 2 or x.shape[1] != np.shape(centres)[1]:
        raise ParameterError(f"x {x.shape} must be (m, dim) and centres {np.shape(centres)} (k, dim)")
    m = x.shape[0]
    c = np.ascontiguousarray(centres, dtype=np.float32)
    c_sq = np.einsum("ij,ij->i", c, c)
    labels = np.empty(m, dtype=np.int32)
    dist = np.empty(m if with_dist else 0, dtype=np.float32)
    cross = np.empty((min(block_rows, m), len(c)), dtype=np.float32)  # reused: no allocation per block
    argmin = _ARGMIN[impl]
    for start in range(0, m, block_rows):
        # A contiguous float32 block (a view for the usual input) so the GEMM runs at BLAS speed.
        xb = np.ascontiguousarray(x[start : start + block_rows], dtype=np.float32)
        cb = cross[: len(xb)]
        np.matmul(xb, c.T, out=cb)
        # ‖x‖² by einsum: NumPy's SIMD pairwise sum (a jitted float reduction would be serial).
        x_sq = np.einsum("ij,ij->i", xb, xb) if with_dist else _NONE
        argmin(cb, x_sq, c_sq, labels[start : start + len(xb)], dist[start : start + len(xb)])
    return labels, dist if with_dist else None


def assign(x, centres, impl: str = "numba", block_rows: int = config.ASSIGN_BLOCK_ROWS):  # type: ignore[no-untyped-def]
    """Nearest centre of every point, and the squared distance to it.

    x: ``(m, dim)`` float32/float16 points, any strides; centres: ``(k, dim)`` float32.
    Returns labels ``(m,)`` int32 (lowest index on ties) and squared distances ``(m,)`` float32
    (NumPy, or CuPy for ``impl="cuda"``).
    """
    return _assign_blocks(x, centres, impl, block_rows, with_dist=True)


def nearest(x, centres, impl: str = "numba", block_rows: int = config.ASSIGN_BLOCK_ROWS):  # type: ignore[no-untyped-def]
    """The labels of ``assign`` alone (skips the ‖x‖² pass): ``(m,)`` int32."""
    return _assign_blocks(x, centres, impl, block_rows, with_dist=False)[0]


def nearest_from_taps(taps: Sequence[Any], points: Any, centres: Any, mode: str = "half_pixel",
                      impl: str = "numba", gathered: Any = None) -> Any:
    """The labels of ``nearest(hypercolumn.gather(taps, points), centres)``, without the hypercolumns.

    Only the cross term x·c decides the winner, and it is a linear map of the hypercolumn: the
    projection onto the centres, ``x @ centresᵀ``. ``projection.gather`` evaluates it tap by tap
    on whichever side is cheaper (a coarse tap is mapped on its own grid, 196 pixels for block5 at
    224², then interpolated): at 224² with 5,000 points VGG16's GEMM work drops from 1.47 to about
    0.45 GFLOP per image. Equal to ``nearest`` up to float32 rounding (labels differ only on near-ties).

    taps: ``(n, h_l, w_l, C_l)``; points: ``(n, S, 2)`` in the first tap's grid; centres ``(k, sum C_l)``;
    gathered: the point-side taps' hypercolumns when at hand (see ``projection.gather``).
    Returns ``(n·S,)`` int32.
    """
    xp = np if impl != "cuda" else __import__("cupy")
    c = xp.ascontiguousarray(xp.asarray(centres), dtype=xp.float32)
    channels = sum(int(t.shape[3]) for t in taps)
    if channels != c.shape[1]:
        raise ParameterError(f"the taps have {channels} channels but the centres {c.shape[1]}; "
                             "use the backbone and taps the codebook was fitted with")
    onto_centres = projection.Projection(c.T, xp.zeros(len(c), dtype=xp.float32))
    return _nearest_from_cross(projection.gather(taps, points, onto_centres, mode, impl, gathered=gathered), c, impl)


def nearest_per_image(x, centres, impl: str = "numba"):  # type: ignore[no-untyped-def]
    """The labels of ``nearest`` for a batch ``(n, S, dim)``, one GEMM per image (``_gemm.per_image``:
    no label depends on the batch): ``(n·S,)`` int32."""
    xp = np if impl != "cuda" else __import__("cupy")
    c = xp.ascontiguousarray(xp.asarray(centres), dtype=xp.float32)
    if x.ndim != 3 or c.ndim != 2 or x.shape[2] != c.shape[1]:
        raise ParameterError(f"x {tuple(x.shape)} must be (n, S, dim) and centres {tuple(c.shape)} (k, dim)")
    return _nearest_from_cross(_gemm.per_image(x.astype(xp.float32, copy=False), c.T), c, impl)


def _nearest_from_cross(cross, c, impl: str):  # type: ignore[no-untyped-def]
    """argmin_j ‖c_j‖² − 2·cross[…, j] of a cross term ``(n, S, k)``: ``(n·S,)`` int32."""
    cross = cross.reshape(-1, c.shape[0])
    xp = np if impl != "cuda" else __import__("cupy")
    c_sq = (c * c).sum(axis=1)
    labels = xp.empty(len(cross), dtype=xp.int32)
    if impl == "cuda":
        from . import _cuda

        return _cuda.argmin_rows(cross, c_sq, labels)
    _ARGMIN["numpy" if impl == "numpy" else "numba"](cross, _NONE, c_sq, labels, _NONE)
    return labels


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


def _minibatch_update_numba(batch, labels, centres, counts) -> None:  # type: ignore[no-untyped-def]
    """In place: centres ``(k, dim)`` float32 and counts ``(k,)`` float64 after a batch ``(b, dim)``
    (float32/float16, any strides) with labels ``(b,)`` in [0, k)."""
    _minibatch_update_kernel(*kernel_input(np.asarray(batch)), labels, centres, counts)


def _minibatch_update_numpy(batch, labels, centres, counts) -> None:  # type: ignore[no-untyped-def]
    k = centres.shape[0]
    n_new = np.bincount(labels, minlength=k)
    sums = np.zeros(centres.shape, dtype=np.float64)
    np.add.at(sums, labels, batch)
    hit = n_new > 0
    total = counts[hit] + n_new[hit]
    centres[hit] = (centres[hit] * counts[hit, None] + sums[hit]) / total[:, None]
    counts[hit] = total


_UPDATE: dict[str, Callable[..., None]] = {"numpy": _minibatch_update_numpy, "numba": _minibatch_update_numba}


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
    # One batch buffer for the whole fit: a fresh (4096, 1472) array per batch costs its page faults.
    buffer = np.empty((min(batch_size, m), x.shape[1]), dtype=np.float32)
    for _ in range(max_epochs):
        order = rng.permutation(m)
        for start in range(0, m, batch_size):
            rows = order[start : start + batch_size]
            batch = np.take(x, rows, axis=0, out=buffer[: len(rows)], mode="clip")  # "raise" would buffer out
            labels = nearest(batch, centres, impl="numba" if impl == "cuda" else impl)
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
