"""VLAD kernels against the per-centre loop of the notebook."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastvlad import codebook, reference, vlad

IMPLS = ["numpy", "numba"]


def _case(rng: np.random.Generator, n: int, s: int, k: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, s, dim), dtype=np.float32)
    c = rng.standard_normal((k, dim), dtype=np.float32)
    labels = np.stack([codebook.assign(xi, c)[0] for xi in x])
    return x, labels, c


def _reference(x: np.ndarray, labels: np.ndarray, c: np.ndarray, **kw: bool) -> np.ndarray:
    return np.stack([reference.vlad(x[i], c, labels=labels[i], **kw) for i in range(len(x))])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("intra,power", [(True, False), (False, False), (True, True), (False, True)])
def test_encode_equals_per_centre_loop(impl: str, intra: bool, power: bool) -> None:
    x, labels, c = _case(np.random.default_rng(0), 3, 257, 11, 19)
    got = vlad.encode(x, labels, c, intra=intra, power=power, impl=impl)
    assert got.shape == (3, 11 * 19) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(x, labels, c, intra=intra, power=power), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_centres_and_single_point(impl: str) -> None:
    c = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    x = np.random.default_rng(2).standard_normal((1, 1, 5)).astype(np.float32)
    labels = np.array([[2]], dtype=np.int32)
    got = vlad.encode(x, labels, c, impl=impl).reshape(4, 5)
    assert np.all(got[[0, 1, 3]] == 0)
    np.testing.assert_allclose(got[2], (x[0, 0] - c[2]) / np.linalg.norm(x[0, 0] - c[2]), rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_point_on_its_centre_gives_zero_code(impl: str) -> None:
    c = np.eye(3, dtype=np.float32)
    x = c[None, [0, 1, 2]]
    got = vlad.encode(x, np.array([[0, 1, 2]], np.int32), c, impl=impl)
    assert np.all(got == 0) and np.all(np.isfinite(got))


def test_numba_accepts_strided_input() -> None:
    x, labels, c = _case(np.random.default_rng(3), 2, 40, 3, 8)
    wide = np.zeros((2, 40, 16), np.float32)
    wide[:, :, ::2] = x
    np.testing.assert_allclose(vlad.encode(wide[:, :, ::2], labels, c), _reference(x, labels, c), rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3), s=st.integers(1, 80), k=st.integers(1, 9), dim=st.integers(1, 17),
       half=st.booleans(), intra=st.booleans(), power=st.booleans(), impl=st.sampled_from(IMPLS))
def test_encode_property(n: int, s: int, k: int, dim: int, half: bool, intra: bool, power: bool, impl: str) -> None:
    x, labels, c = _case(np.random.default_rng(s * 31 + k), n, s, k, dim)
    x = x.astype(np.float16) if half else x
    want = _reference(x.astype(np.float32), labels, c, intra=intra, power=power)
    np.testing.assert_allclose(vlad.encode(x, labels, c, intra=intra, power=power, impl=impl), want,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_residual_sums_equal_float64_sums(impl: str) -> None:
    """The raw sums (float64 on the CPU) against a direct float64 computation, half the centres empty."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 300, 21), dtype=np.float32)
    c = rng.standard_normal((8, 21), dtype=np.float32)
    labels = rng.choice([1, 3, 4, 6], size=(2, 300)).astype(np.int32)
    got = vlad.residual_sums(x, labels, c, impl=impl)
    assert got.dtype == np.float64 and got.shape == (2, 8, 21)
    for i in range(2):
        for j in range(8):
            want = (x[i][labels[i] == j].astype(np.float64) - c[j]).sum(0)
            np.testing.assert_allclose(got[i, j], want, rtol=1e-12, atol=1e-12)
    assert not got[:, [0, 2, 5, 7]].any()


def test_numba_float16_equals_float32_widening() -> None:
    x, labels, c = _case(np.random.default_rng(5), 2, 200, 6, 13)
    x16 = x.astype(np.float16)
    np.testing.assert_array_equal(vlad.encode(x16, labels, c, power=True), vlad.encode(x16.astype(np.float32), labels, c,
                                                                                      power=True))


def test_numba_ignores_labels_outside_the_codebook() -> None:
    """Like the CUDA kernel: a label outside [0, k) contributes to no centre (here: −1 and k)."""
    x, labels, c = _case(np.random.default_rng(6), 1, 50, 4, 7)
    marked = labels.copy()
    marked[0, :10] = -1
    marked[0, 10:15] = 4
    want = _reference(x[:, 15:], labels[:, 15:], c)
    np.testing.assert_allclose(vlad.encode(x, marked, c), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_points_gives_zero_code(impl: str) -> None:
    c = np.ones((3, 4), np.float32)
    got = vlad.encode(np.zeros((2, 0, 4), np.float32), np.zeros((2, 0), np.int32), c, impl=impl)
    assert got.shape == (2, 12) and not got.any()
