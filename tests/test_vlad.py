"""VLAD kernels against the per-centre loop of the notebook."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastvlad import codebook, hypercolumn, reference, vlad
from fastvlad.backends import base
from fastvlad.backends.cpu import CPU
from fastvlad.errors import ParameterError

#: The CPU backend's VLAD, and the vectorised oracle (reference residual sums, then the shared
#: ``normalise``) other tests compare with, checked here too.
IMPLS = ["cpu", "oracle"]


def _encode(impl: str, x: np.ndarray, labels: np.ndarray, c: np.ndarray, intra: bool = True,
            power: bool = False) -> np.ndarray:
    if impl == "cpu":
        return vlad.encode(x, labels, c, intra=intra, power=power)
    return vlad.normalise(reference.residual_sums(x, labels, c), intra=intra, power=power)


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
    got = _encode(impl, x, labels, c, intra=intra, power=power)
    assert got.shape == (3, 11 * 19) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(x, labels, c, intra=intra, power=power), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_centres_and_single_point(impl: str) -> None:
    c = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    x = np.random.default_rng(2).standard_normal((1, 1, 5)).astype(np.float32)
    labels = np.array([[2]], dtype=np.int32)
    got = _encode(impl, x, labels, c).reshape(4, 5)
    assert np.all(got[[0, 1, 3]] == 0)
    np.testing.assert_allclose(got[2], (x[0, 0] - c[2]) / np.linalg.norm(x[0, 0] - c[2]), rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_point_on_its_centre_gives_zero_code(impl: str) -> None:
    c = np.eye(3, dtype=np.float32)
    x = c[None, [0, 1, 2]]
    got = _encode(impl, x, np.array([[0, 1, 2]], np.int32), c)
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
    np.testing.assert_allclose(_encode(impl, x, labels, c, intra=intra, power=power), want,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_residual_sums_equal_float64_sums(impl: str) -> None:
    """The raw sums (float64 on the CPU) against a direct float64 computation, half the centres empty."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 300, 21), dtype=np.float32)
    c = rng.standard_normal((8, 21), dtype=np.float32)
    labels = rng.choice([1, 3, 4, 6], size=(2, 300)).astype(np.int32)
    got = vlad.residual_sums(x, labels, c) if impl == "cpu" else reference.residual_sums(x, labels, c)
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
    got = _encode(impl, np.zeros((2, 0, 4), np.float32), np.zeros((2, 0), np.int32), c)
    assert got.shape == (2, 12) and not got.any()


# -- encode_from_taps: the fused gather + VLAD kernel -------------------------------------------------
def _tap_case(rng: np.random.Generator, n: int, hw: tuple[int, int], channels: tuple[int, ...], s: int, k: int,
              dtype: type = np.float32) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Taps as ONNX Runtime hands them over (NCHW viewed channels-last: not contiguous), halving in
    size, with points and centres."""
    taps, (h, w) = [], hw
    for ch in channels:
        taps.append(rng.standard_normal((n, ch, h, w)).astype(dtype).transpose(0, 2, 3, 1))
        h, w = max(h // 2, 1), max(w // 2, 1)
    points = np.stack([hypercolumn.sample_points(rng, s, *hw) for _ in range(n)])
    return taps, points, rng.standard_normal((k, sum(channels)), dtype=np.float32)


def _gather_first(taps, points, labels, c, mode="half_pixel", **kw):  # type: ignore[no-untyped-def]
    """The reference: the notebook's full upsampled maps at the points, then its per-centre loop."""
    x = np.stack([reference.sample_hypercolumns([t[i].astype(np.float32) for t in taps], points[i], mode)
                  for i in range(len(points))])
    return _reference(x, labels, c, **kw)


