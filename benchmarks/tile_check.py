"""What a tile of the nanofiber set is: the whole source micrograph, translated by a few pixels.

    python benchmarks/tile_check.py [--data ../shared/datasets/nanofiber-sem] [--seeds 0 1 2] [--out F]

The data's README calls every image "a translated tile of one source micrograph". This script measures
what that means: per micrograph (the ``group`` column) it registers every tile on the first one by
phase correlation (scikit-image's ``phase_cross_correlation``, whole pixels) and reports the largest
translation and the correlation of the two tiles over their overlap once aligned. As a control, the
first tile of each micrograph is registered on the first tile of every other micrograph of its series
the same way, and the best match is reported (its correlation, translation and the share of the field
the two overlap). Most micrographs of one series do not correlate, so a high correlation within a
micrograph means the same field; a few pairs of micrographs do (``SAME_FIELD``), and are listed: they
are one field recorded twice, or two overlapping fields, under two names.

It also counts how many micrographs the shift check's sample covers (``evaluate.shift_sample`` as
``fastvlad evaluate --split series --shift`` draws it: 200 rows, seed 0, stratified by series and
class), and how many of its rows the most represented micrograph holds.

With ``--seeds``, it measures what the pairs of one field do to grouped 5-fold CV: per seed, the
default estimator's codes (one PCA and codebook shared by the folds, as ``evaluate.encode_images`` fits
them) and the ridge head on the codes (the default's until run 94: ``benchmarks/head_check.py``'s
``estimator_head``, the jittered copies
with their image, the mirror averaged at predict) fitted per fold of ``evaluate.folds`` grouped by the
``group`` column as it is, and grouped by field (each pair of ``SAME_FIELD`` one group), with how many
pairs the first grouping puts on both sides.
"""

from __future__ import annotations

import argparse
import platform
from collections import defaultdict
from pathlib import Path

import numpy as np
from head_check import (
    DATA,
    command_line,
    estimator_head,
    mean_proba,
    training_set,
    write,
)
from PIL import Image
from skimage.registration import phase_cross_correlation

from fastvlad import datasets
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import SHIFT_IMAGES, CodeSet, encode_images, folds, shift_sample

#: Two micrographs whose tiles correlate this much once aligned, over at least ``MIN_OVERLAP`` of the
#: field, are taken for the same field (a smaller overlap lets chance alignments correlate).
SAME_FIELD = 0.7
MIN_OVERLAP = 0.5


def read_gray(path: Path) -> np.ndarray:
    """The image as ``(h, w)`` float64 gray levels."""
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64)


def overlap(shift: tuple[int, int], shape: tuple[int, ...]) -> float:
    """The share of an ``(h, w)`` field two copies translated by ``shift`` ``(dy, dx)`` have in common."""
    (dy, dx), (h, w) = shift, shape[:2]
    return max(h - abs(dy), 0) * max(w - abs(dx), 0) / (h * w)


