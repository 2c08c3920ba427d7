"""Hypercolumn sampling: the gather at points equals the notebook's full-map upsampling."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastvlad import hypercolumn, reference
from fastvlad.backends import cpu
from fastvlad.errors import ParameterError

#: The CPU backend's gather, and the vectorised oracle other tests compare with (checked here too).
IMPLS = ["cpu", "oracle"]


def _gather(impl: str, taps: list[np.ndarray], points: np.ndarray, mode: str = "half_pixel") -> np.ndarray:
    return hypercolumn.gather(taps, points, mode) if impl == "cpu" else reference.gather(taps, points, mode)


def _taps(rng: np.random.Generator, n: int, hw: tuple[int, int], channels: tuple[int, ...]) -> list[np.ndarray]:
    """Taps of a VGG-like pyramid: sizes floor-halved, channels-last float32."""
    taps, (h, w) = [], hw
    for c in channels:
        taps.append(rng.standard_normal((n, h, w, c), dtype=np.float32))
        h, w = max(h // 2, 1), max(w // 2, 1)
    return taps


def _reference(taps: list[np.ndarray], points: np.ndarray, mode: str) -> np.ndarray:
    return np.stack([reference.sample_hypercolumns([t[i] for t in taps], points[i], mode) for i in range(len(points))])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", hypercolumn.INTERPOLATION_MODES)
@pytest.mark.parametrize("hw", [(32, 32), (37, 23), (16, 50)])
def test_gather_equals_full_map_upsampling(impl: str, mode: str, hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    taps = _taps(rng, 2, hw, (3, 5, 7, 2, 4))
    points = np.stack([hypercolumn.sample_points(rng, 97, *hw) for _ in range(2)])
    got = _gather(impl, taps, points, mode)
    assert got.shape == (2, 97, 21) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(taps, points, mode), rtol=1e-6, atol=1e-6)


def test_gather_read_only_and_mixed_taps() -> None:
    """Taps the caller cannot write to (a memory map, a frozen array), alone or next to writable
    ones, gather like writable taps (the kernels get read-only views of all of them)."""
    rng = np.random.default_rng(12)
    taps = _taps(rng, 2, (16, 16), (3, 5, 4))
    points = np.stack([hypercolumn.sample_points(rng, 40, 16, 16) for _ in range(2)])
    want = hypercolumn.gather(taps, points)
    for frozen in ((0, 1, 2), (1,)):
        copies = [t.copy() for t in taps]
        for f in frozen:
            copies[f].flags.writeable = False
        np.testing.assert_array_equal(hypercolumn.gather(copies, points), want)
    assert all(t.flags.writeable for t in taps)  # the caller's arrays are left as they were


def test_gather_more_taps_than_the_tuple_slots() -> None:
    """A backbone with more taps than ``TAP_SLOTS`` (one compile for that count) and with exactly
    one: the Numba gather equals the reference."""
    rng = np.random.default_rng(11)
    for count in (1, cpu.TAP_SLOTS + 1):
        taps = _taps(rng, 2, (20, 20), tuple(range(1, count + 1)))
        points = np.stack([hypercolumn.sample_points(rng, 31, 20, 20) for _ in range(2)])
        got = hypercolumn.gather(taps, points)
        np.testing.assert_allclose(got, _reference(taps, points, "half_pixel"), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_gather_non_contiguous_and_single_point(impl: str) -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal((1, 20, 20, 6), dtype=np.float32)
    taps = [base[:, :, :, ::2], base[:, ::2, ::2, :5]]  # strided views
    points = np.array([[[19, 0]]], dtype=np.int32)
    got = _gather(impl, taps, points)
    np.testing.assert_allclose(got, _reference([np.ascontiguousarray(t) for t in taps], points, "half_pixel"),
                               rtol=1e-6, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 40), w=st.integers(1, 40), c=st.integers(1, 9), s=st.integers(1, 60),
       mode=st.sampled_from(hypercolumn.INTERPOLATION_MODES), half=st.booleans(), impl=st.sampled_from(IMPLS))
def test_gather_property(n: int, h: int, w: int, c: int, s: int, mode: str, half: bool, impl: str) -> None:
    """Odd sizes (1-pixel taps included), float16 taps, any S: equal to the notebook's full-map way."""
    rng = np.random.default_rng(h * 1000 + w)
    taps = _taps(rng, n, (h, w), (c, c + 1, 3))
    if half:
        taps = [t.astype(np.float16) for t in taps]
    points = np.stack([hypercolumn.sample_points(rng, s, h, w) for _ in range(n)])
    got = _gather(impl, taps, points, mode)
    want = _reference([t.astype(np.float32) for t in taps], points, mode)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_gather_float16_equals_its_float32_widening(impl: str) -> None:
    """fp16 is widened exactly, then computed in float32: bit-identical to gathering the widened taps."""
    rng = np.random.default_rng(3)
    taps = [t.astype(np.float16) for t in _taps(rng, 2, (23, 17), (8, 16, 5))]
    taps[1][0, 0, 0, :4] = [np.inf, -np.inf, 6e-8, -0.0]  # infinities, a subnormal, a signed zero
    points = np.stack([hypercolumn.sample_points(rng, 40, 23, 17) for _ in range(2)])
    got = _gather(impl, taps, points)
    want = _gather(impl, [t.astype(np.float32) for t in taps], points)
    np.testing.assert_array_equal(got, want)
    mixed = _gather(impl, [taps[0], taps[1].astype(np.float32), taps[2]], points)
    np.testing.assert_array_equal(mixed, want)


