"""Whole micrographs wrong on a new series: their texture scale, and each image at the zoom that
brings its scale to the set's median.

    python benchmarks/scale_check.py [--data ../shared/datasets/nanofiber-sem] [--seeds 0 1 2] [--cache DIR] [--out F]
        [--shift]

On a new series the default's errors fall on whole micrographs (every tile of one right, every tile of
another wrong). A micrograph's tiles share its magnification and fibres, so this script measures each
image's **texture scale** (``texture_scale``: the half-width at half maximum of the radially averaged
autocorrelation of the image minus its smooth background, in pixels of the file) and lists, per
micrograph, the median scale and the share of its tiles the default gets right under
leave-one-series-out.

It then encodes every image a second time at the zoom that brings its scale to the median scale of the
set (``zoom_for``: reference / scale, clipped to 0.5–2 and rounded to one of ``LEVELS`` so that images
of one zoom share the input size), with the default's codebook (one PCA and codebook shared by the
folds, as ``evaluate.encode_images`` fits them) and its mirror view, and fits the default's head (ridge,
alpha 20, balanced) per fold on:

- ``the default``: the codes at the input size, with the default's jittered copies at 1.2×;
- ``the default, no copies``: the same without the copies;
- ``scale-normalised``: the codes at each image's own zoom (no copies);
- ``mean of both heads``: the mean of the first and third rows' probabilities;
- ``¾ the default + ¼ scale-normalised``: their probabilities weighted 3 : 1 (added after seeds 0
  and 1 had been read, at the one weight tried: seeds 2 on are its fair check);
- ``both codes side by side (no copies)``: one head on the two codes concatenated (each half / √2).

Every row predicts the mean over the image and its mirror. The scale is measured on the unlabelled
image, so the reference (the median over all 1,035 images) uses no label; a model would keep the
median of its training images. The images' scales do not depend on the seed (``--cache`` keeps them,
and every seed's codes).

With ``--shift``, at the first seed, the shift check's 200 images (``evaluate.shift_sample`` at seed
0) are re-predicted under every change of ``intensity.SHIFTS`` and the control by the
leave-one-series-out head that held them out, for ``the default`` and ``both codes side by side``; a
changed image's texture scale, and so its zoom, is measured on the changed image.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from head_check import DATA, command_line, mean_proba, shift_data, write
from PIL import Image
from scipy import ndimage

from fastvlad import classifier, intensity
from fastvlad.encoder import Encoder, View
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import changed_shares, encode_images, folds
from fastvlad.images import Transformed

#: The zooms an image may be encoded at (images of one zoom are batched together).
LEVELS = np.array([0.5, 0.6, 0.7, 0.85, 1.0, 1.2, 1.4, 1.7, 2.0])
#: Sigma (px) of the smooth background taken off before the autocorrelation (uneven illumination).
BACKGROUND_SIGMA = 30.0


def texture_scale(values: np.ndarray) -> float:
    """Half-width at half maximum (px, interpolated) of the radially averaged autocorrelation of a
    gray image ``(H, W)`` minus its Gaussian-smoothed background: about the width of its fibres."""
    a = values.astype(np.float64)
    a = a - ndimage.gaussian_filter(a, BACKGROUND_SIGMA)
    power = np.abs(np.fft.fft2(a)) ** 2
    ac = np.fft.fftshift(np.real(np.fft.ifft2(power)))
    ac /= ac.max()
    cy, cx = np.array(ac.shape) // 2
    yy, xx = np.indices(ac.shape)
    radius = np.hypot(yy - cy, xx - cx).astype(int).ravel()
    profile = np.bincount(radius, ac.ravel()) / np.bincount(radius)
    below = np.flatnonzero(profile < 0.5)
    if not below.size:  # correlated across the whole image (e.g. flat): wider than any fibre here
        return float(len(profile))
    i = int(below[0])  # ≥ 1: the profile is 1 at radius 0
    return float(i - 1 + (profile[i - 1] - 0.5) / (profile[i - 1] - profile[i]))


def zoom_for(scales: np.ndarray, reference: float) -> np.ndarray:
    """Per image ``(n,)``: the zoom of ``LEVELS`` nearest (in log) to reference / scale, clipped to
    the levels' range (an image with wide fibres shrinks, one with thin fibres grows)."""
    wanted = reference / np.clip(scales, reference / LEVELS[-1], reference / LEVELS[0])
    return LEVELS[np.abs(np.log(wanted)[:, None] - np.log(LEVELS)[None, :]).argmin(axis=1)]


