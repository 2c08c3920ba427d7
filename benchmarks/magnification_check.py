"""How many answers on a new series change when the same field is imaged at a higher magnification.

    python benchmarks/magnification_check.py [--data ../shared/datasets/nanofiber-sem] [--seeds 0 1 2]
        [--only NAME ...] [--refit head|all] [--out F]

The shift check (``evaluate --shift``) changes an image's gray levels, focus and noise; a new series
also comes at another magnification. This script re-predicts the shift check's 200 out-of-fold images
(``evaluate.shift_sample`` at seed 0, the same rows as ``head_check.py`` and ``scale_check.py``), each
with the leave-one-series-out model that held it out, after ``intensity.magnified``: the centre 1/z of the tile
by 1/z of it, which the encoder brings to the same input size as the whole tile — the tile as a
microscope z times the magnification would show it, with z² less of the field. Only magnification up
can be made from a tile (down needs field the tile lacks).

The rows are the default and the options that give the head other magnifications at fit or predict
(``zoom``, ``zoom_jitter``, ``tta_zoom``); every row is ``evaluate.cross_validate`` and
``evaluate.shift_check`` as the CLI runs them (``--refit head``: one codebook shared by the folds, as
``fastvlad evaluate`` does by default; ``--refit all``: a whole fit per fold).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

from head_check import DATA, command_line, shift_data, write

from fastvlad import intensity
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import answer_margin, by_margin, cross_validate, shift_check

#: The magnifications tried (z: the tile's centre 1/z by 1/z, brought to the input size).
MAGNIFICATIONS = (1.1, 1.25, 1.5, 2.0)

#: The margin floor of the sure answers (README, "Sure answers"; ``predict --min-margin``).
SURE = 0.15

#: name → estimator parameters changed from the default.
VARIANTS: dict[str, dict[str, Any]] = {
    "the default (jittered copy at 1.2)": {},
    "no zoomed copy (zoom=())": {"zoom": ()},
    "copies at 1.4 and 0.7, alpha 40 (run 45)": {"zoom": (1.4, 0.7), "zoom_jitter": False, "alpha": 40.0},
    "the default, tta_zoom=(0.7,)": {"tta_zoom": (0.7,)},
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", nargs="+", default=None, help="run the variants whose name contains one of these")
    ap.add_argument("--refit", choices=("head", "all"), default="head")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = ap.parse_args(argv)
    X, y, groups, series, _ = shift_data(args.data)
    # Named as the CLI's three (intensity.MAGNIFICATIONS), which shift_check records as kind "magnification";
    # ×1.1 is not one of them and is recorded as "acquisition". Only each change's shares are read here.
    changes = intensity.magnifications(MAGNIFICATIONS)
    names = [n for n in VARIANTS if args.only is None or any(o in n for o in args.only)]
    lines = [f"`{command_line('magnification_check.py', argv)}` — {platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}",
             "", "Per magnification: the share of the 200 answers changed / of the right ones made wrong / the "
             "accuracy after.", "",
             "| variant | seed | leave-one-series-out | accuracy on the 200 | " + " | ".join(changes) + " | seconds |",
             "|---|---|---|---|" + "---|" * len(changes) + "---|"]
    sure = ["", f"The sure answers (margin ≥ {SURE}): their share of the 200 and accuracy, and the share of them each "
            "magnification changes.", "",
            "| variant | seed | sure answers | their accuracy | " + " | ".join(changes) + " |",
            "|---|---|---|---|" + "---|" * len(changes)]
    for seed in args.seeds:
        for name in names:
            t = time.perf_counter()
            est = FastVLAD(random_state=seed, **VARIANTS[name])
            result = cross_validate(est, X, y, groups=groups, split=series, split_name="series", refit=args.refit)
            check = shift_check(result, X, n_images=200, shifts=changes, random_state=0)
            cells = [f"{c['flipped']:.3f} / {c['lost']:.3f} / {c['accuracy']:.3f}" for c in check.changes]
            lines.append(f"| {name} | {seed} | **{result.accuracy:.3f}** | {check.accuracy:.3f} | "
                         + " | ".join(cells) + f" | {time.perf_counter() - t:.0f} |")
            margin = answer_margin(result.proba[check.rows])
            right = result.y_pred[check.rows] == result.y_true[check.rows]
            at = [by_margin(margin, right, {n: check.changed_rows[n]}, grid=(SURE,))[0] for n in changes]
            sure.append(f"| {name} | {seed} | {at[0]['kept']:.3f} | {at[0]['accuracy']:.3f} | "
                        + " | ".join(f"{r['max_flipped']:.3f}" for r in at) + " |")
            print(lines[-1], sure[-1], sep="\n", file=sys.stderr, flush=True)
    write(lines + sure + [""], args.out)


if __name__ == "__main__":
    main()
