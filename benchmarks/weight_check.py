"""The default's head with each material series (or each micrograph) weighing the same within its class.

    python benchmarks/weight_check.py [--data ../shared/datasets/nanofiber-sem] [--seeds 0 1] [--cache DIR] [--out F]

The classes here are unevenly spread over series (NonDefective: `pancnt2` 184 tiles, `pp28` 29), so the
balanced head (each class the same total weight) learns a class mostly from its largest series. Each
row fits the default's head (ridge, alpha 20, on the images and their jittered copies at 1.2×, the
copies weighted as their image) per fold with other sample weights, each class still the same total:

- ``balanced (the default)``: every image of a class the same weight;
- ``series within class``: every (class, series) cell the same share of its class;
- ``micrograph within class``: every (class, micrograph) cell the same share;
- ``√(balanced × series within class)``: halfway, in log.

The codes are the default's (``scale_check.codes_of``: one codebook shared by the folds; ``--cache`` is
``scale_check.py``'s, whose codes are reused when there).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import numpy as np
from head_check import command_line, mean_proba, shift_data, write
from scale_check import codes_of, parser, scales_of, zoom_for

from fastvlad import classifier
from fastvlad.evaluate import folds


def within_class(labels: np.ndarray, cells: np.ndarray, n_classes: int) -> np.ndarray:
    """Sample weights ``(n,)``: each class ``n / n_classes`` in all, shared equally by its ``cells``
    (e.g. series) and equally by the images of a cell."""
    w = np.empty(len(labels))
    for c in np.unique(labels):
        rows = labels == c
        _, inverse, counts = np.unique(cells[rows], return_inverse=True, return_counts=True)
        w[rows] = 1.0 / (n_classes * counts.size * counts[inverse])
    return w * len(labels)


Weights = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]  # (labels, series, groups, K) → (n,)
WEIGHTS: dict[str, Weights] = {
    "balanced (the default)": lambda y, s, g, k: classifier.balanced_weights(y, k),
    "series within class": lambda y, s, g, k: within_class(y, s, k),
    "micrograph within class": lambda y, s, g, k: within_class(y, g, k),
    "√(balanced × series within class)": lambda y, s, g, k: np.sqrt(classifier.balanced_weights(y, k)
                                                                     * within_class(y, s, k)),
}


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, "scale_check.py's cache (codes reused, or kept)").parse_args(argv)
    X, y, groups, series, _ = shift_data(args.data)
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    scales = scales_of(X, args.cache)  # codes_of also encodes the scale-normalised view the cache keeps
    zooms = zoom_for(scales, float(np.median(scales)))
    classes, yi = np.unique(y, return_inverse=True)
    k, names = len(classes), list(np.unique(series))
    lines = [f"`{command_line('weight_check.py', argv)}` — {platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}", "",
             "| weights | split | accuracy | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for seed in args.seeds:
        c = codes_of(X, seed, zooms, args.cache)
        rows_series, rows_groups = np.concatenate([series, series[c["copy_of"]]]), np.concatenate([groups, groups[c["copy_of"]]])
        codes, labels = np.concatenate([c["codes"], c["copies"]]), np.concatenate([yi, yi[c["copy_of"]]])
        owner = np.concatenate([np.arange(len(yi)), c["copy_of"]])  # the image each training row is (a copy of)
        for split, fold in {"leave-one-series-out": np.unique(series, return_inverse=True)[1],
                            "grouped 5-fold": folds(y, groups, 5, seed, None)}.items():
            for name, weights in WEIGHTS.items():
                proba = np.zeros((len(yi), k))
                for f in np.unique(fold):
                    train = fold[owner] != f
                    head = classifier.train_ridge(codes[train], labels[train], k, 20.0,
                                                  weights(labels[train], rows_series[train], rows_groups[train], k))
                    proba[fold == f] = mean_proba(head, [c["codes"][fold == f], c["mirror"][fold == f]])
                pred = proba.argmax(axis=1)
                acc = np.mean([np.mean(pred[fold == f] == yi[fold == f]) for f in np.unique(fold)])
                per = [f"{np.mean(pred[series == s] == yi[series == s]):.2f}" if split.startswith("leave") else "–"
                       for s in names]
                lines.append(f"| {name}, seed {seed} | {split} | **{acc:.3f}** | " + " | ".join(per) + " |")
    write(lines + [""], args.out)


if __name__ == "__main__":
    main()
