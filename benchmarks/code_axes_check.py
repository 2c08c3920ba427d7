"""The linear head on the codes' principal axes (``code_pca``): more accurate and steadier on new series?

    python benchmarks/code_axes_check.py --cache DIR [--data ../shared/datasets/nanofiber-sem] [--seeds 0 1 2]
        [--dims 64 128] [--alphas 20 40 80] [--stretch LO HI] [--xgboost] [--k K ...]
        [--whiten-power P ...] [--softness B ...] [--power] [--out F]

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
``--xgboost`` adds the paper's kind of head, XGBoost at the estimator's settings (``classifier="xgboost"``:
100 rounds, depth 3, 32 bins, balanced weights), on the codes and on each ``--dims``' axes (the
library's XGBoost head ignores ``code_pca``; here the axes are applied as the linear head applies them).
``--k K ...`` adds, per K, a codebook of K centres drawn from the cached points
(``codebooks_check.other_centres``: k-means on 500 points of each of 100 seeded images), every head
fitted on its codes too; K = 100 there is the default's size drawn anew, which tells the k-means
draw from the codebook's size. ``--whiten-power P ...`` adds, for each ``--dims`` and ``--alphas``, the
head with each axis divided by its standard deviation to the power P (``classifier.CODE_WHITEN_POWER``,
the default 0.5; 0: the principal axes as they are, 1: fully whitened) — set for that head's fit only.
``--softness B ...`` adds, per B, the codes of the default's codebook at soft assignment's ``softness``
B (the default's 10; larger is nearer the nearest centre alone), every head fitted on them too.
``--power`` adds the default codebook's codes with the signed square root of every residual sum before
the per-centre L2 (``power=True``, ``--power``), every head fitted on them too.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from codebooks_check import code_sets, other_centres
from head_check import (
    Head,
    command_line,
    estimator_head,
    scored,
    shift_data,
    table_row,
    write,
)
from vlad_check import DATA, cached_points

from fastvlad import classifier, intensity
from fastvlad.encoder import Encoder
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import folds


@dataclass(frozen=True)
class BoosterHead:
    """An XGBoost booster on the codes, or on their ``CodeAxes`` when ``axes`` is set."""

    booster: Any
    axes: classifier.CodeAxes | None = None

    def features(self, codes: np.ndarray) -> np.ndarray:
        """What the booster sees of codes ``(n, D)``: ``(n, D or d)`` float32."""
        return np.asarray(codes if self.axes is None else self.axes.apply(codes), dtype=np.float32)

    def predict_proba(self, codes: np.ndarray) -> np.ndarray:
        return classifier.predict_proba(self.booster, self.features(codes))


def booster_head(codes: np.ndarray, y: np.ndarray, n_classes: int, dims: int | None = None) -> BoosterHead:
    """The estimator's XGBoost head (``classifier="xgboost"``, its defaults, balanced weights) fitted
    on codes ``(n, D)``, or on their first ``dims`` ``CodeAxes``."""
    head = BoosterHead(None, classifier.CodeAxes.fit(codes, dims) if dims else None)
    booster = FastVLAD(classifier="xgboost").fit_codes(head.features(codes), y).head_
    return BoosterHead(booster, head.axes)


def whitened_head(codes: np.ndarray, y: np.ndarray, n_classes: int, power: float, **params: Any) -> Any:
    """``estimator_head`` with ``classifier.CODE_WHITEN_POWER`` at ``power`` while it fits (its
    ``CodeAxes`` keep the axes so scaled, so predicting needs nothing set)."""
    keep = classifier.CODE_WHITEN_POWER
    classifier.CODE_WHITEN_POWER = power
    try:
        return estimator_head(codes, y, n_classes, **params)
    finally:
        classifier.CODE_WHITEN_POWER = keep


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
    ap.add_argument("--xgboost", action="store_true", help="also the XGBoost head, on the codes and on each "
                    "--dims' axes")
    ap.add_argument("--k", type=int, nargs="*", default=[], help="also codebooks of these sizes, drawn from the "
                    "cached points")
    ap.add_argument("--whiten-power", type=float, nargs="*", default=[], help="also the code-axes heads with each "
                    "axis divided by its standard deviation to these powers (the default's: 0.5)")
    ap.add_argument("--softness", type=float, nargs="*", default=[], help="also the default codebook's codes at "
                    "these softnesses (the default's: 10)")
    ap.add_argument("--power", action="store_true", help="also the default codebook's codes with the signed "
                    "square root (power normalisation)")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = ap.parse_args(argv)
    intensity.STRETCH_PERCENTILES = tuple(args.stretch)  # the cached points record it (vlad_check.Points)
    X, y, groups, series, rows = shift_data(args.data)
    changes = {**intensity.SHIFTS, **intensity.CONTROLS}
    names = list(changes)
    heads: dict[str, Head] = {"ridge, alpha 20 (the default until run 94)": functools.partial(estimator_head, classifier="ridge", alpha=20.0)}
    heads.update({f"code_pca {d}, alpha {a:g}": functools.partial(estimator_head, classifier="ridge", alpha=a,
                                                                  code_pca=d)
                  for d in args.dims for a in args.alphas})
    heads.update({f"code_pca {d}, alpha {a:g}, whitening power {p:g}":
                  functools.partial(whitened_head, power=p, classifier="ridge", alpha=a, code_pca=d)
                  for d in args.dims for a in args.alphas for p in args.whiten_power})
    if args.xgboost:
        heads["xgboost on the codes"] = booster_head
        heads.update({f"xgboost on code_pca {d}": functools.partial(booster_head, dims=d) for d in args.dims})
    lines = [f"`{command_line('code_axes_check.py', argv)}` — {platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}",
             "", "| seed | head | split | accuracy | max flip | mean flip | max right→wrong | " + " | ".join(names) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(names)]
    for seed in args.seeds:
        pts = cached_points(args.data, args.cache, seed, names)
        est = FastVLAD(random_state=seed)
        encoder = Encoder.of(est).fit_codebook(X, int(est.k), int(est.codebook_images))
        books = {"": (np.asarray(encoder.centres), 10.0, False)}
        books.update({f"; k {k} drawn from the points": (other_centres(pts.images, seed, 1, k), 10.0, False)
                      for k in args.k})
        books.update({f"; softness {b:g}": (np.asarray(encoder.centres), b, False) for b in args.softness})
        if args.power:
            books["; signed square root"] = (np.asarray(encoder.centres), 10.0, True)
        splits = {"leave-one-series-out": np.unique(series, return_inverse=True)[1],
                  "grouped 5-fold": folds(y, groups, 5, seed, None)}
        for book, (centres, softness, power) in books.items():
            t = time.perf_counter()
            codes = code_sets(pts, centres, softness, power)
            print(f"seed {seed}{book}: codes in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
            cs = argparse.Namespace(codes=codes["images"], augmented=codes["copies"], augmented_of=np.arange(len(X)),
                                    views=[codes["mirror"]])
            changed = {name: [codes[f"{name}/{v}"] for v in (0, 1)] for name in names}
            for name, head in heads.items():
                for split_name, fold in splits.items():
                    r = scored(head, cs, y, fold, rows, changed)
                    lines.append(f"| {seed} " + table_row(name + book, split_name, r, names))
                    print(lines[-1], file=sys.stderr, flush=True)
            del codes, cs, changed
    write(lines, args.out)


if __name__ == "__main__":
    main()
