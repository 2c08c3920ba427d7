"""Issue 15: does int8 change the answers? Codes, predictions and cross-validated accuracy at
float32 and int8 on a labelled dataset (the nanofiber SEM tiles), with the same folds.

    python benchmarks/int8_accuracy.py ../shared/datasets/nanofiber-sem/manifest.csv \
        [--image-size 112x164] [--json out.json]

Three encodings of every image, the CNN once per image each:
  A. float32: codebook (PCA + k-means) fitted on float32 hypercolumns, codes at float32;
  B. int8: the same fitted on int8 hypercolumns, codes at int8 (the whole pipeline at int8);
  C. A's codebook, codes from the int8 CNN (a float32 model switched to int8).
  D. (control) float32 again with the next seed (other codebook sample, points and trees).
Then: per-image Pearson correlation of C's codes with A's (minimum, percentiles); grouped 5-fold
CV (``evaluate.folds`` on the ``group`` column, as ``fastvlad evaluate``) and leave-one-series-out
(one fold per ``series``) accuracy of A, B and D on the same folds; and the share of out-of-fold
predictions that change from A to B, from A to C (A's classifiers given C's codes) and from A to D
(how much a refitted pipeline moves without any change of precision).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.base import clone

from fastvlad import FastVLAD, datasets
from fastvlad.checks import parse_image_size
from fastvlad.encoder import Encoder
from fastvlad.evaluate import folds


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


def out_of_fold(est: FastVLAD, codes: np.ndarray, y: np.ndarray, fold: np.ndarray,
                other: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Out-of-fold predictions from classifiers trained on ``codes``; and, given ``other`` codes of
    the same images, those classifiers' predictions on them."""
    pred = np.empty(len(y), dtype=object)
    pred_other = np.empty(len(y), dtype=object) if other is not None else None
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        model = clone(est).fit_codes(codes[train], y[train])
        pred[test] = model.classes_[model.predict_proba_codes(codes[test]).argmax(axis=1)]
        if other is not None:
            pred_other[test] = model.classes_[model.predict_proba_codes(other[test]).argmax(axis=1)]  # type: ignore[index]
    return pred, pred_other


def accuracies(pred: np.ndarray, y: np.ndarray, fold: np.ndarray) -> dict[str, object]:
    per_fold = [float((pred[fold == f] == y[fold == f]).mean()) for f in np.unique(fold)]
    return {"mean": float(np.mean(per_fold)), "std": float(np.std(per_fold)), "pooled": float((pred == y).mean()),
            "folds": per_fold}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--image-size", default="112x164")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    ds = datasets.load(args.data)
    series = None
    if args.data.suffix == ".csv":  # the series of every image, by its path (not by row order)
        of = {(args.data.parent / r["path"]).resolve(): r.get("series") for r in _rows(args.data)}
        series = np.array([of[p.resolve()] for p in ds.paths]) if all(of.values()) else None
    X, y = [str(p) for p in ds.paths], ds.y
    params = dict(image_size=parse_image_size(args.image_size), random_state=args.seed, device="cpu")
    est32, est8 = FastVLAD(**params), FastVLAD(precision="int8", **params)
    print(f"{len(X)} images, image size {args.image_size}; start: {load_note()}", flush=True)
    t = time.perf_counter()
    enc32 = Encoder.of(est32).fit_codebook(X, int(est32.k), int(est32.codebook_images))
    a = enc32.encode(X)
    t_a = time.perf_counter() - t
    print(f"A (float32) encoded in {t_a:.0f} s", flush=True)
    t = time.perf_counter()
    enc8 = Encoder.of(est8).fit_codebook(X, int(est8.k), int(est8.codebook_images))
    b = enc8.encode(X)
    t_b = time.perf_counter() - t
    print(f"B (int8) encoded in {t_b:.0f} s", flush=True)
    c = replace(enc32, cnn=enc8.cnn).encode(X)
    print(f"C (float32 codebook, int8 CNN) encoded; {load_note()}", flush=True)
    est_d = FastVLAD(**{**params, "random_state": args.seed + 1})
    d = Encoder.of(est_d).fit_codebook(X, int(est_d.k), int(est_d.codebook_images)).encode(X)
    print(f"D (float32, seed {args.seed + 1}) encoded; {load_note()}", flush=True)
    assert len(a.indices) == len(b.indices) == len(c.indices) == len(d.indices) == len(X), "an image was unreadable"

    corr = np.array([np.corrcoef(u, v)[0, 1] for u, v in zip(a.codes, c.codes)])
    result: dict[str, object] = {
        "images": len(X), "image_size": args.image_size, "seed": args.seed,
        "int8_graph_sha256": enc8.cnn.graph_sha256, "encode_seconds": {"fp32": t_a, "int8": t_b},
        "code_correlation": {"min": float(corr.min()), "p1": float(np.percentile(corr, 1)),
                             "median": float(np.median(corr)), "argmin": X[int(corr.argmin())]}}
    schemes = {"grouped 5-fold": folds(y, ds.groups, 5, args.seed)}
    if series is not None:
        names = sorted(set(series))
        schemes["leave-one-series-out"] = np.array([names.index(s) for s in series])
    for name, fold in schemes.items():
        pa, pc = out_of_fold(est32, a.codes, y, fold, c.codes)
        pb, _ = out_of_fold(est8, b.codes, y, fold)
        pd, _ = out_of_fold(est_d, d.codes, y, fold)
        result[name] = {"fp32": accuracies(pa, y, fold), "int8": accuracies(pb, y, fold),
                        "fp32_next_seed": accuracies(pd, y, fold),
                        "changed_fp32_to_int8_pipeline": float((pa != pb).mean()),
                        "changed_fp32_model_at_int8": float((pa != pc).mean()),
                        "changed_fp32_to_fp32_next_seed": float((pa != pd).mean()), "folds": int(len(np.unique(fold)))}
    result["load_end"] = load_note()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def _rows(manifest: Path) -> list[dict[str, str]]:
    import csv

    with open(manifest, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


if __name__ == "__main__":
    main()
