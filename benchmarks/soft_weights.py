"""Soft assignment's weights three ways, the soft VLAD around them, and the encoder, in one run.

    python benchmarks/soft_weights.py [--rounds 41] [--images 8] [--points 5000] [--k 100] [--dim 64]
        [--encode 64 --data DATA --precision fp32 int8 --encode-rounds 5]

- ``written out``: ``where(z ≤ cutoff, exp(−min(z, cutoff)), 0) / Σw`` with ``z = (d² − min d²)·scale``,
  six temporaries of ``(n, S, k)`` (the first version; the tests' oracle for the other two);
- ``in place``: ``backends.base.soft_weights``, the same expression worked in one array, then laid
  out centre-major (the CUDA backend's, with CuPy; the CPU's until the kernel);
- ``kernel``: the CPU backend's Numba kernel, one pass over the cross term, each point's row in L1.

Then the whole ``vlad.encode_soft`` (weights, the per-centre GEMMs, the normalisations) with the
in-place expression and with the kernel. All run on the same cross term, in turn, the order reversed
every round; the first round is dropped. Printed: ms per image (median and range over rounds) and
the per-round ratios. The default shape is the default encoder's batch: 8 images of 112×164 with the
paper's 5,000 points each (density 10 % is 500·10 points, whatever the image size), k = 100, 64 PCA
dims. The kernel must give the expression's zeros and agree within float32 rounding (checked before
timing; the test suite checks it too).

With ``--encode N``: the default estimator fitted on ``N`` images of ``DATA`` (a dataset folder or
manifest; demo images without one), its ``Encoder`` encoding the same ``N`` images with the soft
VLAD as before the kernel (the in-place weights, then one multithreaded ``np.matmul`` over the batch)
and as now, in turn, at each ``--precision``: images per second (median and range over
``--encode-rounds`` rounds, the first dropped), and the largest difference between the two codes.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import numpy as np

from fastvlad import codebook, vlad
from fastvlad.backends import base
from fastvlad.backends.cpu import CPU, CpuBackend

SOFTNESS = 10.0


def written_out(cross: np.ndarray, c_sq: np.ndarray, scale: float) -> np.ndarray:
    """The weights as first written: ``(n, S, k)`` float32."""
    d2 = c_sq - 2.0 * cross
    z = (d2 - d2.min(axis=2, keepdims=True)) * np.float32(scale)
    w = np.where(z <= vlad.SOFT_CUTOFF, np.exp(-np.minimum(z, vlad.SOFT_CUTOFF)), np.float32(0))
    return w / w.sum(axis=2, keepdims=True)


class InPlace(CpuBackend):
    """The CPU backend with the in-place expression for the weights (as before the kernel)."""

    def soft_weights(self, cross, c_sq, scale, cutoff):  # type: ignore[no-untyped-def]
        return base.soft_weights(cross, c_sq, scale, cutoff)


class Before(InPlace):
    """The soft VLAD as it ran before the kernel: the in-place weights, and the per-centre sums by one
    ``np.matmul`` over the batch (OpenBLAS on every core, its threads spinning into the next kernel)."""

    def matmul_per_image(self, a, b, out=None):  # type: ignore[no-untyped-def]
        return np.matmul(a, b) if b.ndim == 3 else super().matmul_per_image(a, b, out)


def encoder_rounds(data: str | None, n: int, precision: str, rounds: int) -> None:
    """The default encoder as before the kernel and as now, in turn, on the same ``n`` images."""
    from dataclasses import replace

    from fastvlad.encoder import Encoder
    from fastvlad.estimator import FastVLAD

    images, labels = pick_images(data, n)
    model = FastVLAD(precision=precision, zoom=()).fit(images, labels)
    now = Encoder.of(model)
    encoders = {"before": replace(now, backend=Before(batch_size=now.backend.batch_size)), "now": now}
    codes = {name: enc.encode(images).codes for name, enc in encoders.items()}  # warm: compiles, caches
    runs: dict[str, Callable[[], object]] = {name: functools.partial(enc.encode, images) for name, enc in encoders.items()}
    seconds = timed(runs, rounds)
    rate = {name: n / s for name, s in seconds.items()}
    print(f"encoder, {precision}, {n} images of {data or 'demo images (306×448)'}, {rounds - 1} rounds:")
    for name, r in rate.items():
        print(f"  {name}: {np.median(r):.2f} images/s (rounds {r.min():.2f}–{r.max():.2f})")
    ratio = seconds["before"] / seconds["now"]
    print(f"  before / now (time): {np.median(ratio):.3f} (rounds {ratio.min():.3f}–{ratio.max():.3f}); "
          f"codes differ by at most {np.abs(codes['before'] - codes['now']).max():.2e}")


def pick_images(data: str | None, n: int) -> tuple[list, np.ndarray]:
    """``n`` images spread over ``data`` (paths) or ``n`` demo tiles of 306×448 (arrays), with their labels."""
    from fastvlad import demo
    from fastvlad.datasets import load

    if data:
        ds = load(data)
        pick = np.linspace(0, len(ds) - 1, n).astype(int)
        return [ds.paths[i] for i in pick], ds.y[pick]
    x, labels = demo.make_dataset(-(-n // 4), size=(306, 448))
    return list(x[:n]), labels[:n]


def timed(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, np.ndarray]:
    """Seconds of every run per round, in turn (the order reversed every other round), the first dropped."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - t)
    return {name: np.array(s[1:]) for name, s in seconds.items()}


