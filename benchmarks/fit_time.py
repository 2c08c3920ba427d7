"""Seconds of one ``fit`` with each default fastvlad has had, measured in one run.

Each round fits every setting once on the same tiles, in an order that rotates from round to
round (the machines are shared and drift), and reports the seconds, the CNN's share (the images'
own passes, and the zoomed or augmented copies' apart), and each setting's time over the current
default's in that round; then the median and range over rounds::

    python benchmarks/fit_time.py --images 300 --rounds 3

The settings: 0.1.0's default (224×224 squashed, gray levels as read, XGBoost; as
``benchmarks/accuracy.py`` defines it), the default before ACCURACY.md's run 45 (no zoomed copies,
ridge alpha 10), the default of run 45 (zoomed copies at 1.4 and 0.7, alpha 40) and today's
(``FastVLAD()``: one zoomed copy at 1.2, flipped and re-exposed, run 51; with soft assignment,
``softness=10``, run 69; the ridge head on the codes' 64 principal axes, ``code_pca=64``, run 94),
run 69's (the ridge on the codes, alpha 20), run 51's with the nearest centre only, and today's with the
CNN at int8 (``precision="int8"``; 3× faster only on a CPU with VNNI, README "Precision").
``--only TEXT`` keeps the settings whose name contains TEXT. The tiles: a seeded sample of the shared
nanofiber set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from fastvlad import datasets
from fastvlad.encoder import copies_cnn_seconds
from fastvlad.estimator import FastVLAD

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nanofiber-sem"
SETTINGS: dict[str, dict[str, Any]] = {
    "0.1.0's default (224×224 squashed, as read, XGBoost)": dict(
        image_size=224, aspect="squash", normalize="none", classifier="xgboost", class_weight=None, tta=0, zoom=()),
    "the default before run 45 (no zoomed copies, alpha 10)": dict(zoom=(), alpha=10.0, code_pca=None),
    "the default of run 45 (zoom 1.4/0.7, alpha 40)": dict(zoom=(1.4, 0.7), alpha=40.0, code_pca=None),
    "the default of run 51 (one jittered zoomed copy at 1.2, alpha 20; the nearest centre)": dict(softness=None, code_pca=None),
    "the default of run 69 (run 51's, with soft assignment, softness 10; the ridge on the codes)": dict(code_pca=None),
    "the default (run 69's, the ridge on the codes' 64 principal axes, alpha 80; run 94)": {},
    "the default with the CNN at int8 (precision='int8')": dict(precision="int8"),
}
TODAY = "the default (run 69's, the ridge on the codes' 64 principal axes, alpha 80; run 94)"


def sample(data: Path, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` tiles drawn without replacement (seeded) and their labels."""
    ds = datasets.load(data / "manifest.csv")
    rows = np.sort(np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False))
    return [str(ds.paths[i]) for i in rows], np.asarray(ds.y)[rows]


def one_fit(params: dict[str, Any], X: list[str], y: np.ndarray) -> dict[str, float]:
    """Wall seconds of one fit and its stage seconds (``cnn``, ``zoom_cnn``, ``augment_cnn``, …)."""
    t = time.perf_counter()
    model = FastVLAD(**params, device="cpu").fit(X, y)
    return {"seconds": time.perf_counter() - t, **{k: float(v) for k, v in model.timings_.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", action="append", default=[], metavar="TEXT",
                    help="fit only the settings whose name contains TEXT (repeatable; today's default always runs)")
    args = ap.parse_args()
    if not (args.data / "manifest.csv").exists():
        raise SystemExit(f"no data at {args.data} (the shared nanofiber set); give --data")
    X, y = sample(args.data, args.images, args.seed)
    one_fit(SETTINGS[TODAY], X[::12], y[::12])  # untimed: the first fit opens the backbone (tiles of every class)
    names = [n for n in SETTINGS if n == TODAY or not args.only or any(t in n for t in args.only)]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            runs[name].append(one_fit(SETTINGS[name], X, y))
            print(f"round {r + 1}: {name}: {runs[name][-1]['seconds']:.1f} s", flush=True)
    only = "".join(f' --only "{t}"' for t in args.only)
    print(f"\n`python benchmarks/fit_time.py --images {args.images} --rounds {args.rounds}{only}`: {len(X)} tiles\n")
    print("| setting | fit s, median (range) | CNN s (images' own) | CNN s (copies) | × today's default, median (range) |")
    print("|---|---|---|---|---|")
    out = {}
    for name in names:
        secs = [run["seconds"] for run in runs[name]]
        ratios = [a["seconds"] / b["seconds"] for a, b in zip(runs[name], runs[TODAY])]
        cnn = statistics.median(run.get("cnn", 0.0) for run in runs[name])
        copies = statistics.median(copies_cnn_seconds(run) for run in runs[name])
        print(f"| {name} | {statistics.median(secs):.1f} ({min(secs):.1f}–{max(secs):.1f}) | {cnn:.1f} | {copies:.1f} "
              f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")
        out[name] = {"runs": runs[name], "ratio_to_today": ratios}
    if args.json:
        args.json.write_text(json.dumps({"images": len(X), "rounds": args.rounds, "settings": out}, indent=2))


if __name__ == "__main__":
    main()
