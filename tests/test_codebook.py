"""Assignment against scikit-learn and the exact reference; k-means quality against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances_argmin

from fastvlad import codebook, reference
from fastvlad.errors import ParameterError

IMPLS = ["numpy", "numba"]


def _check_labels(x: np.ndarray, c: np.ndarray, labels: np.ndarray, expected: np.ndarray) -> None:
    """Identical, except where the two candidates are at equal distance within float32 rounding."""
    d = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1)
    rows = np.arange(len(x))
    gap = np.abs(d[rows, labels] - d[rows, expected])
    scale = (x.astype(np.float64) ** 2).sum(1) + (c.astype(np.float64) ** 2).sum(1).max()
    assert np.all((labels == expected) | (gap <= 1e-5 * scale))


@pytest.mark.parametrize("impl", IMPLS)
def test_assign_matches_sklearn(impl: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3001, 67), dtype=np.float32)
    c = rng.standard_normal((13, 67), dtype=np.float32)
    labels, dist = codebook.assign(x, c, impl=impl, block_rows=512)  # 3001 is not a multiple of 512
    _check_labels(x, c, labels, pairwise_distances_argmin(x, c))
    exact = ((x - c[labels]) ** 2).sum(1)
    np.testing.assert_allclose(dist, exact, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("impl", IMPLS)
def test_assign_edge_cases(impl: str) -> None:
    c = np.array([[0, 0], [1, 1], [0, 0]], dtype=np.float32)  # duplicate centres: lowest index wins
    labels, dist = codebook.assign(np.array([[0.1, 0.0]], np.float32), c, impl=impl)
    assert labels.tolist() == [0] and dist[0] == pytest.approx(0.01, rel=1e-5)
    empty_l, empty_d = codebook.assign(np.zeros((0, 2), np.float32), c, impl=impl)
    assert empty_l.shape == (0,) and empty_d.shape == (0,)
    x16 = np.array([[0.9, 1.1]], dtype=np.float16)
    assert codebook.assign(x16, c, impl=impl)[0].tolist() == [1]
    strided = np.asfortranarray(np.random.default_rng(1).standard_normal((50, 2), dtype=np.float32))[::2]
    np.testing.assert_array_equal(codebook.assign(strided, c, impl=impl)[0], reference.assign(strided, c))


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 300), k=st.integers(2, 20), dim=st.integers(1, 40))
def test_assign_property(m: int, k: int, dim: int) -> None:
    rng = np.random.default_rng(m * 7 + k)
    x = rng.standard_normal((m, dim), dtype=np.float32)
    c = rng.standard_normal((k, dim), dtype=np.float32)
    _check_labels(x, c, codebook.assign(x, c)[0], reference.assign(x, c))


@pytest.mark.parametrize("impl", IMPLS)
def test_minibatch_update_kernels_agree(impl: str) -> None:
    rng = np.random.default_rng(3)
    batch = rng.standard_normal((200, 9), dtype=np.float32)
    labels = rng.integers(0, 5, 200).astype(np.int32)
    labels[labels == 4] = 3  # centre 4 gets no points and must stay put
    centres = rng.standard_normal((5, 9), dtype=np.float32)
    counts = np.array([0, 3, 10, 0, 7], dtype=np.float64)
    expected = centres.copy()
    for j in range(5):
        members = batch[labels == j]
        if len(members):
            expected[j] = (centres[j] * counts[j] + members.sum(0)) / (counts[j] + len(members))
    got_c, got_n = centres.copy(), counts.copy()
    codebook._UPDATE[impl](batch, labels, got_c, got_n)
    np.testing.assert_allclose(got_c, expected, rtol=1e-5, atol=1e-6)
    assert got_n[4] == 7 and np.array_equal(got_c[4], centres[4]) and got_n[0] == (labels == 0).sum()


def test_kmeans_inertia_close_to_sklearn() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 16)) * 5
    x = (centres[rng.integers(0, 20, 6000)] + rng.standard_normal((6000, 16))).astype(np.float32)
    ours, inertia = codebook.fit_kmeans(x, 20, random_state=0)
    sk = KMeans(20, n_init=1, random_state=0).fit(x)
    assert inertia <= 1.10 * sk.inertia_ / len(x)  # within 10 % of full Lloyd k-means
    again, _ = codebook.fit_kmeans(x, 20, random_state=0)
    np.testing.assert_array_equal(ours, again)  # deterministic given the seed


def test_kmeans_rejects_bad_k() -> None:
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(ParameterError, match="k=6"):
        codebook.fit_kmeans(x, 6)
    with pytest.raises(ParameterError, match="k=1"):
        codebook.fit_kmeans(x, 1)


def test_kmeans_with_duplicate_points_fills_every_centre() -> None:
    x = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)
    centres, inertia = codebook.fit_kmeans(x, 3)
    assert inertia == pytest.approx(0, abs=1e-6)
    assert len({tuple(c) for c in centres.round(4)}) == 3