@pytest.mark.parametrize("mode", hypercolumn.INTERPOLATION_MODES)
@pytest.mark.parametrize("intra,power", [(True, False), (False, True)])
def test_encode_from_taps_equals_gather_then_encode(mode: str, intra: bool, power: bool) -> None:
    """Bit-identical to gathering first (same float32 values, same float64 sums), and to the reference."""
    rng = np.random.default_rng(11)
    taps, points, c = _tap_case(rng, 3, (30, 37), (5, 8, 16, 3), 400, 7)
    labels = rng.integers(0, 7, size=(3, 400)).astype(np.int32)
    got = vlad.encode_from_taps(taps, points, labels, c, mode, intra, power)
    assert got.shape == (3, 7 * 32) and got.dtype == np.float32
    np.testing.assert_array_equal(got, vlad.encode(hypercolumn.gather(taps, points, mode), labels, c, intra, power))
    np.testing.assert_allclose(got, _gather_first(taps, points, labels, c, mode, intra=intra, power=power),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m", [0, 1, 2, 4])
def test_encode_from_taps_reads_the_gathered_leading_taps(m: int) -> None:
    """Leading taps given as hypercolumns (the encoder's block1/2) give the same codes, none to all."""
    rng = np.random.default_rng(15)
    taps, points, c = _tap_case(rng, 2, (21, 26), (5, 8, 16, 3), 150, 6)
    labels = rng.integers(0, 6, size=(2, 150)).astype(np.int32)
    gathered = hypercolumn.gather(taps[:m], points, out_hw=(21, 26)) if m else None
    got = vlad.encode_from_taps(taps, points, labels, c, gathered=gathered)
    np.testing.assert_array_equal(got, vlad.encode_from_taps(taps, points, labels, c))


def test_encode_from_taps_empty_centres_and_single_point() -> None:
    rng = np.random.default_rng(12)
    taps, points, c = _tap_case(rng, 2, (9, 9), (4, 6), 1, 5)
    labels = np.array([[3], [0]], dtype=np.int32)
    got = vlad.encode_from_taps(taps, points, labels, c).reshape(2, 5, 10)
    assert not got[0, [0, 1, 2, 4]].any() and not got[1, 1:].any()
    x = hypercolumn.gather(taps, points)
    np.testing.assert_allclose(got[0, 3], (x[0, 0] - c[3]) / np.linalg.norm(x[0, 0] - c[3]), rtol=1e-6)


def test_encode_from_taps_float16_equals_float32_widening() -> None:
    rng = np.random.default_rng(13)
    taps, points, c = _tap_case(rng, 2, (16, 20), (8, 12), 100, 4, np.float16)
    labels = rng.integers(0, 4, size=(2, 100)).astype(np.int32)
    np.testing.assert_array_equal(vlad.encode_from_taps(taps, points, labels, c),
                                  vlad.encode_from_taps([t.astype(np.float32) for t in taps], points, labels, c))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2), h=st.integers(1, 19), w=st.integers(1, 19), s=st.integers(0, 60), k=st.integers(1, 6),
       mode=st.sampled_from(hypercolumn.INTERPOLATION_MODES))
def test_encode_from_taps_property(n: int, h: int, w: int, s: int, k: int, mode: str) -> None:
    """Any image and tap sizes (1 pixel, odd sizes), any number of points (none included)."""
    rng = np.random.default_rng(h * 100 + w + s)
    taps, points, c = _tap_case(rng, n, (h, w), (3, 5, 2), s, k)
    labels = rng.integers(0, k, size=points.shape[:2]).astype(np.int32)
    want = _gather_first(taps, points, labels, c, mode) if points.shape[1] else np.zeros((n, k * 10), np.float32)
    np.testing.assert_allclose(vlad.encode_from_taps(taps, points, labels, c, mode), want, rtol=1e-5, atol=1e-6)


def test_encode_from_taps_rejects_mismatched_inputs() -> None:
    rng = np.random.default_rng(14)
    taps, points, c = _tap_case(rng, 1, (8, 8), (3, 4), 10, 2)
    labels = np.zeros((1, 10), np.int32)
    with pytest.raises(ParameterError, match=r"centres \(2, 6\) must be \(k, 7\)"):
        vlad.encode_from_taps(taps, points, labels, c[:, :6])
    with pytest.raises(ParameterError, match="labels must be integers of shape"):
        vlad.encode_from_taps(taps, points, labels[:, :5], c)
    with pytest.raises(ParameterError, match="outside the 8×8 pixel grid"):
        vlad.encode_from_taps(taps, points + 8, labels, c)
    with pytest.raises(ParameterError, match=r"gathered has shape \(1, 10, 2\).*one of \[3, 7\]"):
        vlad.encode_from_taps(taps, points, labels, c, gathered=np.zeros((1, 10, 2), np.float32))


