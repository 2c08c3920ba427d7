"""Hypercolumn sampling: the gather at points equals the notebook's full-map upsampling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastvlad import hypercolumn, reference
from fastvlad.errors import ParameterError

IMPLS = ["numpy", "numba"]


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
    got = hypercolumn.gather(taps, points, mode, impl=impl)
    assert got.shape == (2, 97, 21) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(taps, points, mode), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_gather_non_contiguous_and_single_point(impl: str) -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal((1, 20, 20, 6), dtype=np.float32)
    taps = [base[:, :, :, ::2], base[:, ::2, ::2, :5]]  # strided views
    points = np.array([[[19, 0]]], dtype=np.int32)
    got = hypercolumn.gather(taps, points, impl=impl)
    np.testing.assert_allclose(got, _reference([np.ascontiguousarray(t) for t in taps], points, "half_pixel"),
                               rtol=1e-6, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(2, 40), w=st.integers(2, 40), c=st.integers(1, 9), s=st.integers(1, 60),
       mode=st.sampled_from(hypercolumn.INTERPOLATION_MODES))
def test_gather_property(h: int, w: int, c: int, s: int, mode: str) -> None:
    rng = np.random.default_rng(h * 1000 + w)
    taps = _taps(rng, 1, (h, w), (c, c + 1))
    points = hypercolumn.sample_points(rng, s, h, w)[None]
    np.testing.assert_allclose(hypercolumn.gather(taps, points, mode), _reference(taps, points, mode),
                               rtol=1e-6, atol=1e-6)


def test_full_resolution_tap_is_copied_exactly_at_half_pixel() -> None:
    tap = np.arange(5 * 7, dtype=np.float32).reshape(1, 5, 7, 1)
    points = np.array([[[r, c] for r in range(5) for c in range(7)]], dtype=np.int32)
    np.testing.assert_array_equal(hypercolumn.gather([tap], points)[0, :, 0], tap.ravel())


def test_sample_points_distinct_and_bounded() -> None:
    pts = hypercolumn.sample_points(np.random.default_rng(0), 500, 10, 60)
    assert len({tuple(p) for p in pts}) == 500
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