def report(seconds: dict[str, np.ndarray], images: int, ratios: list[tuple[str, str]]) -> None:
    for name, s in seconds.items():
        ms = 1e3 * s / images
        print(f"  {name}: {np.median(ms):.3f} ms per image (rounds {ms.min():.3f}–{ms.max():.3f})")
    for slow, fast in ratios:
        r = seconds[slow] / seconds[fast]
        print(f"  {slow} / {fast}: {np.median(r):.2f} (rounds {r.min():.2f}–{r.max():.2f})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--points", type=int, default=5000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--encode", type=int, default=0, metavar="N", help="also time the encoder on N images")
    ap.add_argument("--data", default=None, help="dataset folder or manifest for --encode (default: demo images)")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "int8"])
    ap.add_argument("--encode-rounds", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.images, args.points, args.dim)).astype(np.float32)
    c = (0.5 * rng.standard_normal((args.k, args.dim))).astype(np.float32)
    unit, cross = vlad.spacing(c), codebook.cross_per_image(x, c, CPU)
    c_sq, scale = (c * c).sum(axis=1), vlad.soft_scale(SOFTNESS, vlad.spacing(c))
    want = written_out(cross, c_sq, scale)
    assert np.array_equal(base.soft_weights(cross, c_sq, scale, vlad.SOFT_CUTOFF).transpose(0, 2, 1), want)
    got = CPU.soft_weights(cross, c_sq, scale, vlad.SOFT_CUTOFF).transpose(0, 2, 1)
    assert np.array_equal(got == 0, want == 0) and np.allclose(got, want, rtol=2e-6, atol=0)
    print(f"weights, shape ({args.images}, {args.points}, {args.k}), {args.rounds - 1} rounds:")
    weights = timed({"written out": lambda: written_out(cross, c_sq, scale),
                     "in place": lambda: base.soft_weights(cross, c_sq, scale, vlad.SOFT_CUTOFF),
                     "kernel": lambda: CPU.soft_weights(cross, c_sq, scale, vlad.SOFT_CUTOFF)}, args.rounds)
    report(weights, args.images, [("written out", "kernel"), ("in place", "kernel")])
    print(f"vlad.encode_soft, dim {args.dim}, the unit and cross term given (as the encoder does):")
    in_place = InPlace()
    codes = timed({"in place": lambda: vlad.encode_soft(x, c, SOFTNESS, backend=in_place, unit=unit, cross=cross),
                   "kernel": lambda: vlad.encode_soft(x, c, SOFTNESS, backend=CPU, unit=unit, cross=cross)},
                  args.rounds)
    report(codes, args.images, [("in place", "kernel")])
    for precision in args.precision if args.encode else ():
        encoder_rounds(args.data, args.encode, precision, args.encode_rounds)


if __name__ == "__main__":
    main()
