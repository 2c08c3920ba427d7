"""Soft assignment's weights worked in place against the expression they replaced, in one run.

    python benchmarks/soft_weights.py [--rounds 41] [--images 8] [--points 1837] [--k 100]

``vlad.soft_weights`` works one ``(n, S, k)`` array in place; the reference here is the expression
it replaced (``where(z ≤ cutoff, exp(−min(z, cutoff)), 0) / Σw``, ``z = (d² − min d²)·softness/unit``),
which allocated six temporaries of that size. Both run on the same cross term, alternately, first
one then the other in turn; the first round is dropped. Printed: ms per image of each (median and
range over rounds) and the per-round ratio reference / in place. The default shape is the default
encoder's batch: 8 images of 112×164 at a density of 10 % (1,837 points), k = 100, 64 PCA dims.
The two must agree bit for bit (checked before timing; the test suite checks it too).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fastvlad import codebook, vlad
from fastvlad.backends.cpu import CPU

SOFTNESS = 10.0


def expression(cross: np.ndarray, centres: np.ndarray, softness: float, unit: float) -> np.ndarray:
    """The weights as written before they were worked in place: ``(n, S, k)`` float32."""
    d2 = (centres * centres).sum(axis=1) - 2.0 * cross
    z = (d2 - d2.min(axis=2, keepdims=True)) * np.float32(softness / unit)
    w = np.where(z <= vlad.SOFT_CUTOFF, np.exp(-np.minimum(z, vlad.SOFT_CUTOFF)), np.float32(0))
    return w / w.sum(axis=2, keepdims=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--points", type=int, default=1837)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.images, args.points, args.dim)).astype(np.float32)
    c = (0.5 * rng.standard_normal((args.k, args.dim))).astype(np.float32)
    unit, cross = vlad.spacing(c), codebook.cross_per_image(x, c, CPU)
    assert np.array_equal(expression(cross, c, SOFTNESS, unit), vlad.soft_weights(x, c, SOFTNESS, unit, CPU, cross))
    runs = {"expression": lambda: expression(cross, c, SOFTNESS, unit),
            "in place": lambda: vlad.soft_weights(x, c, SOFTNESS, unit, CPU, cross)}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - t)
    for name, s in seconds.items():
        ms = 1e3 * np.array(s[1:]) / args.images
        print(f"{name}: {np.median(ms):.3f} ms per image (rounds {ms.min():.3f}–{ms.max():.3f})")
    ratio = np.array(seconds["expression"][1:]) / np.array(seconds["in place"][1:])
    print(f"expression / in place: {np.median(ratio):.2f} (rounds {ratio.min():.2f}–{ratio.max():.2f}), "
          f"{len(ratio)} rounds, shape ({args.images}, {args.points}, {args.k})")


if __name__ == "__main__":
    main()