def registered(reference: np.ndarray, moving: np.ndarray) -> tuple[tuple[int, int], float]:
    """The whole-pixel translation ``(dy, dx)`` that aligns ``moving`` on ``reference`` (both ``(h, w)``)
    and the correlation of the two over their overlap once aligned."""
    shift, _, _ = phase_cross_correlation(reference, moving, normalization=None)
    dy, dx = (int(round(s)) for s in shift)
    h, w = reference.shape
    a = reference[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
    b = moving[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return (dy, dx), float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def distinct(names: list[str], same: list[tuple[str, str]]) -> int:
    """How many fields ``names`` hold when each pair of ``same`` is one field (pairs chain)."""
    parent = {n: n for n in names}

    def root(n: str) -> str:
        while parent[n] != n:
            n = parent[n]
        return n

    for a, b in same:
        parent[root(a)] = root(b)
    return len({root(n) for n in names})


def by_field(groups: np.ndarray, same: set[tuple[str, str]]) -> np.ndarray:
    """``groups`` ``(n,)`` with the second micrograph of each pair of ``same`` renamed to the first."""
    out = groups.copy()
    for a, b in sorted(same):
        out[out == b] = a
    return out


def grouped_accuracy(cs: CodeSet, y: np.ndarray, fold: np.ndarray) -> float:
    """The mean over folds of the default head's accuracy, fitted per fold on ``cs`` (its training
    images' codes and their copies) and averaging the views at predict; ``y``, ``fold``: ``(n,)``."""
    classes, yi = np.unique(y, return_inverse=True)
    right = np.empty(len(y), dtype=bool)
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        head = estimator_head(*training_set(cs, yi, train), len(classes))
        right[test] = mean_proba(head, [cs.codes[test], *(v[test] for v in cs.views)]).argmax(axis=1) == yi[test]
    return float(np.mean([right[fold == f].mean() for f in np.unique(fold)]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, nargs="*", default=[],
                    help="grouped 5-fold CV of the default at these seeds, by micrograph and by field")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = ap.parse_args(argv)
    ds = datasets.load(args.data)
    groups, series = np.asarray(ds.groups), np.asarray(ds.column("series"))
    tiles: dict[str, list[Path]] = defaultdict(list)
    for path, g in zip(ds.paths, groups.tolist()):
        tiles[g].append(Path(path))
    series_of = {g: s for g, s in zip(groups.tolist(), series.tolist())}
    first = {g: read_gray(ps[0]) for g, ps in tiles.items()}

    lines = [f"`{command_line('tile_check.py', argv)}` — {platform.processor() or platform.machine()}", "",
             "| micrograph | series | tiles | size (px) | largest translation (px) | correlation once aligned, "
             "min–median | best match among the series' other micrographs: correlation, translation, overlap |",
             "|---|---|---|---|---|---|---|"]
    largest, lowest = 0, 1.0
    same: set[tuple[str, str]] = set()
    for g in sorted(tiles, key=lambda g: (series_of[g], g)):
        pairs = [registered(first[g], read_gray(p)) for p in tiles[g][1:]]
        moved = max((max(abs(dy), abs(dx)) for (dy, dx), _ in pairs), default=0)
        corr = [c for _, c in pairs]
        others = {o: registered(first[g], first[o]) for o in tiles if o != g and series_of[o] == series_of[g]}
        best = max(others, key=lambda o: others[o][1], default=None)
        match = "– (one micrograph)"
        if best is not None:
            shift, c = others[best]
            share = overlap(shift, first[g].shape)
            match = f"{best}: {c:.3f}, ({shift[0]}, {shift[1]}) px, {share:.2f}"
            if c >= SAME_FIELD and share >= MIN_OVERLAP:
                same.add((min(g, best), max(g, best)))
        within = f"{min(corr):.3f}–{np.median(corr):.3f}" if corr else "– (one tile)"
        h, w = first[g].shape
        lines.append(f"| {g} | {series_of[g]} | {len(tiles[g])} | {w}×{h} | {moved} | {within} | {match} |")
        largest, lowest = max(largest, moved), min([lowest, *corr])
    n_fields = distinct(list(tiles), sorted(same))
    sample = shift_sample(series, np.asarray(ds.labels), SHIFT_IMAGES, 0)
    held, counts = np.unique(groups[sample], return_counts=True)
    lines += ["", f"Over the {len(tiles)} micrographs ({len(ds.paths)} tiles): the largest translation is "
              f"{largest} px, the lowest correlation of two tiles of one micrograph once aligned {lowest:.3f}.",
              f"Pairs of micrographs taken for one field (correlation ≥ {SAME_FIELD} over ≥ {MIN_OVERLAP:.0%} of "
              f"the field): {', '.join(' = '.join(p) for p in sorted(same)) or 'none'}; so {n_fields} distinct "
              f"fields among the {len(tiles)} micrographs.",
              f"The shift check's sample ({SHIFT_IMAGES} rows, seed 0, stratified by series and class) holds "
              f"{len(held)} of the {len(tiles)} micrographs, 1–{counts.max()} rows each (median "
              f"{int(np.median(counts))})."]
    if args.seeds:
        fields, y = by_field(groups, same), np.asarray(ds.labels).astype(str)  # (n,) each
        lines += ["", "| seed | grouped 5-fold, by micrograph | pairs of one field on both sides | grouped 5-fold, "
                  "by field |", "|---|---|---|---|"]
        for seed in args.seeds:
            cs = encode_images(FastVLAD(random_state=seed), [str(p) for p in ds.paths])
            by_micrograph = folds(y, groups, 5, seed)
            split = sum(by_micrograph[groups == a][0] != by_micrograph[groups == b][0] for a, b in same)
            lines.append(f"| {seed} | {grouped_accuracy(cs, y, by_micrograph):.3f} | {split} of {len(same)} | "
                         f"{grouped_accuracy(cs, y, folds(y, fields, 5, seed)):.3f} |")
            print(lines[-1], flush=True)
    write(lines, args.out)


if __name__ == "__main__":
    main()
