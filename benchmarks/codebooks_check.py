"""Several codebooks side by side ("multiple vocabularies"): does averaging out the k-means draw make
the default's answers more accurate or steadier on new series?

    python benchmarks/codebooks_check.py --cache DIR [--data ../shared/datasets/nanofiber-sem] [--seed 0]
        [--codebooks 1 2 3] [--out F]

The seed moves the default's leave-series-out mean over 0.748–0.776 (ACCURACY.md, run 72), partly
through the k-means draw. Here the default's points (``benchmarks/vlad_check.py``'s cache of the same
seed: the projected hypercolumns of every image, its mirror, its jittered copy at 1.2× and the shift
check's 200 images under every change) are encoded with M codebooks: the default's own
(``Encoder.fit_codebook``) and M − 1 more, each k-means (k = 100, the library's ``fit_kmeans``) on 500
points of each of 100 other seeded images in the same PCA space. Each codebook gives the library's
soft-assignment codes (``vlad.encode_soft``, softness 10, unit ``vlad.spacing``); the M codes are put
side by side, scaled by 1/√M, and the default's head (ridge, alpha 20, balanced) is fitted per fold
under leave-one-series-out and grouped 5-fold, re-predicting the 200 images under each change
(``head_check.scored``). M = 1 is the default on these points.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from pathlib import Path

import numpy as np
from head_check import (
    command_line,
    estimator_head,
    scored,
    shift_data,
    table_row,
    write,
)
from vlad_check import DATA, Points, cached_points

from fastvlad import codebook, intensity, vlad
from fastvlad.encoder import Encoder
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import folds

#: One codebook's codes of every array of ``Points``: ``images``, ``mirror``, ``copies``, and ``<change>/<view>``.
Codes = dict[str, np.ndarray]


def other_centres(points: np.ndarray, seed: int, m: int, k: int) -> np.ndarray:
    """Codebook ``m`` ≥ 1: k-means ``(k, p)`` float32 on 500 points of each of 100 images of ``points``
    ``(n, S, p)``, the images, points and k-means seeded by ``(seed, m)``."""
    rng = np.random.default_rng([seed, m])
    n, s = points.shape[:2]
    sample = np.concatenate([points[i][rng.choice(s, 500, replace=False)] for i in rng.choice(n, 100, replace=False)])
    centres, _ = codebook.fit_kmeans(sample.astype(np.float32), k, random_state=seed * 100 + m)
    return centres


def soft_codes(points: np.ndarray, centres: np.ndarray, batch: int = 32, softness: float = 10.0,
               power: bool = False) -> np.ndarray:
    """The library's soft-assignment codes (the default's softness 10, no signed square root) of ``(n, S, p)``
    points: ``(n, k·p)`` float32."""
    unit = vlad.spacing(centres)
    out = np.zeros((len(points), centres.size), np.float32)
    for a in range(0, len(points), batch):
        out[a:a + batch] = vlad.encode_soft(points[a:a + batch].astype(np.float32), centres, softness, power=power,
                                            unit=unit)
    return out


def code_sets(pts: Points, centres: np.ndarray, softness: float = 10.0, power: bool = False) -> Codes:
    """Every code the check needs, with one codebook (at ``softness``, with ``power``'s signed square root)."""
    codes = {"images": pts.images, "mirror": pts.mirror, "copies": pts.copies,
             **{f"{name}/{v}": arr for name, pair in pts.changed.items() for v, arr in enumerate(pair)}}
    return {key: soft_codes(p, centres, softness=softness, power=power) for key, p in codes.items()}


def side_by_side(parts: list[Codes]) -> Codes:
    """The codes of several codebooks side by side, scaled by 1/√M so that each stays unit length."""
    f = np.float32(1 / np.sqrt(len(parts)))
    return {key: np.concatenate([part[key] for part in parts], axis=1) * f for key in parts[0]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--cache", type=Path, required=True, help="vlad_check.py's --cache folder (the points are made "
                    "there first when missing)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--codebooks", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = ap.parse_args(argv)
    X, y, groups, series, rows = shift_data(args.data)
    changes = {**intensity.SHIFTS, **intensity.CONTROLS}
    pts = cached_points(args.data, args.cache, args.seed, list(changes))
    est = FastVLAD(random_state=args.seed)
    encoder = Encoder.of(est).fit_codebook(X, int(est.k), int(est.codebook_images))
    made: list[Codes] = []
    splits = {"leave-one-series-out": np.unique(series, return_inverse=True)[1],
              "grouped 5-fold": folds(y, groups, 5, args.seed, None)}
    names = list(changes)
    lines = [f"`{command_line('codebooks_check.py', argv)}` — {platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}",
             "", "| codebooks | split | accuracy | max flip | mean flip | max right→wrong | " + " | ".join(names) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(names)]
    for m in sorted(args.codebooks):
        while len(made) < m:
            t = time.perf_counter()
            centres = (np.asarray(encoder.centres) if not made else
                       other_centres(pts.images, args.seed, len(made), int(est.k)))
            made.append(code_sets(pts, centres))
            print(f"codebook {len(made)}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        codes = side_by_side(made[:m])
        cs = argparse.Namespace(codes=codes["images"], augmented=codes["copies"], augmented_of=np.arange(len(X)),
                                views=[codes["mirror"]])
        changed = {name: [codes[f"{name}/{v}"] for v in (0, 1)] for name in names}
        for split_name, fold in splits.items():
            r = scored(functools.partial(estimator_head, classifier="ridge", alpha=20.0), cs, y, fold, rows, changed)
            lines.append(table_row(str(m), split_name, r, names))
            print(lines[-1], file=sys.stderr, flush=True)
    write(lines, args.out)


if __name__ == "__main__":
    main()
