"""VLAD: per-centre residual sums of each image's hypercolumns, then the normalisations.

Memory-bound: every point is read once. The Numba kernel gives each image its own
``(k, dim)`` accumulator (thread-local, no atomics); the CUDA kernel keeps one centre's
slice of the accumulator in shared memory per block.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

NORMALISATIONS = ("intra", "power")


def normalise(v, intra: bool = True, power: bool = False):  # type: ignore[no-untyped-def]
    """Normalise residual sums in place-free fashion: ``(n, k, dim)`` → ``(n, k·dim)`` float32.

    Optional signed square root, then per-centre L2 (a zero centre stays zero), then global L2.
    Written once against the array module of ``v`` (NumPy or CuPy).
    """
    xp = _namespace(v)
    if power:
        v = xp.sign(v) * xp.sqrt(xp.abs(v))
    if intra:
        norms = xp.sqrt((v * v).sum(axis=2, keepdims=True))
        v = v / xp.where(norms > 0, norms, 1)
    flat = v.reshape(v.shape[0], -1)
    norms = xp.sqrt((flat * flat).sum(axis=1, keepdims=True))
    return (flat / xp.where(norms > 0, norms, 1)).astype(np.float32)


def _namespace(a):  # type: ignore[no-untyped-def]
    """NumPy for NumPy arrays, CuPy for CuPy arrays (scikit-learn's get_namespace, simplified)."""
    return np if isinstance(a, np.ndarray) else __import__("cupy")


@njit(parallel=True, cache=True)
def _residual_sums_numba(x, labels, centres, out):  # pragma: no cover - jitted
    n, s_count, dim = x.shape
    k = centres.shape[0]
    for i in prange(n):
        acc = np.zeros((k, dim), dtype=np.float64)
        for s in range(s_count):
            j = labels[i, s]
            for d in range(dim):
                acc[j, d] += np.float64(x[i, s, d]) - centres[j, d]
        for j in range(k):
            for d in range(dim):
                out[i, j, d] = acc[j, d]


def _residual_sums_numpy(x, labels, centres, out) -> None:  # type: ignore[no-untyped-def]
    k = centres.shape[0]
    for i in range(x.shape[0]):
        onehot = np.zeros((k, x.shape[1]))
        onehot[labels[i], np.arange(x.shape[1])] = 1.0
        out[i] = onehot @ x[i].astype(np.float64) - onehot.sum(axis=1)[:, None] * centres


def _residual_sums_cupy(x, labels, centres, out) -> None:  # type: ignore[no-untyped-def]
    from . import _cuda

    _cuda.residual_sums(x, labels, centres, out)


_RESIDUALS = {"numpy": _residual_sums_numpy, "numba": _residual_sums_numba, "cuda": _residual_sums_cupy}


def residual_sums(x, labels, centres, impl: str = "numba"):  # type: ignore[no-untyped-def]
    """Per-centre residual sums: x ``(n, S, dim)``, labels ``(n, S)`` int32, centres ``(k, dim)`` float32
    → ``(n, k, dim)`` float64 on the CPU, float32 on the GPU."""
    n, _, dim = x.shape
    xp = _namespace(x)
    dtype = np.float32 if impl == "cuda" else np.float64
    out = xp.empty((n, centres.shape[0], dim), dtype=dtype)
    _RESIDUALS[impl](x, labels, centres, out)
    return out


def encode(x, labels, centres, intra: bool = True, power: bool = False, impl: str = "numba"):  # type: ignore[no-untyped-def]
    """VLAD codes: ``(n, S, dim)`` points with their labels → ``(n, k·dim)`` float32."""
    return normalise(residual_sums(x, labels, centres, impl), intra=intra, power=power)
