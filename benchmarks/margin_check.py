"""Do the answers an acquisition change flips lie where the model was unsure?

    python benchmarks/margin_check.py DUMP.npz [--out margins.md]

Reads the out-of-fold probabilities that ``benchmarks/head_check.py --dump`` writes (each row's mean
probability over its views, unchanged and under every change of the shift check) and, for each head
and split, ranks the answers by their **margin**: the unchanged answer's probability minus the
runner-up's. For the surest share of answers (all, 90 %, 80 %, ...) it prints the margin they
clear, their accuracy, and the share of them each change flips. If the flips gather at small
margins, a margin read at predict tells a user which answers would not survive another
acquisition; if they do not, no threshold on the answer's own probabilities does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fastvlad import intensity
from fastvlad.evaluate import (
    answer_margin,
    by_margin,
    shown_margins,
    steady_margin_text,
)

#: The shares of answers kept, surest first.
KEPT = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def kept_rows(m: np.ndarray, share: float) -> np.ndarray:
    """The ``share`` of rows with the largest margins ``m`` (ties broken by row order): ``(n,)`` bool."""
    order = np.argsort(-m, kind="stable")
    keep = np.zeros(len(m), dtype=bool)
    keep[order[: int(round(share * len(m)))]] = True
    return keep


def rows_by_margin(m: np.ndarray, pred: np.ndarray, after: dict[str, np.ndarray],
                   y: np.ndarray) -> list[dict[str, Any]]:
    """For each share of ``KEPT``: its margin floor, accuracy, and per change the share flipped among
    the kept answers. ``m`` the margins ``(n,)``; ``pred``, ``y`` and each change's answers ``after``
    ``(n,)`` str."""
    out = []
    for share in KEPT:
        keep = kept_rows(m, share)
        flips = {name: float((a[keep] != pred[keep]).mean()) for name, a in after.items()}
        acquisition = [v for n, v in flips.items() if n not in intensity.CONTROLS]
        out.append({"share": share, "floor": float(m[keep].min()), "n": int(keep.sum()),
                    "accuracy": float((pred[keep] == y[keep]).mean()), "max": max(acquisition),
                    "mean": float(np.mean(acquisition)), "flips": flips})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dump", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.dump.is_file():
        sys.exit(f"no dump at {args.dump} (write one with benchmarks/head_check.py --dump)")
    d = np.load(args.dump, allow_pickle=False)
    y, classes = d["y"].astype(str), d["classes"].astype(str)
    runs: dict[str, dict[str, np.ndarray]] = {}
    for key in d.files:
        if key.count(" | ") == 2:
            head, split, change = key.split(" | ")
            runs.setdefault(f"{head} | {split}", {})[change] = d[key]
    lines = [f"`python benchmarks/margin_check.py {args.dump.name}` ({len(y)} images)", ""]
    for name, probas in runs.items():
        before = probas.pop("(unchanged)")
        changes = list(probas)
        m, pred = answer_margin(before), classes[before.argmax(axis=1)]
        after = {c: classes[p.argmax(axis=1)] for c, p in probas.items()}
        lines += [f"{name}: the surest answers, their accuracy (pooled over the images), and the share of them "
                  "each change flips.", "",
                  "| answers kept | margin ≥ | images | accuracy | max flip | mean flip | "
                  + " | ".join(changes) + " |", "|---|---|---|---|---|---|" + "---|" * len(changes)]
        for r in rows_by_margin(m, pred, after, y):
            lines.append(f"| {r['share']:.0%} | {r['floor']:.3f} | {r['n']} | {r['accuracy']:.3f} | {r['max']:.3f} | "
                         f"{r['mean']:.3f} | " + " | ".join(f"{r['flips'][c]:.3f}" for c in changes) + " |")
        altered = {c: (np.ones(len(y), dtype=bool), a != pred) for c, a in after.items() if c not in intensity.CONTROLS}
        floors = by_margin(m, pred == y, altered)
        lines += ["", "The same by fixed margins, as `fastvlad evaluate --shift` reports them "
                  f"(`evaluate.by_margin`): {steady_margin_text(floors)}.", "",
                  "| margin ≥ | answers kept | accuracy | the others' accuracy | max flip |", "|---|---|---|---|---|"]
        lines += [f"| {r['margin']:.2f} | {r['kept']:.3f} | {r['accuracy']:.3f} | "
                  f"{'–' if r['accuracy_rest'] is None else format(r['accuracy_rest'], '.3f')} | {r['max_flipped']:.3f} |"
                  for r in floors if r in shown_margins(floors) or r["margin"] in (0.08, 0.12)]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
