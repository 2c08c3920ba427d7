"""Assignment against scikit-learn and the exact reference; k-means quality against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import pairwise_distances_argmin

from fastvlad import codebook, hypercolumn, projection, reference
from fastvlad.backends import cpu
from fastvlad.errors import ParameterError


def _check_labels(x: np.ndarray, c: np.ndarray, labels: np.ndarray, expected: np.ndarray) -> None:
    """Identical, except where the two candidates are at equal distance within float32 rounding."""
    d = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1)
    rows = np.arange(len(x))
    gap = np.abs(d[rows, labels] - d[rows, expected])
    scale = (x.astype(np.float64) ** 2).sum(1) + (c.astype(np.float64) ** 2).sum(1).max()
    assert np.all((labels == expected) | (gap <= 1e-5 * scale))


def test_assign_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3001, 67), dtype=np.float32)
    c = rng.standard_normal((13, 67), dtype=np.float32)
    labels, dist = codebook.assign(x, c, block_rows=512)  # 3001 is not a multiple of 512
    _check_labels(x, c, labels, pairwise_distances_argmin(x, c))
    exact = ((x - c[labels]) ** 2).sum(1)
    np.testing.assert_allclose(dist, exact, rtol=1e-4, atol=1e-3)


def test_assign_edge_cases() -> None:
    c = np.array([[0, 0], [1, 1], [0, 0]], dtype=np.float32)  # duplicate centres: lowest index wins
    labels, dist = codebook.assign(np.array([[0.1, 0.0]], np.float32), c)
    assert labels.tolist() == [0] and dist[0] == pytest.approx(0.01, rel=1e-5)
    empty_l, empty_d = codebook.assign(np.zeros((0, 2), np.float32), c)
    assert empty_l.shape == (0,) and empty_d.shape == (0,)
    x16 = np.array([[0.9, 1.1]], dtype=np.float16)
    assert codebook.assign(x16, c)[0].tolist() == [1]
    strided = np.asfortranarray(np.random.default_rng(1).standard_normal((50, 2), dtype=np.float32))[::2]
    np.testing.assert_array_equal(codebook.assign(strided, c)[0], reference.assign(strided, c))


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 300), k=st.integers(1, 20), dim=st.integers(1, 40), block=st.integers(1, 128),
       half=st.booleans(), strided=st.booleans())
def test_assign_property(m: int, k: int, dim: int, block: int, half: bool, strided: bool) -> None:
    """Any m (not a multiple of the block), k ≥ 1, float16 and strided input: sklearn's labels."""
    rng = np.random.default_rng(m * 7 + k)
    x = rng.standard_normal((m, 2 * dim if strided else dim), dtype=np.float32)
    x = x[:, ::2] if strided else x
    x = x.astype(np.float16) if half else x
    c = rng.standard_normal((k, dim), dtype=np.float32)
    labels, dist = codebook.assign(x, c, block_rows=block)
    x32 = x.astype(np.float32)
    _check_labels(x32, c, labels, pairwise_distances_argmin(x32, c))
    np.testing.assert_allclose(dist, ((x32 - c[labels]) ** 2).sum(1), rtol=1e-4, atol=1e-4 * (1 + (x32**2).sum(1).max()))
    np.testing.assert_array_equal(codebook.nearest(x, c, block_rows=block), labels)


def test_assign_float16_equals_float32_widening() -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((700, 33)).astype(np.float16)
    c = rng.standard_normal((9, 33), dtype=np.float32)
    for a, b in zip(codebook.assign(x, c, block_rows=256), codebook.assign(x.astype(np.float32), c, block_rows=256)):
        # Same blocks: BLAS may round differently for another block height.
        np.testing.assert_array_equal(a, b)


def _tap_case(rng: np.random.Generator, n: int, hw: tuple[int, int], channels: tuple[int, ...], s: int, k: int):  # type: ignore[no-untyped-def]
    taps, (h, w) = [], hw
    for c in channels:
        taps.append(np.maximum(rng.standard_normal((n, h, w, c), dtype=np.float32), 0))
        h, w = max(h // 2, 1), max(w // 2, 1)
    points = np.stack([hypercolumn.sample_points(rng, s, *hw) for _ in range(n)])
    x = hypercolumn.gather(taps, points)
    centres = x.reshape(-1, x.shape[2])[rng.choice(n * points.shape[1], k, replace=False)]
    return taps, points, x, centres + 0.1 * rng.standard_normal(centres.shape, dtype=np.float32)


def test_nearest_from_taps_matches_sklearn() -> None:
    """A VGG-like pyramid where the coarse taps go the tap-grid way and the fine ones the point way."""
    rng = np.random.default_rng(9)
    taps, points, x, centres = _tap_case(rng, 2, (48, 40), (4, 8, 64, 128, 128), 700, 23)
    assert 0 < projection.points_side(taps, 700, 23) < len(taps)  # both ways are exercised
    labels = codebook.nearest_from_taps(taps, points, centres)
    flat = x.reshape(-1, x.shape[2])
    _check_labels(flat, centres, labels, pairwise_distances_argmin(flat, centres))
    m = projection.points_side(taps, 700, 23)
    gathered = x[:, :, : sum(t.shape[3] for t in taps[:m])]  # the point-side taps' columns, given
    np.testing.assert_array_equal(codebook.nearest_from_taps(taps, points, centres, gathered=gathered),
                                  labels)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 2), h=st.integers(1, 24), w=st.integers(1, 24), s=st.integers(1, 80), k=st.integers(1, 12),
       mode=st.sampled_from(hypercolumn.INTERPOLATION_MODES))