# -- soft assignment ------------------------------------------------------------------------------


def _soft_reference(x: np.ndarray, c: np.ndarray, softness: float, **kw: bool) -> np.ndarray:
    return np.stack([reference.vlad_soft(xi, c, softness, **kw) for xi in x])


@pytest.mark.parametrize("softness", [0.01, 1.0, 10.0, 100.0])
@pytest.mark.parametrize("intra,power", [(True, False), (False, False), (True, True)])
def test_soft_encode_equals_per_point_loop(softness: float, intra: bool, power: bool) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 257, 19), dtype=np.float32)
    c = rng.standard_normal((11, 19), dtype=np.float32)
    got = vlad.encode_soft(x, c, softness, intra=intra, power=power)
    np.testing.assert_allclose(got, _soft_reference(x, c, softness, intra=intra, power=power), atol=2e-6)


def test_soft_encode_at_large_softness_is_hard_vlad() -> None:
    """As the softness grows every point's weight goes to its nearest centre: the hard code."""
    x, labels, c = _case(np.random.default_rng(2), 2, 300, 7, 5)
    np.testing.assert_allclose(vlad.encode_soft(x, c, 1e5), vlad.encode(x, labels, c), atol=1e-5)


def test_soft_weights_rows_sum_to_one_and_follow_distance() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 50, 4), dtype=np.float32)
    c = rng.standard_normal((6, 4), dtype=np.float32)
    w = vlad.soft_weights(x, c, 5.0, vlad.spacing(c))
    np.testing.assert_allclose(w.sum(axis=2), 1.0, rtol=1e-6)
    d2 = ((x[:, :, None, :] - c[None, None]) ** 2).sum(axis=-1)
    np.testing.assert_array_equal(w.argmax(axis=2), d2.argmin(axis=2))


def test_soft_encode_edge_cases() -> None:
    rng = np.random.default_rng(4)
    c = rng.standard_normal((3, 4), dtype=np.float32)
    one = rng.standard_normal((1, 1, 4), dtype=np.float32)  # a single point
    np.testing.assert_allclose(vlad.encode_soft(one, c, 2.0), _soft_reference(one, c, 2.0), atol=1e-6)
    on_centres = np.repeat(c[None], 2, axis=0)  # every point on a centre: residuals to the others remain
    # float32 residuals of points on centres cancel: 1e-5, not the 1e-6 of the other cases
    np.testing.assert_allclose(vlad.encode_soft(on_centres, c, 2.0), _soft_reference(on_centres, c, 2.0), atol=1e-5)
    empty = np.zeros((2, 0, 4), np.float32)  # no points: a zero code, no NaN
    np.testing.assert_array_equal(vlad.encode_soft(empty, c, 2.0), 0.0)
    twins = np.stack([c[0], c[0], c[1]])  # coincident centres share their points' weight: still finite
    got = vlad.encode_soft(rng.standard_normal((1, 20, 4), dtype=np.float32), twins, 2.0)
    assert np.isfinite(got).all()
    far = 1e4 * rng.standard_normal((1, 10, 4), dtype=np.float32)  # far from every centre: no overflow
    assert np.isfinite(vlad.encode_soft(far, c, 50.0)).all()


def test_soft_encode_per_image_independent_of_batch_and_float16() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 200, 8), dtype=np.float32)
    c = rng.standard_normal((9, 8), dtype=np.float32)
    whole = vlad.encode_soft(x, c, 10.0)
    np.testing.assert_array_equal(vlad.encode_soft(x[2:3], c, 10.0), whole[2:3])
    half = x.astype(np.float16)
    np.testing.assert_allclose(vlad.encode_soft(half, c, 10.0), vlad.encode_soft(half.astype(np.float32), c, 10.0),
                               atol=1e-6)