def scales_of(X: list[str], cache: Path | None) -> np.ndarray:
    """``texture_scale`` of every image ``(n,)`` float64 (read from / kept in ``cache``)."""
    path = cache / "scales.npy" if cache else None
    if path and path.is_file():
        return np.load(path)
    scales = np.array([texture_scale(np.asarray(Image.open(p).convert("L"))) for p in X])
    if path:
        np.save(path, scales)
    return scales


def codes_of(X: list[str], seed: int, zooms: np.ndarray, cache: Path | None) -> dict[str, np.ndarray]:
    """The default's codes, copies (and the row each was made from) and mirror, and the codes at each
    image's zoom and their mirror, with the default's codebook at ``seed``."""
    path = cache / f"codes{seed}.npz" if cache else None
    if path and path.is_file():
        with np.load(path) as z:
            return dict(z)
    cs = encode_images(FastVLAD(random_state=seed), X)
    if len(cs.indices) != len(X):
        sys.exit("every image must read")
    scaled, scaled_mirror = np.zeros_like(cs.codes), np.zeros_like(cs.codes)
    for z in np.unique(zooms):
        idx = np.flatnonzero(zooms == z)
        sources = [X[i] for i in idx]
        scaled[idx] = cs.encoder.encode_view(sources, View(0, float(z))).rows(len(sources))
        scaled_mirror[idx] = cs.encoder.encode_view(sources, View(1, float(z))).rows(len(sources))
    out: dict[str, Any] = {  # Any: savez also takes allow_pickle by keyword
        "codes": cs.codes, "mirror": cs.views[0], "copies": cs.augmented, "copy_of": cs.augmented_of,
        "scaled": scaled, "scaled_mirror": scaled_mirror}
    if path:
        np.savez(path, **out)
    return out


#: The codes a row predicts from, per image: at the input size and mirrored, at its own zoom and mirrored.
VIEWS = ("codes", "mirror", "scaled", "scaled_mirror")
#: A fitted row: the test images' ``VIEWS`` ``(m, D)`` each → probabilities ``(m, K)``.
Fitted = Callable[[dict[str, np.ndarray]], np.ndarray]
#: A row: fit on the training images of one fold (train mask ``(n,)``) → ``Fitted``.
Row = Callable[[np.ndarray], Fitted]


def predictors(c: dict[str, np.ndarray], yi: np.ndarray, n_classes: int) -> dict[str, Row]:
    """Each row's fit (on the training images of one fold), returning its predict."""
    def ridge(codes: np.ndarray, labels: np.ndarray) -> classifier.LinearHead:
        return classifier.train_ridge(codes, labels, n_classes, 20.0, classifier.balanced_weights(labels, n_classes))

    def side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a, b], axis=1) / np.sqrt(2.0)

    both = side(c["codes"], c["scaled"])  # every image's two codes side by side, made once

    def default(tr: np.ndarray) -> Fitted:
        copies = np.isin(c["copy_of"], np.flatnonzero(tr))
        head = ridge(np.concatenate([c["codes"][tr], c["copies"][copies]]),
                     np.concatenate([yi[tr], yi[c["copy_of"][copies]]]))
        return lambda te: mean_proba(head, [te["codes"], te["mirror"]])

    def plain(tr: np.ndarray) -> Fitted:
        head = ridge(c["codes"][tr], yi[tr])
        return lambda te: mean_proba(head, [te["codes"], te["mirror"]])

    def scaled(tr: np.ndarray) -> Fitted:
        head = ridge(c["scaled"][tr], yi[tr])
        return lambda te: mean_proba(head, [te["scaled"], te["scaled_mirror"]])

    def side_by_side(tr: np.ndarray) -> Fitted:
        head = ridge(both[tr], yi[tr])
        return lambda te: mean_proba(head, [side(te["codes"], te["scaled"]), side(te["mirror"], te["scaled_mirror"])])

    def mixed(weight: float) -> Row:
        """The default's and the scale-normalised head's probabilities, the latter weighted ``weight``."""
        def fit(tr: np.ndarray) -> Fitted:
            a, b = default(tr), scaled(tr)
            return lambda te: (1.0 - weight) * a(te) + weight * b(te)
        return fit

    return {"the default": default,
            "the default, no copies": plain,
            "scale-normalised": scaled,
            "mean of both heads": mixed(0.5),
            "¾ the default + ¼ scale-normalised": mixed(0.25),
            "both codes side by side (no copies)": side_by_side}