def test_gather_point_order_and_strided_out() -> None:
    """Rows follow the points' order (the kernel visits them sorted) and a column slice is a valid out."""
    rng = np.random.default_rng(4)
    taps = _taps(rng, 2, (30, 31), (4, 6, 3))
    points = np.stack([hypercolumn.sample_points(rng, 50, 30, 31) for _ in range(2)])
    want = hypercolumn.gather(taps, points)
    perm = rng.permutation(50)
    np.testing.assert_array_equal(hypercolumn.gather(taps, points[:, perm]), want[:, perm])
    wide = np.full((2, 50, 20), 7.0, np.float32)
    hypercolumn.gather(taps, points, out=wide[:, :, 3:16])
    np.testing.assert_array_equal(wide[:, :, 3:16], want)
    assert (wide[:, :, :3] == 7).all() and (wide[:, :, 16:] == 7).all()


def test_gather_no_points_and_bad_points() -> None:
    taps = _taps(np.random.default_rng(5), 2, (8, 8), (3, 2))
    empty = hypercolumn.gather(taps, np.zeros((2, 0, 2), np.int32))
    assert empty.shape == (2, 0, 5)
    with pytest.raises(ParameterError, match="outside the 8×8"):
        hypercolumn.gather(taps, np.full((2, 1, 2), 8, np.int32))
    with pytest.raises(ParameterError, match="n = 3"):
        hypercolumn.gather(taps, np.zeros((3, 1, 2), np.int32))


def test_gather_add_sums_taps() -> None:
    rng = np.random.default_rng(6)
    maps = [rng.standard_normal((2, h, h + 1, 5), dtype=np.float32) for h in (20, 10, 5)]
    points = np.stack([hypercolumn.sample_points(rng, 33, 20, 21) for _ in range(2)])
    base = rng.standard_normal((2, 33, 5), dtype=np.float32)
    got = hypercolumn.gather_add(maps, points, base.copy(), (20, 21))
    want = base + sum(reference.gather([m], points, out_hw=(20, 21)) for m in maps)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", hypercolumn.INTERPOLATION_MODES)
def test_full_resolution_tap_is_copied_exactly(mode: str) -> None:
    tap = np.arange(5 * 7, dtype=np.float32).reshape(1, 5, 7, 1) / 3
    points = np.array([[[r, c] for r in range(5) for c in range(7)]], dtype=np.int32)
    np.testing.assert_array_equal(hypercolumn.gather([tap], points, mode)[0, :, 0], tap.ravel())


def test_sample_points_distinct_and_bounded() -> None:
    pts = hypercolumn.sample_points(np.random.default_rng(0), 500, 10, 60)
    assert len({tuple(p) for p in pts}) == 500
    flat = pts[:, 0] * 60 + pts[:, 1]
    assert (np.diff(flat) > 0).all()  # row-major order, for the kernels' memory locality
    assert pts[:, 0].max() < 10 and pts[:, 1].max() < 60
    assert len(hypercolumn.sample_points(np.random.default_rng(0), 500, 5, 5)) == 25  # capped at the pixel count


def test_density_maps_to_points() -> None:
    assert hypercolumn.points_for_density(10) == 5000
    assert hypercolumn.points_for_density(1) == 500


def test_image_rng_depends_on_content_not_position() -> None:
    a = np.zeros((3, 8, 8), np.float32)
    b = a.copy()
    b[0, 0, 0] = 1
    draw = lambda img: hypercolumn.image_rng(0, img).integers(1 << 30)  # noqa: E731
    assert draw(a) == draw(a.copy()) and draw(a) != draw(b)