def test_soft_encode_with_the_unit_and_cross_term_given_is_the_same() -> None:
    """The encoder passes the unit and the cross term it has already: the codes must not change."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 120, 8), dtype=np.float32)
    c = rng.standard_normal((7, 8), dtype=np.float32)
    cross = codebook.cross_per_image(x, c)
    np.testing.assert_allclose(cross, x @ c.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(codebook.nearest_from_cross(cross, c), codebook.nearest_per_image(x, c))
    given = vlad.encode_soft(x, c, 10.0, unit=vlad.spacing(c), cross=cross)
    np.testing.assert_array_equal(given, vlad.encode_soft(x, c, 10.0))
    with pytest.raises(ParameterError, match=r"cross \(3, 120, 6\) must be \(n, S, k\)"):
        vlad.encode_soft(x, c, 10.0, cross=cross[:, :, :6])


def _written_out(cross: np.ndarray, c: np.ndarray, scale: float) -> np.ndarray:
    """The soft weights as first written, with six temporaries: ``(n, S, k)`` float32."""
    d2 = (c * c).sum(axis=1) - 2.0 * cross
    z = (d2 - d2.min(axis=2, keepdims=True)) * np.float32(scale)
    w = np.where(z <= vlad.SOFT_CUTOFF, np.exp(-np.minimum(z, vlad.SOFT_CUTOFF)), np.float32(0))
    with np.errstate(invalid="ignore"):  # the NaN row: 0 / 0
        return w / w.sum(axis=2, keepdims=True)


def _soft_case(rng: np.random.Generator, n: int = 3, s: int = 300, k: int = 9) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, s, 8), dtype=np.float32)
    x[1, 5] = np.nan  # a point of a broken image: its row NaN
    c = rng.standard_normal((k, 8), dtype=np.float32)
    return codebook.cross_per_image(x, c), c


def test_soft_weights_expression_in_place_is_the_written_out_expression_bit_for_bit() -> None:
    """``backends.base.soft_weights`` (the CUDA backend's, against ``xp``) works in one array in place
    for speed: the same bits as the expression it replaced, NaN rows and weights under the cutoff
    included, and the cross term it is given unchanged."""
    cross, c = _soft_case(np.random.default_rng(7))
    kept = cross.copy()
    for softness in (0.5, 10.0, 400.0):  # at 400 most weights fall under the cutoff
        scale = vlad.soft_scale(softness, vlad.spacing(c))
        got = base.soft_weights(cross, (c * c).sum(axis=1), scale, vlad.SOFT_CUTOFF)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got.transpose(0, 2, 1), _written_out(cross, c, scale))
    np.testing.assert_array_equal(cross, kept)


@pytest.mark.parametrize("n,s,k", [(3, 300, 9), (2, 64, 5), (1, 65, 100), (2, 1, 2), (2, 0, 4), (0, 10, 3)])
def test_soft_weights_kernel_is_the_expression(n: int, s: int, k: int) -> None:
    """The CPU backend's one-pass kernel against the expression: the same zeros (the cutoff is decided
    on the same float32 z) and NaN rows, the other weights within float32 rounding (``exp`` and the
    row's sum may round differently), centre-major; point blocks of ``SOFT_BLOCK`` and their ragged
    ends included."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((n, s, 8), dtype=np.float32)
    if n > 1 and s > 5:
        x[1, 5] = np.nan
    c = rng.standard_normal((k, 8), dtype=np.float32)
    if k > 2:
        c[2] = c[1]  # twin centres: equal weights
    cross = codebook.cross_per_image(x, c)
    for softness in (0.01, 0.5, 10.0, 400.0, 1e40):  # 1e40: the factor is capped (SOFT_SCALE_MAX)
        scale = vlad.soft_scale(softness, vlad.spacing(c))
        with np.errstate(invalid="ignore"):  # the NaN row: 0 / 0
            want = base.soft_weights(cross, (c * c).sum(axis=1), scale, vlad.SOFT_CUTOFF)
        got = CPU.soft_weights(cross, (c * c).sum(axis=1), scale, vlad.SOFT_CUTOFF)
        assert got.shape == (n, k, s) and got.dtype == np.float32
        np.testing.assert_array_equal(got == 0, want == 0)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=0)
        if k > 2 and s:
            np.testing.assert_array_equal(got[:, 1], got[:, 2])