def fold_models(row: Row, fold: np.ndarray) -> dict[int, Fitted]:
    """``row`` fitted once per fold, on the images the fold holds out of ``fold`` ``(n,)``."""
    return {int(f): row(fold != f) for f in np.unique(fold)}


def out_of_fold(models: dict[int, Fitted], c: dict[str, np.ndarray], fold: np.ndarray, n_classes: int) -> np.ndarray:
    """Every image's class predicted by the fold that held it out ``(n,)`` int."""
    proba = np.zeros((len(fold), n_classes))
    for f, predict in models.items():
        proba[fold == f] = predict({v: c[v][fold == f] for v in VIEWS})
    return proba.argmax(axis=1)


def changed_classes(models: dict[int, Fitted], changed: dict[str, np.ndarray], fold: np.ndarray, rows: np.ndarray,
                    n_classes: int) -> np.ndarray:
    """The class of each of ``rows`` from its ``changed`` codes (``VIEWS``, ``(len(rows), D)`` each), by
    the fold that held it out ``(len(rows),)`` int."""
    proba = np.zeros((len(rows), n_classes))
    for f in np.unique(fold[rows]):
        at = np.flatnonzero(fold[rows] == f)
        proba[at] = models[int(f)]({v: changed[v][at] for v in VIEWS})
    return proba.argmax(axis=1)


def changed_codes(encoder: Encoder, X: list[str], rows: np.ndarray, reference: float) -> dict[str, dict[str, np.ndarray]]:
    """Per change: the changed images' codes ``(len(rows), D)`` at the input size and mirrored, and at
    the zoom of their own (changed) texture scale and mirrored."""
    out = {}
    for name, fn in {**intensity.SHIFTS, **intensity.CONTROLS}.items():
        sources = [Transformed(X[int(r)], fn, name) for r in rows]
        zooms = zoom_for(np.array([texture_scale(fn(np.asarray(Image.open(X[int(r)]).convert("L"), dtype=np.float32)))
                                   for r in rows]), reference)
        got = {"codes": encoder.encode(sources).rows(len(rows)),
               "mirror": encoder.encode_view(sources, View(1)).rows(len(rows))}
        got["scaled"], got["scaled_mirror"] = np.zeros_like(got["codes"]), np.zeros_like(got["codes"])
        for z in np.unique(zooms):
            at = np.flatnonzero(zooms == z)
            part = [sources[i] for i in at]
            got["scaled"][at] = encoder.encode_view(part, View(0, float(z))).rows(len(at))
            got["scaled_mirror"][at] = encoder.encode_view(part, View(1, float(z))).rows(len(at))
        out[name] = got
    return out


