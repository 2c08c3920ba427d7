"""The CUDA host emulator's own checks (issue 17, part 4): each catches the defect it is for.

- an undersized ``shared_mem`` fails the launch (canaries past the launch's dynamic shared bytes);
- a 32-bit index that wraps fails the launch (the kernels are built with signed-overflow checks),
  shown on a batch of 293 images at the paper's 5,000 points × 1,472 dims, whose image index
  times S·D passes 2³¹ (the array is mapped lazily and only the first and last images' blocks run);
- scalar and pointer arguments must have the types the kernel declares;
- the emulator is built from this tree's ``kernels/`` and refuses other source text.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from fastvlad.backends import cuda as _cuda
from fastvlad.backends.cuda import CudaBackend


def _residual_args(cp: ModuleType, n: int = 2, s: int = 40, dim: int = 70, k: int = 5):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((n, s, dim)).astype(np.float32))
    labels = cp.asarray(rng.integers(0, k, (n, s)).astype(np.int32))
    centres = cp.asarray(rng.standard_normal((k, dim)).astype(np.float32))
    out = cp.empty((n, k, dim), dtype=np.float32)
    return x, labels, centres, out


def _launch_residuals(cp: ModuleType, shared_mem: int, **change: object) -> None:
    x, labels, centres, out = _residual_args(cp)
    n, s, dim = x.shape
    k, tile = centres.shape[0], 64
    args = [x, labels, centres, out, np.int32(s), np.int32(dim), np.int32(k), np.int32(k)]
    for pos, value in change.items():
        args[int(pos[1:])] = value
    _cuda._function("vlad", "residual_sums_f32")((n, -(-dim // tile), 1), (tile,), tuple(args), shared_mem=shared_mem)


def test_shared_memory_size_is_enforced(fake_cupy: ModuleType) -> None:
    k, tile = 5, 64
    _launch_residuals(fake_cupy, k * tile * 4)  # what the kernel needs: passes
    with pytest.raises(RuntimeError, match=r"float 319 .*past the 1276 bytes of dynamic shared memory"):
        _launch_residuals(fake_cupy, k * tile * 4 - 4)  # one float short
    with pytest.raises(RuntimeError, match="past the 0 bytes"):
        _launch_residuals(fake_cupy, 0)


@pytest.mark.parametrize(("pos", "value", "match"), [
    ("a4", np.int64(40), r"argument 4 is declared int: int64 given"),
    ("a4", 40, r"argument 4 is declared int: int given"),
    ("a6", np.uint32(5), r"argument 6 is declared int: uint32 given"),
    ("a1", None, r"argument 1 is declared int\*: NoneType given"),
])
def test_scalar_and_pointer_types_are_checked(fake_cupy: ModuleType, pos: str, value: object, match: str) -> None:
    _launch_residuals(fake_cupy, 5 * 64 * 4)  # the arguments as declared: runs
    with pytest.raises(TypeError, match=match):
        _launch_residuals(fake_cupy, 5 * 64 * 4, **{pos: value})


def test_pointer_dtype_and_argument_count_are_checked(fake_cupy: ModuleType) -> None:
    x, labels, centres, out = _residual_args(fake_cupy)
    _launch_residuals(fake_cupy, 5 * 64 * 4)
    with pytest.raises(TypeError, match=r"argument 1 is declared int\*: a device array of int64 given"):
        _launch_residuals(fake_cupy, 5 * 64 * 4, a1=labels.astype(np.int64))
    with pytest.raises(TypeError, match="takes 8 arguments"):
        _cuda._function("vlad", "residual_sums_f32")((1, 1, 1), (64,), (x, labels, centres, out))


def test_the_gather_launcher_passes_its_strides_as_long_long(fake_cupy: ModuleType) -> None:
    """Through fastvlad's launcher: every argument typed as declared (gather's strides are ``long long``)."""
    from fastvlad import hypercolumn

    rng = np.random.default_rng(1)
    taps = [rng.standard_normal((2, 9, 8, 5)).astype(np.float32)]
    points = np.stack([hypercolumn.sample_points(rng, 30, 9, 8) for _ in range(2)])
    got = hypercolumn.gather([fake_cupy.asarray(t) for t in taps], fake_cupy.asarray(points), backend=CudaBackend())
    np.testing.assert_array_equal(fake_cupy.asnumpy(got), hypercolumn.gather(taps, points))


def _lazy(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A zero array of ``shape`` in memory mapped lazily (MAP_NORESERVE): untouched pages cost nothing."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=flags), dtype=dtype).reshape(shape)


def test_image_index_past_2_to_the_31(fake_cupy: ModuleType) -> None:
    """Residual sums of a batch of 293 images at 5,000 points × 1,472 dims (fp16 hypercolumns, 4.3 GB
    mapped, 30 MB touched): image 292 starts at element 292·5000·1472 > 2³¹. Its sums (and image 0's)
    must equal the reference; a kernel indexing the image in 32 bits fails with an overflow."""
    n, s, dim, k = 293, 5000, 1472, 4
    assert (n - 1) * s * dim > 2**31
    x = _lazy((n, s, dim), np.float16)
    labels = np.zeros((n, s), np.int32)
    rng = np.random.default_rng(2)
    for i in (0, n - 1):
        x[i] = rng.standard_normal((s, dim)).astype(np.float16)
        labels[i] = rng.integers(0, k, s)
    centres = rng.standard_normal((k, dim)).astype(np.float32)
    out = fake_cupy.empty((n, k, dim), dtype=np.float32)
    with fake_cupy.only_blocks([0, n - 1]):
        _cuda.residual_sums(fake_cupy.ndarray(x), fake_cupy.asarray(labels), fake_cupy.asarray(centres), out)
    got = fake_cupy.asnumpy(out)
    for i in (0, n - 1):
        want = np.stack([(x[i][labels[i] == j].astype(np.float64) - centres[j]).sum(axis=0) for j in range(k)])
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert np.isnan(got[1:-1]).all()  # the blocks of the other images did not run


def test_emulator_is_built_from_this_tree(emulator_lib: Path) -> None:
    import json

    from tests.cuda_emu import build

    sources = json.loads((emulator_lib.parent / "sources.json").read_text())
    kernels = Path(__file__).resolve().parents[1] / "kernels"
    assert set(sources) == {p.stem for p in kernels.glob("*.cu")}
    assert build.tree_kernels().KERNEL_DIR == kernels
    for stem, text in sources.items():
        assert (kernels / f"{stem}.cu").read_text().split("#include")[0] in text


def test_raw_module_refuses_other_source(fake_cupy: ModuleType) -> None:
    _launch_residuals(fake_cupy, 5 * 64 * 4)  # fastvlad's own source: accepted
    with pytest.raises(AssertionError, match="not one of the tree's kernels"):
        fake_cupy.RawModule(code='extern "C" __global__ void gather_f32(float* x) {}')
