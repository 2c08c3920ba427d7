"""Which heads keep their answers under an acquisition change, on new series and on seen ones.

    python benchmarks/head_check.py [--data ../shared/datasets/nanofiber-sem] [--seeds 0 1] [--softness 10]
        [--heads TEXT ...] [--shift-images 200] [--out heads.md] [--dump probaSEED.npz]

For each seed, the default estimator's codes (with ``--softness``, soft assignment; without it the
nearest centre, the default of run 62's time) are computed once (``evaluate.encode_images``: one
codebook shared by the folds, the jittered zoomed copies, the mirror views) and so are the codes of
the shift check's 200 images (``evaluate.shift_sample`` at seed 0, as ``shift_check`` draws them)
under every change of ``intensity.SHIFTS`` and the control, at both views. Each head is then fitted per
fold on the same codes, as ``cross_validate`` fits it (the training images and their copies, predicting
the mean over the estimator's views, the image and its mirror), under two splits:

- leave-one-series-out: what a user sees on a new series (mean over the 8 held-out series);
- grouped 5-fold: series seen at training (mean over the folds);

and the 200 images are re-predicted under each change by the head of the fold that held them out:
the share of predictions changed (``flipped``) and of the right ones made wrong (``lost``;
``evaluate.changed_shares``). The ridge heads at alpha 20 with both splits reproduce
``benchmarks/accuracy.py``'s default row (LOSO, grouped and its shift check) on the same codes.

Heads: the ridge and logistic heads as the estimator fits them (``FastVLAD.fit_codes``: balanced
weights as the default), and the nearest class mean (cosine to each class's mean code,
``NearestMean``; not an option: fitted per fold it was no steadier, ACCURACY.md run 63).
scikit-learn's shrinkage LDA was dropped after its first split (run 62: 0.520 leave-series-out,
minutes per fold). The ridge heads with a penalty on code differences (``invariant_ridge``, ``PAIRED``)
keep the scores still along what a change moves in the training images' codes: their own zoomed,
jittered copies (no extra CNN pass), or a copy acquired differently at the same size
(``acquired_differently``: blur, gain, offset, gamma and noise drawn from ranges that hold the shift
check's changes; one more CNN pass per image).

``--shift-images 0`` re-predicts every image under every change (nine CNN passes per image and view)
instead of the 200, whose shares carry a binomial standard error of about 0.02.
``--dump`` keeps each re-predicted row's out-of-fold probabilities (the mean over its views),
unchanged and under every change, per head and split, for ``benchmarks/margin_check.py``.
"""

from __future__ import annotations

import argparse
import functools
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fastvlad import classifier, datasets, intensity
from fastvlad.classifier import LinearHead
from fastvlad.encoder import View
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import changed_shares, encode_images, folds, shift_sample
from fastvlad.images import Transformed

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nanofiber-sem"
#: The shift check's sample (``evaluate.SHIFT_IMAGES`` images at seed 0, as ``benchmarks/accuracy.py``).
SHIFT_IMAGES, SHIFT_SEED = 200, 0


class NearestMean:
    """The class whose mean code (unit length) is nearest in angle; probabilities a softmax of 20× the
    cosines (only their order matters here)."""

    def __init__(self, codes: np.ndarray, y: np.ndarray, n_classes: int) -> None:
        means = np.stack([codes[y == c].mean(axis=0) for c in range(n_classes)])
        self.means = means / np.linalg.norm(means, axis=1, keepdims=True)

    def predict_proba(self, codes: np.ndarray) -> np.ndarray:
        s = 20.0 * (codes @ self.means.T)
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def estimator_head(codes: np.ndarray, y: np.ndarray, n_classes: int, **params: Any) -> Any:
    """The head ``FastVLAD(**params).fit_codes`` fits (balanced weights and seed as the estimator's), on
    the codes themselves unless ``code_pca`` is given: the heads as the runs that recorded them fitted
    them (``code_pca=64`` became the default in ACCURACY.md run 94)."""
    return FastVLAD(**{"code_pca": None, **params}).fit_codes(codes, y).head_


