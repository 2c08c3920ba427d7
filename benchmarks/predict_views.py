"""What each set of views costs at predict: images per second of ``predict_proba`` on the shared
nanofiber tiles with the views of ``tta`` and ``tta_zoom``, in interleaved rounds (the machines are
shared and drift), each set's median and range, and its time over the first set's in the same round.

One model (the defaults, fitted on ``--train`` tiles) predicts ``--images`` other tiles per set and
round; only the views differ (``set_params``), so the head and codebook are the same. Decoding and the
first call's compilation are warmed up before the first round.

    python benchmarks/predict_views.py --rounds 5
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from fastvlad import datasets
from fastvlad.estimator import FastVLAD

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nanofiber-sem"
#: name → (tta, tta_zoom); the first is what the others are compared with.
SETS: dict[str, tuple[int, tuple[float, ...]]] = {
    "tta=1 (the image and its mirror)": (1, ()),
    "tta=1, tta_zoom=(0.7,)": (1, (0.7,)),
    "tta=0 (the image alone)": (0, ()),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--train", type=int, default=200, help="tiles the model is fitted on")
    ap.add_argument("--images", type=int, default=200, help="tiles predicted per set and round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    if not (args.data / "manifest.csv").is_file():
        sys.exit(f"no dataset at {args.data} (see ../shared/datasets/README.md)")
    ds = datasets.load(args.data)
    order = np.random.default_rng(0).permutation(len(ds))
    paths = [str(ds.paths[i]) for i in order]
    labels = np.asarray(ds.y)[order]
    train, test = paths[: args.train], paths[args.train: args.train + args.images]
    model = FastVLAD(random_state=0).fit(train, labels[: args.train])
    for tta, tta_zoom in SETS.values():  # warm-up: every input size compiled and decoded once
        model.set_params(tta=tta, tta_zoom=tta_zoom).predict_proba(test[:8])
    seconds: dict[str, list[float]] = {name: [] for name in SETS}
    for _ in range(args.rounds):
        for name, (tta, tta_zoom) in SETS.items():
            t = time.perf_counter()
            model.set_params(tta=tta, tta_zoom=tta_zoom).predict_proba(test)
            seconds[name].append(time.perf_counter() - t)
    first = np.array(seconds[next(iter(SETS))])
    print(f"{platform.processor() or platform.machine()}, {args.images} tiles per set, {args.rounds} interleaved rounds\n")
    print("| views at predict | images/s, median (range) | time over the first set's, median (range) |")
    print("|---|---|---|")
    for name, s in seconds.items():
        rate, ratio = args.images / np.array(s), np.array(s) / first
        print(f"| {name} | {np.median(rate):.1f} ({rate.min():.1f}–{rate.max():.1f}) | "
              f"{np.median(ratio):.2f} ({ratio.min():.2f}–{ratio.max():.2f}) |")


if __name__ == "__main__":
    main()