def test_unknown_mode() -> None:
    with pytest.raises(ParameterError, match="interpolation"):
        hypercolumn.axis_table(4, 2, "nearest")


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
def test_prefetch_emits_the_hint_and_leaves_data_alone(dtype: type) -> None:
    """The kernels' prefetch compiles for every dtype they read (float16 arrives as uint16 bits) into
    real prefetch instructions, on contiguous, strided and empty rows and past an array's end."""
    from numba import njit

    from fastvlad.backends._prefetch import _prefetch_element, prefetch_row

    @njit
    def rows(a):  # type: ignore[no-untyped-def]
        for r in range(a.shape[0]):
            prefetch_row(a[r])
        prefetch_row(a[0, ::3])
        prefetch_row(a[0, :0])
        return a.sum()

    @njit
    def past_the_end(a):  # type: ignore[no-untyped-def]
        _prefetch_element(a, a.size + 4096)  # a prefetch never faults
        return a.sum()

    a = np.arange(5 * 37).reshape(5, 37).astype(dtype)
    before = a.copy()
    for f in (rows, past_the_end):
        assert f(a) == before.sum()
        np.testing.assert_array_equal(a, before)
        asm = next(iter(f.inspect_asm().values()))
        # an instruction, not a symbol (this test's own name holds the word)
        assert re.search(r"^\s*(prefetch\w*|prfm)\s", asm, re.MULTILINE), f"{f.__name__}: no prefetch instruction"


def test_tap_tuples_of_any_count_share_one_numba_type() -> None:
    """The kernels get their taps as a tuple padded to ``TAP_SLOTS``: 1 to 8 taps (and the VLAD
    kernel's no-taps placeholder) are one Numba type, so each kernel compiles once, not once per
    tap count (about 6 s each on 2 cores)."""
    import numba

    rng = np.random.default_rng(0)
    points = np.zeros((2, 3, 2), np.int32)
    types = set()
    for count in (1, 2, 3, 5, cpu.TAP_SLOTS):
        taps = [rng.standard_normal((2, 8 >> min(t, 2), 8 >> min(t, 2), 4), dtype=np.float32) for t in range(count)]
        args = cpu.tap_args(taps, points, hypercolumn.tap_tables(taps, "half_pixel"))
        assert len(args[-1]) == count + 1  # the offsets say how many taps are real
        types.add(numba.typeof(args[0]))
    types.add(numba.typeof(cpu.no_taps(2)[0]))
    assert len(types) == 1, types


def test_the_last_pixel_of_an_upsampled_tap_is_its_last_value_exactly() -> None:
    """At the edge the half-pixel source clips to the tap's last row: weight 0 on the row past it, so
    the value is copied bit for bit (a clip one row too far blends in a third of a duplicate: the
    last bits change, which the oracle's tolerance would not see). 3×: at 2× the blend rounds back."""
    table = hypercolumn.axis_table(9, 3, "half_pixel")
    assert table.w[-1] == 0 and table.lo[-1] == 2
    tap = np.random.default_rng(0).standard_normal((1, 3, 3, 64), dtype=np.float32)
    got = hypercolumn.gather([np.zeros((1, 9, 9, 1), np.float32), tap], np.array([[[8, 8]]], np.int32))
    np.testing.assert_array_equal(got[0, 0, 1:], tap[0, 2, 2])


@pytest.mark.parametrize(("mode", "want"), [("half_pixel", [0, 0.25, 0.75, 1]), ("asymmetric", [0, 0.5, 1, 1])])
def test_upsampling_coordinates_by_hand(mode: str, want: list[float]) -> None:
    """A 2-row tap [0, 1] upsampled to 4 rows, the values worked out by hand for each mode: the kernel
    and the oracle share their formula's idea, so each is checked against numbers, not each other."""
    tap = np.array([0.0, 1.0], np.float32).reshape(1, 2, 1, 1)
    points = np.array([[[r, 0] for r in range(4)]], np.int32)
    got = hypercolumn.gather([np.zeros((1, 4, 1, 1), np.float32), tap], points, mode)[0, :, 1]
    np.testing.assert_allclose(got, want, atol=1e-7)
    np.testing.assert_allclose(reference.upsample_bilinear(tap[0], (4, 1), mode)[:, 0, 0], want, atol=1e-7)


@pytest.mark.parametrize("layout", ["fortran", "float64"])
def test_gather_add_keeps_what_an_out_of_another_layout_held(layout: str) -> None:
    """``gather_add`` into an ``out`` the kernel cannot write in place (Fortran order, float64) works on
    a dense copy, which must start from ``out``'s values, not zeros."""
    rng = np.random.default_rng(6)
    maps = [rng.standard_normal((2, h, h + 1, 5), dtype=np.float32) for h in (20, 10)]
    points = np.stack([hypercolumn.sample_points(rng, 33, 20, 21) for _ in range(2)])
    held = rng.standard_normal((2, 33, 5), dtype=np.float32)
    out = np.asfortranarray(held) if layout == "fortran" else held.astype(np.float64)
    hypercolumn.gather_add(maps, points, out, (20, 21))
    want = held + sum(reference.gather([m], points, out_hw=(20, 21)) for m in maps)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