def invariant_ridge(codes: np.ndarray, y: np.ndarray, n_classes: int, differences: np.ndarray,
                    alpha: float = 20.0, strength: float = 1.0) -> LinearHead:
    """The default's ridge head (±1 targets, balanced weights, intercept, penalty ``alpha``) with one
    more penalty: ``strength`` × Σ‖dᵢ·β‖² over ``differences`` ``(m, D)``, the code of an image
    minus the code of its changed copy, so the scores move little along what an acquisition change
    moves. Solved in the dual, as scikit-learn's ridge does with fewer rows than dimensions: the
    weighted, centred rows and ``√strength·dᵢ`` (target 0, no intercept) stacked. With ``strength``
    0 it is ``classifier.train_ridge``."""
    w = classifier.balanced_weights(y, n_classes).astype(np.float64)
    x = codes.astype(np.float64)
    targets = np.where(np.arange(n_classes)[None, :] == y[:, None], 1.0, -1.0)
    x_mean, t_mean = w @ x / w.sum(), w @ targets / w.sum()
    rows = np.vstack([np.sqrt(w)[:, None] * (x - x_mean), np.sqrt(strength) * differences.astype(np.float64)])
    t = np.vstack([np.sqrt(w)[:, None] * (targets - t_mean), np.zeros((len(differences), n_classes))])
    gram = rows @ rows.T
    gram[np.diag_indices_from(gram)] += alpha
    beta = rows.T @ np.linalg.solve(gram, t)  # (D, n_classes)
    return LinearHead(beta.T.astype(np.float32), (t_mean - x_mean @ beta).astype(np.float32))


Head = Callable[[np.ndarray, np.ndarray, int], Any]  # (codes, labels in [0, n_classes), n_classes) → .predict_proba
#: A head that also takes the training images' code differences under a change (``invariant_ridge``).
PairedHead = Callable[[np.ndarray, np.ndarray, int, np.ndarray], Any]
HEADS: dict[str, Head] = {
    "ridge, alpha 5": functools.partial(estimator_head, classifier="ridge", alpha=5.0),
    "ridge, alpha 20 (the default until run 94)": functools.partial(estimator_head, classifier="ridge", alpha=20.0),
    "ridge, alpha 80": functools.partial(estimator_head, classifier="ridge", alpha=80.0),
    "ridge, alpha 320": functools.partial(estimator_head, classifier="ridge", alpha=320.0),
    "logistic, C 1": functools.partial(estimator_head, classifier="logistic", C=1.0),
    "logistic, C 100": functools.partial(estimator_head, classifier="logistic", C=100.0),
    "nearest class mean (cosine)": NearestMean,
}
#: Ridge heads that also keep the scores still along code differences (``invariant_ridge``): name →
#: (head, which differences: ``copy``, the fit's zoomed jittered copies; ``acquired``, a copy acquired
#: differently at the same size, ``acquired_differently``).
PAIRED: dict[str, tuple[PairedHead, str]] = {
    f"ridge, alpha 20, {kind} differences × {strength:g}": (
        functools.partial(invariant_ridge, alpha=20.0, strength=strength), kind)
    for kind, strengths in (("copy", (0.0, 1.0, 4.0, 16.0)), ("acquired", (1.0, 4.0, 16.0))) for strength in strengths}


def changed_codes(cs: Any, X: list[str], rows: np.ndarray, views: list[View]) -> dict[str, list[np.ndarray]]:
    """Per change: the changed images' codes ``(len(rows), D)`` float32 under each of ``views`` (the
    estimator's, the image itself first)."""
    out = {}
    for name, fn in {**intensity.SHIFTS, **intensity.CONTROLS}.items():
        sources = [Transformed(X[int(r)], fn, name) for r in rows]
        out[name] = [cs.encoder.encode(sources).rows(len(sources)),
                     *(cs.encoder.encode_view(sources, v).rows(len(sources)) for v in views[1:])]
    return out


def mean_proba(head: Any, views: list[np.ndarray]) -> np.ndarray:
    """The mean probability over an image's views (each ``(m, D)``): ``(m, n_classes)`` float64."""
    return np.asarray(sum(head.predict_proba(v) for v in views), dtype=np.float64) / len(views)


