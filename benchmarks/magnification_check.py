"""How many answers on a new series change when the same field is imaged at a higher magnification.

    python benchmarks/magnification_check.py [--data ../shared/datasets/nanofiber-sem] [--seeds 0 1 2]
        [--only NAME ...] [--refit head|all] [--acquisition] [--out F]

The shift check (``evaluate --shift``) changes an image's gray levels, focus and noise; a new series
also comes at another magnification. This script re-predicts the shift check's 200 out-of-fold images
(``evaluate.shift_sample`` at seed 0, the same rows as ``head_check.py`` and ``scale_check.py``), each
with the leave-one-series-out model that held it out, after ``intensity.magnified``: the centre 1/z of the tile
by 1/z of it, which the encoder brings to the same input size as the whole tile — the tile as a
microscope z times the magnification would show it, with z² less of the field. Only magnification up
can be made from a tile (down needs field the tile lacks).

The rows are the default (the head on the code axes since ACCURACY.md run 94; runs 84–87 ran the head
on the codes, the row now named "the default until run 94") and the options that give the head other
magnifications at fit or predict (``zoom``, ``zoom_jitter``, ``tta_zoom``); every row is ``evaluate.cross_validate`` and
``evaluate.shift_check`` as the CLI runs them (``--refit head``: one codebook shared by the folds, as
``fastvlad evaluate`` does by default; ``--refit all``: a whole fit per fold). ``--acquisition`` also
re-predicts the 200 under the shift check's acquisition changes (``intensity.SHIFTS``) and adds a column,
the largest share one of them changes, of all answers and of the sure ones.

The "magnified crops" rows try a training copy the package does not have (ACCURACY.md run 85): every
training image also as a seeded crop of 1/z by 1/z of it at a random place, z log-uniform in a range,
flipped and re-exposed as ``zoom_jitter``'s copy is, at the input size — a copy at another magnification
for one CNN pass, as the shift check's magnification makes it. They are patched into
``training_copies`` for the run (``crop_copies``); the package keeps the resized copy (``zoom``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from head_check import DATA, command_line, shift_data, write

from fastvlad import encoder, estimator, evaluate, intensity
from fastvlad.encoder import Encoder, Timings, View
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import answer_margin, by_margin, cross_validate, shift_check
from fastvlad.images import Transformed

#: The magnifications tried (z: the tile's centre 1/z by 1/z, brought to the input size).
MAGNIFICATIONS = (1.1, 1.25, 1.5, 2.0)

#: The margin floor of the sure answers (README, "Sure answers"; ``predict --min-margin``).
SURE = 0.15

#: name → estimator parameters changed from the default.
VARIANTS: dict[str, dict[str, Any]] = {
    "the default (jittered copy at 1.2)": {},
    "the default until run 94 (the ridge on the codes, code_pca=None)": {"code_pca": None},
    "no zoomed copy (zoom=())": {"zoom": ()},
    "copies at 1.4 and 0.7, alpha 40 (run 45)": {"zoom": (1.4, 0.7), "zoom_jitter": False, "alpha": 40.0},
    "the default, tta_zoom=(0.7,)": {"tta_zoom": (0.7,)},
    "magnified crops 1–2× instead of the copy at 1.2": {"zoom": (), "crop": (1.0, 2.0)},
    "the default and magnified crops 1–2×": {"crop": (1.0, 2.0)},
    "the default and magnified crops 1–2×, alpha 40": {"crop": (1.0, 2.0), "alpha": 40.0},
}

#: Keeps the crops' seeds and points apart from other keyed draws ("CROP").
CROP_KEY = 0x43524F50


def crop_jittered(values: np.ndarray, seed: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    """A crop of ``values`` (H, W[, C]) float32 of 1/z by 1/z at a random place, z log-uniform in
    [``lo``, ``hi``], then flipped and re-exposed (``intensity.jitter``), all drawn from ``seed``."""
    rng = np.random.default_rng(list(seed))
    z = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    h, w = values.shape[:2]
    ch, cw = max(1, round(h / z)), max(1, round(w / z))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return intensity.jitter(np.ascontiguousarray(values[top:top + ch, left:left + cw]), rng)


@contextlib.contextmanager
def crop_copies(span: tuple[float, float] | None) -> Iterator[None]:
    """While open, ``training_copies`` (as ``fit`` and ``cross_validate`` call it) also returns one
    magnified crop (``crop_jittered``) of every training image, encoded at the input size; None: as it is."""
    if span is None:
        yield
        return
    plain = encoder.training_copies

    def with_crops(enc: Encoder, sources: Sequence[Any], indices: np.ndarray, augment: int, zoom: Sequence[float],
                   seed: int, timings: Timings, zoom_jitter: bool = False) -> tuple[np.ndarray, np.ndarray]:
        codes, rows = plain(enc, sources, indices, augment, zoom, seed, timings, zoom_jitter)
        crops = [Transformed(sources[int(i)], functools.partial(crop_jittered, seed=(seed, int(i), CROP_KEY, 0),
                                                                lo=span[0], hi=span[1]),
                             "magnified crop", points_key=(CROP_KEY, int(i), 0)) for i in indices]
        t, extra = time.perf_counter(), Timings()
        got = enc.encode_view(crops, View(0, 1.0), extra)
        timings.seconds["zoom_cnn"] += extra.seconds["cnn"]
        timings.seconds["zoom"] += time.perf_counter() - t
        return np.concatenate([codes, got.codes]), np.concatenate([rows, got.indices.astype(np.int64)])

    with mock.patch.object(estimator, "training_copies", with_crops), \
            mock.patch.object(evaluate, "training_copies", with_crops):
        yield


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", nargs="+", default=None, help="run the variants whose name contains one of these")
    ap.add_argument("--refit", choices=("head", "all"), default="head")
    ap.add_argument("--acquisition", action="store_true",
                    help="also the shift check's acquisition changes: the largest share one changes")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = ap.parse_args(argv)
    X, y, groups, series, _ = shift_data(args.data)
    # Named as the CLI's three (intensity.MAGNIFICATIONS), which shift_check records as kind "magnification";
    # ×1.1 is not one of them and is recorded as "acquisition". Only each change's shares are read here.
    changes = intensity.magnifications(MAGNIFICATIONS)
    shifts = {**changes, **(intensity.SHIFTS if args.acquisition else {})}
    acq = ["largest acquisition change"] if args.acquisition else []
    names = [n for n in VARIANTS if args.only is None or any(o in n for o in args.only)]
    lines = [f"`{command_line('magnification_check.py', argv)}` — {platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}",
             "", "Per magnification: the share of the 200 answers changed / of the right ones made wrong / the "
             "accuracy after" + ("; then the largest share one acquisition change alters." if acq else "."), "",
             "| variant | seed | leave-one-series-out (worst series) | accuracy on the 200 | "
             + " | ".join([*changes, *acq]) + " | seconds |",
             "|---|---|---|---|" + "---|" * (len(changes) + len(acq)) + "---|"]
    sure = ["", f"The sure answers (margin ≥ {SURE}): their share of the 200 and accuracy, and the share of them each "
            "magnification changes" + ("; then the most one acquisition change alters." if acq else "."), "",
            "| variant | seed | sure answers | their accuracy | " + " | ".join([*changes, *acq]) + " |",
            "|---|---|---|---|" + "---|" * (len(changes) + len(acq))]
    for seed in args.seeds:
        for name in names:
            t = time.perf_counter()
            params = dict(VARIANTS[name])
            crop = params.pop("crop", None)
            with crop_copies(crop):
                est = FastVLAD(random_state=seed, **params)
                result = cross_validate(est, X, y, groups=groups, split=series, split_name="series", refit=args.refit)
            check = shift_check(result, X, n_images=200, shifts=shifts, random_state=0)
            by_name = {c["name"]: c for c in check.changes}
            cells = [f"{by_name[n]['flipped']:.3f} / {by_name[n]['lost']:.3f} / {by_name[n]['accuracy']:.3f}"
                     for n in changes]
            cells += [f"{max(by_name[n]['flipped'] for n in intensity.SHIFTS):.3f}"] if acq else []
            lines.append(f"| {name} | {seed} | **{result.accuracy:.3f}** ({min(result.fold_accuracy):.2f}) | "
                         f"{check.accuracy:.3f} | " + " | ".join(cells) + f" | {time.perf_counter() - t:.0f} |")
            margin = answer_margin(result.proba[check.rows])
            right = result.y_pred[check.rows] == result.y_true[check.rows]
            at = [by_margin(margin, right, {n: check.changed_rows[n]}, grid=(SURE,))[0] for n in changes]
            if acq:  # the most one acquisition change alters among the sure answers
                at.append(by_margin(margin, right, {n: check.changed_rows[n] for n in intensity.SHIFTS}, grid=(SURE,))[0])
            sure.append(f"| {name} | {seed} | {at[0]['kept']:.3f} | {at[0]['accuracy']:.3f} | "
                        + " | ".join(f"{r['max_flipped']:.3f}" for r in at) + " |")
            print(lines[-1], sure[-1], sep="\n", file=sys.stderr, flush=True)
    write(lines + sure + [""], args.out)


if __name__ == "__main__":
    main()