def test_nearest_from_taps_property(n: int, h: int, w: int, s: int, k: int, mode: str) -> None:
    rng = np.random.default_rng(h * 100 + w)
    taps, (hh, ww) = [], (h, w)
    for c in (3, 40, 40):
        taps.append(rng.standard_normal((n, hh, ww, c), dtype=np.float32))
        hh, ww = max(hh // 2, 1), max(ww // 2, 1)
    points = np.stack([hypercolumn.sample_points(rng, s, h, w) for _ in range(n)])
    x = hypercolumn.gather(taps, points, mode).reshape(-1, 83)
    centres = rng.standard_normal((k, 83), dtype=np.float32)
    labels = codebook.nearest_from_taps(taps, points, centres, mode)
    _check_labels(x, centres, labels, pairwise_distances_argmin(x, centres))


def test_nearest_from_taps_rejects_other_centres() -> None:
    rng = np.random.default_rng(10)
    taps, points, _, centres = _tap_case(rng, 1, (8, 8), (3, 4), 10, 2)
    with pytest.raises(ParameterError, match="7 channels but the centres 6"):
        codebook.nearest_from_taps(taps, points, centres[:, :6])


def test_minibatch_update_kernels_agree() -> None:
    rng = np.random.default_rng(3)
    batch = rng.standard_normal((200, 9), dtype=np.float32)
    labels = rng.integers(0, 5, 200).astype(np.int32)
    labels[labels == 4] = 3  # centre 4 gets no points and must stay put
    centres = rng.standard_normal((5, 9), dtype=np.float32)
    counts = np.array([0, 3, 10, 0, 7], dtype=np.float64)
    expected, expected_n = reference.minibatch_update(batch, labels, centres, counts)
    got_c, got_n = centres.copy(), counts.copy()
    cpu.minibatch_update(batch, labels, got_c, got_n)
    np.testing.assert_allclose(got_c, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_n, expected_n)
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


def test_kmeans_inertia_close_to_minibatch_kmeans() -> None:
    """The paper's MiniBatchKMeans on overlapping, ReLU'd clusters (no discrete local optima to be
    lucky or unlucky with): our mini-batch k-means within 5 % of its inertia."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)) * 1.5
    x = np.maximum(centres[rng.integers(0, 40, 6000)] + rng.standard_normal((6000, 32)), 0).astype(np.float32)
    _, inertia = codebook.fit_kmeans(x, 25, random_state=0)
    sk = MiniBatchKMeans(25, n_init=1, random_state=0, batch_size=1024).fit(x)
    assert inertia <= 1.05 * sk.inertia_ / len(x)


def test_minibatch_update_float16_and_strided() -> None:
    rng = np.random.default_rng(11)
    batch = rng.standard_normal((100, 12)).astype(np.float16)
    labels = rng.integers(0, 4, 100).astype(np.int32)
    start = rng.standard_normal((4, 6), dtype=np.float32)
    got_c, got_n = start.copy(), np.zeros(4)
    cpu.minibatch_update(batch[:, ::2], labels, got_c, got_n)
    want_c, want_n = start.copy(), np.zeros(4)
    cpu.minibatch_update(np.ascontiguousarray(batch[:, ::2], dtype=np.float32), labels, want_c, want_n)
    np.testing.assert_allclose(got_c, want_c, rtol=1e-6)
    np.testing.assert_array_equal(got_n, want_n)


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


def test_minibatch_update_sums_in_float64() -> None:
    """4,096 points near 1e4: a float32 sum leaves the centre 15 ulp off the mean; float64, at most 1."""
    rng = np.random.default_rng(0)
    batch = (1e4 + rng.standard_normal((4096, 8))).astype(np.float32)
    centres, counts = np.zeros((2, 8), np.float32), np.zeros(2)
    cpu.minibatch_update(batch, np.zeros(4096, np.int32), centres, counts)
    want = batch.astype(np.float64).mean(axis=0).astype(np.float32)
    assert (np.abs(centres[0] - want) / np.spacing(want)).max() <= 1


def test_kmeans_depends_on_its_seed() -> None:
    """The seed reaches the k-means++ draw (only the golden codebook, which needs VGG16, saw it)."""
    x = np.random.default_rng(4).standard_normal((400, 5)).astype(np.float32)
    a, _ = codebook.fit_kmeans(x, 6, random_state=0)
    b, _ = codebook.fit_kmeans(x, 6, random_state=1)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, codebook.fit_kmeans(x, 6, random_state=0)[0])


def test_an_empty_centre_is_reseeded_at_the_farthest_point() -> None:
    x = np.array([[0, 0], [0.1, 0], [5, 5], [0.2, 0]], np.float32)
    centres = np.array([[0, 0], [100, 100]], np.float32)
    labels, dist = codebook.assign(x, centres)
    codebook._reseed_empty(x, labels, dist, centres)
    np.testing.assert_array_equal(centres[1], x[2])


def test_points_on_their_centres_have_no_negative_distance() -> None:
    """‖x‖² − 2x·c + ‖c‖² cancels to a little below 0 in float32 for a point on its centre: clamped."""
    c = (10 * np.random.default_rng(0).standard_normal((13, 67))).astype(np.float32)
    _, dist = codebook.assign(np.repeat(c, 50, axis=0), c)
    assert (dist >= 0).all() and dist.max() < 1e-2