@pytest.mark.parametrize("softness", [0.5, 10.0, 400.0])
def test_soft_weights_of_both_backends_are_the_reference_loop(softness: float) -> None:
    """The CPU kernel and the array expression (the CUDA backend's) against ``reference.soft_weights``,
    a float64 loop over points that shares no code with either: a defect common to both (they are
    checked against each other above) shows here. Within float32 rounding of d² (the loop takes the
    same float32 cross term)."""
    rng = np.random.default_rng(11)
    cross, c = _soft_case(rng, 2, 70, 9)
    c_sq = (c * c).sum(axis=1)
    scale = vlad.soft_scale(softness, vlad.spacing(c))
    want = reference.soft_weights(cross, c_sq, scale, vlad.SOFT_CUTOFF)
    with np.errstate(invalid="ignore"):  # the NaN point: 0 / 0
        both = [CPU.soft_weights(cross, c_sq, scale, vlad.SOFT_CUTOFF),
                base.soft_weights(cross, c_sq, scale, vlad.SOFT_CUTOFF)]
    assert np.isnan(want[1, :, 5]).all() and np.isfinite(np.delete(want, 5, axis=2)).all()
    for got in both:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_soft_weights_kernel_makes_every_row_nan_when_a_centre_is_nan() -> None:
    """A NaN centre (an edited model) makes every point's minimum NaN in NumPy, so every weight: the
    kernel's too, not finite weights over the other centres that would hide it."""
    rng = np.random.default_rng(10)
    c = rng.standard_normal((4, 3), dtype=np.float32)
    c[3, 0] = np.nan
    cross = codebook.cross_per_image(rng.standard_normal((1, 70, 3), dtype=np.float32), c)
    assert np.isnan(CPU.soft_weights(cross, (c * c).sum(axis=1), 1.0, vlad.SOFT_CUTOFF)).all()


def test_soft_weights_kernel_is_the_reference_loop() -> None:
    """The kernel's weights as ``reference.vlad_soft`` computes them, point by point in float64."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 130, 6), dtype=np.float32)
    c = rng.standard_normal((7, 6), dtype=np.float32)
    unit = vlad.spacing(c)
    d2 = ((x[0, :, None, :].astype(np.float64) - c[None]) ** 2).sum(axis=-1)
    z = 3.0 * (d2 - d2.min(axis=1, keepdims=True)) / unit
    w = np.where(z <= 30.0, np.exp(-np.minimum(z, 30.0)), 0.0)
    want = w / w.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(vlad.soft_weights(x, c, 3.0, unit)[0], want, atol=2e-6)


def test_spacing_is_the_median_nearest_centre_squared_distance() -> None:
    c = np.array([[0, 0], [1, 0], [0, 3], [10, 10]], np.float32)  # nearest: 1, 1, 9, 85 → median 5
    assert vlad.spacing(c) == pytest.approx(5.0)
    assert vlad.spacing(np.zeros((3, 2), np.float32)) == 1.0  # all coincident: any unit


@pytest.mark.parametrize("softness", [0.0, -1.0, float("nan")])
def test_soft_encode_rejects_a_softness_that_is_not_positive(softness: float) -> None:
    x = np.zeros((1, 3, 2), np.float32)
    with pytest.raises(ParameterError, match="softness"):
        vlad.encode_soft(x, np.eye(2, dtype=np.float32), softness)


def test_soft_weights_under_the_cutoff_are_zero() -> None:
    """A centre that only weights under exp(−SOFT_CUTOFF) reach gets a zero block, as an empty centre
    does under hard assignment: without the cutoff its per-centre L2 made a unit-length block of
    weights that float32 keeps and float64 does not (or the reverse), so the code depended on where
    each underflowed."""
    c = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], np.float32)  # unit: median of 1, 1, 1, 41 = 1
    x = np.array([[[0.1, 0.1], [0.9, 0.0], [0.0, 0.8]]], np.float32)
    d2 = ((x[0, :, None, :] - c[None]) ** 2).sum(axis=-1)
    z = 1.0 * (d2 - d2.min(axis=1, keepdims=True)) / vlad.spacing(c)
    assert vlad.SOFT_CUTOFF < z[:, 3].min() < 80  # the far centre: weights under the cutoff, yet float32 normals
    got = vlad.encode_soft(x, c, 1.0).reshape(4, 2)
    np.testing.assert_array_equal(got[3], 0.0)
    np.testing.assert_allclose(got.ravel(), reference.vlad_soft(x[0], c, 1.0), atol=1e-6)
    assert np.abs(got[:3]).sum(axis=1).min() > 0


def test_soft_weights_stay_finite_when_softness_over_unit_leaves_float32() -> None:
    """Centres 1e-20 apart make the unit 1e-40: softness / unit overflows float32, and 0·∞ made
    the nearest centre's own term NaN. The factor is capped (``SOFT_SCALE_MAX``): the nearest centre."""
    c = np.array([[0.0, 0.0], [1e-20, 0.0], [0.0, 1e-20], [4.0, 4.0]], np.float32)
    unit = vlad.spacing(c)
    assert np.float32(1e6 / unit) == np.inf
    x = np.array([[[4.1, 3.9], [-1.0, -1.0]]], np.float32)
    w = vlad.soft_weights(x, c, 1e6, unit)
    np.testing.assert_array_equal(w, [[[0, 0, 0, 1], [1, 0, 0, 0]]])


