"""PCA of hypercolumns, applied to each tap BEFORE bilinear interpolation where that is cheaper.

A hypercolumn is the concatenation of the taps' channels, so its projection ``(x − mean) @ W``
is a sum over taps of ``x_l @ W_l`` (``W_l``: the rows of ``W`` for tap l's channels), minus
``mean @ W``. Bilinear interpolation is linear and its weights sum to one, so for every tap
``interp(tap) @ W_l == interp(tap @ W_l)``: the tap can be projected at its own resolution
first (one GEMM over ``h_l·w_l`` pixels) and the ``p``-channel map interpolated at the points,
or gathered at the ``S`` points first and projected there. Both are exact up to float32
rounding; ``gather`` picks, per tap, the order that costs fewer operations — for VGG16 at
224² with 5,000 points, gather-first for block1/2 and project-first for block3/4/5.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import config, hypercolumn
from .backends import Backend, single_threaded_blas
from .backends.cpu import CPU
from .errors import ParameterError

log = logging.getLogger("fastvlad")

ORDERS = ("auto", "project_first", "gather_first")


@dataclass(frozen=True)
class Projection:
    """An affine map ``x @ weight + bias`` from hypercolumns ``(…, dim)`` to ``(…, p)``.

    weight: ``(dim, p)`` float32, principal axes as columns (divided by their standard
    deviations when whitened); bias: ``(p,)`` float32, ``−mean @ weight``. Arrays are NumPy,
    or CuPy after ``to(cupy.asarray)``.
    """

    weight: np.ndarray
    bias: np.ndarray
    explained_variance_ratio: float = float("nan")

    def __post_init__(self) -> None:
        # Host arrays are stored C-contiguous float32, whatever layout they came in: BLAS may round
        # a GEMM differently for another layout of the same values (OpenBLAS with AVX-512 does for
        # the transposed weight ``fit`` gets from LAPACK), and a code that differs by one ulp between
        # a fitted model and its loaded copy can flip a boosted-tree split. (CuPy arrays pass as given.)
        for name in ("weight", "bias"):
            a = getattr(self, name)
            if isinstance(a, np.ndarray) and not (a.flags.c_contiguous and a.dtype == np.float32):
                object.__setattr__(self, name, np.ascontiguousarray(a, dtype=np.float32))

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def components(self) -> int:
        return int(self.weight.shape[1])

    def apply(self, x: Any) -> Any:
        """``(…, dim)`` float32 → ``(…, p)`` float32, a NumPy or CuPy array as the projection's."""
        return (x.reshape(-1, self.dim) @ self.weight + self.bias).reshape(*x.shape[:-1], self.components)

    def to(self, asarray: Callable) -> Projection:  # type: ignore[type-arg]
        """The same projection with its arrays moved by ``asarray`` (e.g. to the GPU)."""
        return Projection(asarray(self.weight), asarray(self.bias), self.explained_variance_ratio)

    def to_array(self) -> np.ndarray:
        """One ``(dim + 1, p)`` float32 array for the model file: the weight, then the bias as the last row."""
        return np.vstack([self.weight, self.bias[None, :]]).astype(np.float32)

    @classmethod
    def from_array(cls, a: np.ndarray, explained_variance_ratio: float = float("nan")) -> Projection:
        """The projection of ``to_array``'s ``(dim + 1, p)``: the weights, then the bias row."""
        if a.ndim != 2 or a.shape[0] < 2:
            raise ParameterError(f"a projection array must be (dim + 1, p); got shape {a.shape}")
        a = np.asarray(a, dtype=np.float32)
        return cls(np.ascontiguousarray(a[:-1]), np.ascontiguousarray(a[-1]), explained_variance_ratio)


def fit(sample: np.ndarray, components: int, whiten: bool = False, random_state: int = 0,
        max_points: int | None = None) -> Projection:
    """PCA of a hypercolumn sample ``(m, dim)`` float32 → the top ``components`` axes.

    Exact: the ``(dim, dim)`` covariance of at most ``max_points`` rows (a seeded subset;
    ``config.PCA_MAX_POINTS`` when None, read at the call) and
    its eigendecomposition. Each axis's sign is fixed so its largest entry is positive, so the
    result depends only on the sample and the seed.
    """
    from scipy.linalg import eigh

    m, dim = sample.shape
    if not 1 <= components <= dim:
        raise ParameterError(f"pca={components}: must be between 1 and the hypercolumn size {dim} (or None for no PCA)")
    if m < 2:
        raise ParameterError(f"PCA needs at least 2 sampled points, got {m}; raise density or codebook_images")
    max_points = max_points or config.PCA_MAX_POINTS
    if m > max_points:
        rows = np.sort(np.random.default_rng(random_state).choice(m, size=max_points, replace=False))
        sample = sample[rows]
    mean = sample.mean(axis=0, dtype=np.float64)
    centred = sample - mean.astype(np.float32)
    cov = (centred.T @ centred).astype(np.float64) / (len(sample) - 1)
    with single_threaded_blas():  # LAPACK's eigh on more threads differs in the last bits (subnormal
        # entries of dead channels), and the model file with it: one machine, one seed, one file
        values, vectors = eigh(cov, subset_by_index=[dim - components, dim - 1])
    values, vectors = np.maximum(values[::-1], 0.0), vectors[:, ::-1]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(components)])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    if whiten:
        # Floor tiny eigenvalues so near-constant directions are not blown up.
        vectors = vectors / np.sqrt(np.maximum(values, 1e-6 * max(values[0], 1e-30)))
    weight = vectors.astype(np.float32)
    total = float(np.trace(cov))
    ratio = float(values.sum() / total) if total > 0 else 1.0
    log.debug("hypercolumn PCA: %d of %d dims keep %.1f %% of the variance", components, dim, 100 * ratio)
    return Projection(weight, (-mean @ vectors).astype(np.float32), ratio)