def training_set(cs: Any, yi: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A fold's training codes ``(m, D)`` and class indices ``(m,)``: its images' codes (``train``,
    ``(n,)`` bool) and their copies (``cs.augmented``, labelled as their image), as a fit sees them."""
    copies = np.isin(cs.augmented_of, np.flatnonzero(train))
    return (np.concatenate([cs.codes[train], cs.augmented[copies]]),
            np.concatenate([yi[train], yi[cs.augmented_of[copies]]]))


def scored(head: Head | PairedHead, cs: Any, y: np.ndarray, fold: np.ndarray, rows: np.ndarray,
           changed: dict[str, list[np.ndarray]],
           differences: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """Mean accuracy over the folds, and per change its shares (``changed_shares``) on ``rows``.
    ``differences``: for a ``PairedHead``, the training images' code differences ``(m, D)`` given
    the fold's training mask ``(n,)`` bool."""
    classes, yi = np.unique(y, return_inverse=True)
    proba = np.empty((len(y), len(classes)))
    heads = {}
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        codes, labels = training_set(cs, yi, train)
        heads[f] = (head(codes, labels, len(classes)) if differences is None  # type: ignore[call-arg]
                    else head(codes, labels, len(classes), differences(train)))  # type: ignore[call-arg]
        proba[test] = mean_proba(heads[f], [cs.codes[test], *(v[test] for v in cs.views)])
    pred = classes[proba.argmax(axis=1)]
    shifts, proba_after = {}, {}
    for name, views in changed.items():
        proba_after[name] = np.empty((len(rows), len(classes)))
        for f in np.unique(fold[rows]):
            at = np.flatnonzero(fold[rows] == f)
            proba_after[name][at] = mean_proba(heads[f], [v[at] for v in views])
        after = classes[proba_after[name].argmax(axis=1)]
        shifts[name] = changed_shares(y[rows], pred[rows].astype(str), after.astype(str))
    acquisition = {n: s for n, s in shifts.items() if n not in intensity.CONTROLS}
    return {"accuracy": float(np.mean([np.mean(pred[fold == f] == y[fold == f]) for f in np.unique(fold)])),
            "shift": shifts, "max_flip": max(s["flipped"] for s in acquisition.values()),
            "mean_flip": float(np.mean([s["flipped"] for s in acquisition.values()])),
            "max_lost": max(s["lost"] for s in acquisition.values()),
            "proba": proba[rows], "proba_after": proba_after}


def copy_differences(cs: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The training images' codes minus their zoomed, jittered copies' (the fit's own copies)."""
    def of(train: np.ndarray) -> np.ndarray:
        copies = np.isin(cs.augmented_of, np.flatnonzero(train))
        return cs.codes[cs.augmented_of[copies]] - cs.augmented[copies]
    return of


def acquired_differently(values: np.ndarray, seed: tuple[int, ...]) -> np.ndarray:
    """The image as another acquisition might give it, at the same size and orientation: blurred
    (σ in [0, 1.5] px), gain in [0.8, 1.2], offset in [−20, 20], gamma in [0.8, 1.25] (log-uniform),
    noise (σ in [0, 8] gray levels), drawn from ``seed``. The ranges hold the shift check's changes."""
    rng = np.random.default_rng(list(seed))
    values = intensity.blur(values, rng.uniform(0.0, 1.5))
    values = intensity.offset(intensity.gain(values, rng.uniform(0.8, 1.2)), rng.uniform(-20.0, 20.0))
    values = intensity.gamma(values, math.exp(rng.uniform(math.log(0.8), math.log(1.25))))
    return intensity.noise(values, rng.uniform(0.0, 8.0), int(rng.integers(2**31)))


#: The first entry of a changed copy's ``points_key`` (its points drawn apart from other copies').
ACQUIRED_POINTS = 0x41435131  # "ACQ1"


def acquired_differences(cs: Any, X: list[str], seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """The training images' codes minus those of a copy acquired differently (``acquired_differently``;
    one more CNN pass per image, encoded once here)."""
    sources = [Transformed(X[int(i)], functools.partial(acquired_differently, seed=(seed, int(i))), "acquired",
                           points_key=(ACQUIRED_POINTS, int(i))) for i in cs.indices]
    other = cs.encoder.encode(sources).rows(len(sources))
    delta = cs.codes - other
    if np.isnan(delta).any():
        sys.exit("every changed copy must read")
    return lambda train: delta[train]


def shift_data(data: Path, n_images: int | None = SHIFT_IMAGES) -> tuple[list[str], np.ndarray, np.ndarray,
                                                                        np.ndarray, np.ndarray]:
    """The dataset's paths, labels, groups and series (``(n,)`` str each), and the shift check's rows
    (``evaluate.shift_sample`` of ``n_images`` at ``SHIFT_SEED``; None: every image); exits with a
    reason when there is no dataset."""
    if not (data / "manifest.csv").is_file():
        sys.exit(f"no dataset at {data} (see ../shared/datasets/README.md)")
    ds = datasets.load(data)
    y, groups = np.asarray(ds.y).astype(str), np.asarray(ds.groups).astype(str)
    series = np.asarray(ds.column("series")).astype(str)
    return [str(p) for p in ds.paths], y, groups, series, shift_sample(series, y, n_images, SHIFT_SEED)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown tables here")
    ap.add_argument("--softness", type=float, default=None,
                    help="the encoder's soft assignment (default: none, the nearest centre, as run 62 measured it)")
    ap.add_argument("--heads", nargs="+", default=None,
                    help="run the heads whose name contains any of these texts (default: every head)")
    ap.add_argument("--shift-images", type=int, default=SHIFT_IMAGES,
                    help=f"images the shift check re-predicts (default {SHIFT_IMAGES}; 0: every image)")
    ap.add_argument("--dump", type=Path, default=None,
                    help="also write each row's out-of-fold probabilities, unchanged and under every change, "
                         "to this .npz (one file per seed: SEED is replaced by the seed)")
    args = ap.parse_args(argv)
    X, y, groups, series, rows = shift_data(args.data, args.shift_images or None)
    loso_fold = np.unique(series, return_inverse=True)[1]
    heads = {name: (head, None) for name, head in HEADS.items()} | PAIRED
    heads = {n: h for n, h in heads.items() if args.heads is None or any(part in n for part in args.heads)}
    lines = [f"`{command_line('head_check.py', argv)}` — "
             f"{platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}", ""]
    for seed in args.seeds:
        t = time.perf_counter()
        est = FastVLAD(random_state=seed, softness=args.softness)
        cs = encode_images(est, X)
        if len(cs.indices) != len(X):
            sys.exit("every image must read")
        changed = changed_codes(cs, X, rows, est.views())
        differences = {"copy": copy_differences(cs)}
        if any(kind == "acquired" for _, kind in heads.values()):
            differences["acquired"] = acquired_differences(cs, X, seed)
        print(f"seed {seed}: encoded in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        splits = {"leave-one-series-out": loso_fold, "grouped 5-fold": folds(y, groups, 5, seed, None)}
        names = list(changed)
        lines += [f"Seed {seed}: accuracy, then the share of the {len(rows)} images' predictions each change flips.", "",
                  "| head | split | accuracy | max flip | mean flip | max right→wrong | "
                  + " | ".join(names) + " |", "|---|---|---|---|---|---|" + "---|" * len(names)]
        dumped: dict[str, Any] = {}  # Any: savez also takes allow_pickle by keyword
        for head_name, (head, kind) in heads.items():
            for split_name, fold in splits.items():
                r = scored(head, cs, y, fold, rows, changed, differences[kind] if kind else None)
                lines.append(table_row(head_name, split_name, r, names))
                print(lines[-1], file=sys.stderr, flush=True)
                dumped |= {f"{head_name} | {split_name} | {change}": p
                           for change, p in {"(unchanged)": r["proba"], **r["proba_after"]}.items()}
        lines.append("")
        if args.dump:
            np.savez_compressed(str(args.dump).replace("SEED", str(seed)), rows=rows, y=y[rows], series=series[rows],
                                classes=np.unique(y), **dumped)
    write(lines, args.out)


def table_row(name: str, split: str, r: dict[str, Any], changes: list[str]) -> str:
    """One Markdown row of ``scored``'s result ``r``: accuracy, the flips' summary, then each change's."""
    return (f"| {name} | {split} | {r['accuracy']:.3f} | {r['max_flip']:.3f} | {r['mean_flip']:.3f} | "
            f"{r['max_lost']:.3f} | " + " | ".join(f"{r['shift'][n]['flipped']:.3f}" for n in changes) + " |")


def command_line(script: str, argv: list[str] | None) -> str:
    """``python benchmarks/<script> <args>`` as typed, quoted where an argument needs it (``--only "soft 10"``)."""
    return shlex.join(["python", f"benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])])


def write(lines: list[str], out: Path | None) -> None:
    """The tables on standard output, and in ``out`` when given."""
    text = "\n".join(lines)
    print(text)
    if out:
        out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