def test_power_normalisation_keeps_the_sign_by_hand() -> None:
    """The signed square root worked out by hand: residual sum (4, −9) → (2, −3)/√13. The kernel, the
    shared ``normalise`` and the oracle are otherwise only checked against each other."""
    x = np.array([[[1.0, -4.0], [3.0, -5.0]]], np.float32)
    centres = np.zeros((1, 2), np.float32)
    want = np.array([2.0, -3.0]) / np.sqrt(13.0)
    np.testing.assert_allclose(vlad.encode(x, np.zeros((1, 2), np.int32), centres, intra=False, power=True)[0],
                               want, rtol=1e-6)
    np.testing.assert_allclose(reference.vlad(x[0], centres, intra=False, power=True), want, rtol=1e-6)
    np.testing.assert_allclose(base.normalise(np.array([[[4.0, -9.0]]]), intra=False, power=True)[0], want, rtol=1e-6)


def test_soft_weights_sum_to_one_over_many_centres() -> None:
    """With thousands of near-equal weights a float32 row sum drifts (2.7e-6 at k = 4,000); the kernel
    sums in float64, so every point's weights sum to 1 within float32 rounding of each weight."""
    rng = np.random.default_rng(0)
    cross = (1e-3 * rng.standard_normal((1, 64, 4000))).astype(np.float32)
    got = CPU.soft_weights(cross, np.zeros(4000, np.float32), 1.0, 30.0)[0].astype(np.float64)
    want = reference.soft_weights(cross, np.zeros(4000, np.float32), 1.0, 30.0)[0].astype(np.float64)
    assert np.abs(got.sum(axis=0) - 1).max() < 1e-6
    assert np.abs(got - want).max() / want.max() < 1e-6


def test_a_weight_exactly_at_the_cutoff_is_kept() -> None:
    """``z == cutoff`` keeps its weight, e^−30, in both backends (the cutoff drops only what is beyond it)."""
    cross, c_sq = np.zeros((1, 1, 2), np.float32), np.array([0.0, 30.0], np.float32)  # z = [0, 30]
    for got in (CPU.soft_weights(cross, c_sq, 1.0, 30.0), base.soft_weights(cross, c_sq, 1.0, 30.0)):
        np.testing.assert_allclose(got[0, :, 0], [1 / (1 + np.exp(-30.0)), np.exp(-30.0)], rtol=1e-5)
