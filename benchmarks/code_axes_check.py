"""The linear head on the codes' principal axes (``code_pca``): more accurate and steadier on new series?

    python benchmarks/code_axes_check.py --cache DIR [--data ../shared/datasets/nanofiber-sem] [--seeds 0 1 2]
        [--dims 64 128] [--alphas 20 40 80] [--stretch LO HI] [--out F]

Per seed, the default's points (``benchmarks/vlad_check.py``'s cache: the projected hypercolumns of
every image, its mirror, its jittered copy at 1.2× and the shift check's 200 images under every
change; made there first when missing) are encoded with the default's codebook as the library
encodes them (``codebooks_check.code_sets``: soft assignment, softness 10). Each head is the
estimator's (``FastVLAD.fit_codes``: ridge, balanced) at ``alpha`` and ``code_pca`` (None: the
default until run 94), fitted per fold under leave-one-series-out and grouped 5-fold, re-predicting the 200
images under each change (``head_check.scored``). With ``code_pca=d`` the head is fitted on the
training codes' first d principal axes, each divided by the square root of its standard deviation,
each code unit length there (``classifier.CodeAxes``), and predicts through them. ``--stretch LO HI``
sets the stretch's percentiles (``intensity.STRETCH_PERCENTILES``, default 1 99) for the whole run;
``vlad_check.Points`` records them with the cached points and refuses points of other percentiles.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from pathlib import Path

import numpy as np
from codebooks_check import code_sets
from head_check import (
    command_line,
    estimator_head,
    scored,
    shift_data,
    table_row,
    write,
)
from vlad_check import DATA, cached_points

from fastvlad import intensity
from fastvlad.encoder import Encoder
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import folds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--cache", type=Path, required=True, help="vlad_check.py's --cache folder (the points are made "
                    "there first when missing)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--alphas", type=float, nargs="+", default=[20.0, 40.0, 80.0])
    ap.add_argument("--stretch", type=float, nargs=2, default=list(intensity.STRETCH_PERCENTILES),
                    metavar=("LO", "HI"), help="the stretch's percentiles for this run (default 1 99)")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = ap.parse_args(argv)
    intensity.STRETCH_PERCENTILES = tuple(args.stretch)  # the cached points record it (vlad_check.Points)
    X, y, groups, series, rows = shift_data(args.data)
    changes = {**intensity.SHIFTS, **intensity.CONTROLS}
    names = list(changes)
    heads = {"ridge, alpha 20 (the default until run 94)": functools.partial(estimator_head, classifier="ridge", alpha=20.0)}
    heads.update({f"code_pca {d}, alpha {a:g}": functools.partial(estimator_head, classifier="ridge", alpha=a,
                                                                  code_pca=d)
                  for d in args.dims for a in args.alphas})
    lines = [f"`{command_line('code_axes_check.py', argv)}` — {platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}",
             "", "| seed | head | split | accuracy | max flip | mean flip | max right→wrong | " + " | ".join(names) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(names)]
    for seed in args.seeds:
        pts = cached_points(args.data, args.cache, seed, names)
        est = FastVLAD(random_state=seed)
        encoder = Encoder.of(est).fit_codebook(X, int(est.k), int(est.codebook_images))
        t = time.perf_counter()
        codes = code_sets(pts, np.asarray(encoder.centres))
        print(f"seed {seed}: codes in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        cs = argparse.Namespace(codes=codes["images"], augmented=codes["copies"], augmented_of=np.arange(len(X)),
                                views=[codes["mirror"]])
        changed = {name: [codes[f"{name}/{v}"] for v in (0, 1)] for name in names}
        splits = {"leave-one-series-out": np.unique(series, return_inverse=True)[1],
                  "grouped 5-fold": folds(y, groups, 5, seed, None)}
        for name, head in heads.items():
            for split_name, fold in splits.items():
                r = scored(head, cs, y, fold, rows, changed)
                lines.append(f"| {seed} " + table_row(name, split_name, r, names))
                print(lines[-1], file=sys.stderr, flush=True)
    write(lines, args.out)


if __name__ == "__main__":
    main()