def parser(doc: str, cache: str) -> argparse.ArgumentParser:
    """The options this script and ``weight_check.py`` share: ``--data``, ``--seeds``, ``--cache``
    (helped by ``cache``) and ``--out``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--cache", type=Path, default=None, help=cache)
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown tables here")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, "keep (and reuse) the scales and each seed's codes here")
    ap.add_argument("--shift", action="store_true",
                    help="at the first seed, re-predict the shift check's 200 images under every change")
    args = ap.parse_args(argv)
    X, y, groups, series, shift_rows = shift_data(args.data)
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    classes, yi = np.unique(y, return_inverse=True)
    names = list(np.unique(series))
    loso = np.unique(series, return_inverse=True)[1]
    t = time.perf_counter()
    scales = scales_of(X, args.cache)
    reference = float(np.median(scales))
    zooms = zoom_for(scales, reference)
    lines = [f"`{command_line('scale_check.py', argv)}` — {platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"Texture scale over the {len(X)} images (px): 5th, 25th, 50th, 75th, 95th percentile "
             + ", ".join(f"{v:.2f}" for v in np.percentile(scales, [5, 25, 50, 75, 95]))
             + "; zooms (images): " + ", ".join(f"{z:g} ({n})" for z, n in zip(*np.unique(zooms, return_counts=True))), ""]
    table = ["| row | split | accuracy | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for seed in args.seeds:
        c = codes_of(X, seed, zooms, args.cache)
        print(f"seed {seed}: codes in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        fits = predictors(c, yi, len(classes))
        splits = {"leave-one-series-out": loso, "grouped 5-fold": folds(y, groups, 5, seed, None)}
        for split, fold in splits.items():
            for name, row in fits.items():
                pred = out_of_fold(fold_models(row, fold), c, fold, len(classes))
                acc = np.mean([np.mean(pred[fold == f] == yi[fold == f]) for f in np.unique(fold)])
                per = [f"{np.mean(pred[series == s] == yi[series == s]):.2f}" if split == loso_name(splits) else "–"
                       for s in names]
                table.append(f"| {name}, seed {seed} | {split} | **{acc:.3f}** | " + " | ".join(per) + " |")
                print(table[-1], file=sys.stderr, flush=True)
                if seed == args.seeds[0] and split == loso_name(splits) and name == "the default":
                    lines += micrograph_table(groups, series, scales, zooms, pred == yi)
    if args.shift:
        table += ["", shift_table(X, y, loso, shift_rows, args.seeds[0], reference, codes_of(X, args.seeds[0], zooms, args.cache))]
    write(lines + table + [""], args.out)


#: The rows the shift check re-predicts.
SHIFT_ROWS = ("the default", "both codes side by side (no copies)")


def shift_table(X: list[str], y: np.ndarray, loso: np.ndarray, rows: np.ndarray, seed: int, reference: float,
                c: dict[str, np.ndarray]) -> str:
    """The share of ``rows``' leave-one-series-out answers each change flips, for ``SHIFT_ROWS``."""
    est = FastVLAD(random_state=seed)
    encoder = Encoder.of(est).fit_codebook(X, int(est.k), int(est.codebook_images))  # the codebook codes_of used
    changed = changed_codes(encoder, X, rows, reference)
    classes, yi = np.unique(y, return_inverse=True)
    names = list(changed)
    out = [f"Seed {seed}, leave-one-series-out: the share of the {len(rows)} images' answers each change flips.", "",
           "| row | max flip | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for name in SHIFT_ROWS:
        models = fold_models(predictors(c, yi, len(classes))[name], loso)  # one fit per fold, for every change
        before = classes[out_of_fold(models, c, loso, len(classes))[rows]].astype(str)
        flips = {n: changed_shares(y[rows], before, classes[changed_classes(models, changed[n], loso, rows, len(classes))]
                                   .astype(str))["flipped"] for n in names}
        largest = max(v for n, v in flips.items() if n not in intensity.CONTROLS)
        out.append(f"| {name} | **{largest:.3f}** | " + " | ".join(f"{flips[n]:.3f}" for n in names) + " |")
        print(out[-1], file=sys.stderr, flush=True)
    return "\n".join(out)


def loso_name(splits: dict[str, np.ndarray]) -> str:
    """The leave-one-series-out split's name (the first)."""
    return next(iter(splits))


def micrograph_table(groups: np.ndarray, series: np.ndarray, scales: np.ndarray, zooms: np.ndarray,
                     right: np.ndarray) -> list[str]:
    """Per micrograph: series, tiles, median texture scale, median zoom, share right (the default, LOSO)."""
    out = ["Per micrograph, the default under leave-one-series-out (first seed):", "",
           "| micrograph | series | tiles | texture scale (px, median) | zoom (median) | right |", "|---|---|---|---|---|---|"]
    for g in sorted(np.unique(groups), key=lambda g: (series[groups == g][0], g)):
        m = groups == g
        out.append(f"| {g} | {series[m][0]} | {m.sum()} | {np.median(scales[m]):.1f} | {np.median(zooms[m]):g} | "
                   f"{right[m].mean():.2f} |")
    return out + [""]


if __name__ == "__main__":
    main()