def _project_first(hw: int, n_points: int, channels: int, components: int) -> bool:
    """Whether projecting the tap map before interpolating costs fewer operations.

    project-first: a GEMM over every pixel (hw·C·p) + gathering p channels (S·p·g);
    gather-first: gathering C channels (S·C·g) + a GEMM over the points (S·C·p). A gathered
    value reads four scattered neighbours, so it is weighted as ``g`` multiply-adds.
    """
    g = config.GATHER_COST
    return hw * channels * components + n_points * components * g < n_points * channels * (g + components)


def points_side(taps: Sequence, n_points: int, components: int, order: str = "auto") -> int:  # type: ignore[type-arg]
    """How many leading taps ``gather`` evaluates at the points (gathered, then projected); the
    rest are projected on their own grid first. A pyramid's fine taps lead, so the point side is
    the prefix of taps for which gathering first is cheaper (block1 and block2 of VGG16 at 224²
    with 5,000 points and 64 or 100 components). ``order``: ``"auto"``, or ``"project_first"``
    (no tap) / ``"gather_first"`` (every tap), for tests."""
    if order not in ORDERS:
        raise ParameterError(f"order={order!r} is unknown; use one of {ORDERS}")
    if order != "auto":
        return len(taps) if order == "gather_first" else 0
    m = 0
    while m < len(taps) and not _project_first(int(taps[m].shape[1] * taps[m].shape[2]), n_points,
                                                int(taps[m].shape[3]), components):
        m += 1
    return m


def gather(taps: Sequence[Any], points: Any, projection: Projection, mode: str = "half_pixel",
           backend: Backend = CPU, order: str = "auto", out: Any = None, gathered: Any = None,
           out_hw: tuple[int, int] | None = None) -> Any:
    """Projected hypercolumns of every image at its points, without building the full hypercolumns.

    taps: ``(n, h_l, w_l, C_l)`` channels-last maps on ``backend`` (NumPy or CuPy arrays), whose
    channels together are ``projection.dim``; points: ``(n, S, 2)`` int32 [row, col] in the ``out_hw``
    pixel grid (default: the first tap's). The first ``points_side(taps, S, p, order)`` taps are
    gathered at the points and projected there, the others projected on their grid and then
    interpolated; ``gathered``: those first taps' hypercolumns ``(n, S, C_0 + …)`` when the caller has
    them already. Returns ``(n, S, p)`` float32, equal to ``projection.apply(hypercolumn.gather(taps,
    points, mode))`` up to float32 rounding. One GEMM per image (``Backend.matmul_per_image``): no value
    depends on the batch.
    """
    channels = [int(t.shape[3]) for t in taps]
    if sum(channels) != projection.dim:
        raise ParameterError(f"the taps have {sum(channels)} channels but the projection expects {projection.dim}; "
                             "use the backbone and taps the model was trained with")
    n, s = points.shape[:2]
    p = projection.components
    out_hw = hypercolumn.points_grid(taps, out_hw)
    m = points_side(taps, s, p, order)
    split = sum(channels[:m])  # weight rows of the point-side taps
    if gathered is None and m:
        gathered = hypercolumn.gather(taps[:m], points, mode, backend, out_hw=out_hw)
    if gathered is not None and tuple(gathered.shape) != (n, s, split):
        raise ParameterError(f"gathered has shape {tuple(gathered.shape)}, expected {(n, s, split)}: the first {m} "
                             "taps at the points (see projection.points_side)")
    if out is None:
        out = backend.xp.empty((n, s, p), dtype=np.float32)
    if m:
        backend.matmul_per_image(gathered, projection.weight[:split], out=out)
        if projection.bias.any():  # (the assignment's projection onto the centres has none)
            out += projection.bias
    else:
        out[...] = projection.bias
    maps, offset = [], split
    for tap in taps[m:]:
        c = int(tap.shape[3])
        flat = tap.reshape(n, -1, c).astype(np.float32, copy=False)
        maps.append(backend.matmul_per_image(flat, projection.weight[offset : offset + c]).reshape(*tap.shape[:3], p))
        offset += c
    if maps:
        hypercolumn.gather_add(maps, points, out, out_hw, mode, backend)
    return out
