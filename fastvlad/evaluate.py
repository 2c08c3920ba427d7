"""Cross-validation that runs the CNN once per image, and the shift check of its predictions.

The hypercolumn PCA (with ``pca``) and the codebook are unsupervised: both are fitted once on
one sample of ALL images (labels unused), every image is encoded once, and only the
classifier (on the cached codes) is refitted per fold. With ``refit="all"`` each fold is a whole
``fit`` on its training images instead (the held-out images take no part in the codebook either,
as with a user's model and a new sample), at one encoding of every image per fold. Folds are:

- with ``split`` (a value per image, e.g. the material series): leave-one-group-out over it,
  every value held out once, with the accuracy of each held-out value and their mean and spread
  (what a user sees on a sample of a series the model never saw);
- otherwise grouped by the ``group`` column when there is one (tiles of one micrograph never
  straddle train and test), stratified when there is none.

``shift_check`` re-predicts out-of-fold images under acquisition changes (``intensity.SHIFTS``:
gain, offset, gamma, blur, noise; optionally ``intensity.MAGNIFICATIONS``), each with the
classifier of the fold that held it out, and reports the share of predictions that change.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from . import checks, datasets, progress
from .encoder import Encoder, EncoderSettings, Timings, View, training_copies
from .errors import InvalidDatasetError, ParameterError
from .estimator import FastVLAD
from .images import ImageSource, Transformed

log = logging.getLogger("fastvlad")

#: Images re-predicted under each change by the shift check unless told otherwise.
SHIFT_IMAGES = 200
#: What ``cross_validate`` fits per fold: the classifier on shared codes, or the whole model.
REFITS = ("head", "all")
#: The issue's bar for an answer that holds: no single acquisition change alters more than this share.
STEADY_SHARE = 0.05
#: The margins (top probability minus the runner-up's) the shift check tries as a floor for sure answers.
MARGIN_GRID = tuple(round(0.01 * i, 2) for i in range(51))
#: The normal quantile of a two-sided 95 % interval (``share_interval``).
WILSON_Z = 1.959963984540054
#: The floors printed in the shift check's table of sure answers (every one of ``MARGIN_GRID`` is in the JSON).
MARGINS_SHOWN = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)


@dataclass
class ShiftCheck:
    """Out-of-fold predictions under acquisition changes: how many change, and the accuracy."""

    rows: np.ndarray  # (m,) rows of the CV result re-predicted (a seeded stratified sample)
    accuracy: float  # out-of-fold accuracy on those rows, unchanged
    #: Per change: name, n, flipped (share of predictions changed), flipped_95 (its 95 % interval),
    #: lost (share of the right predictions made wrong), accuracy, seconds.
    changes: list[dict[str, Any]]
    seconds: float  # the whole check: every change's CNN passes and predictions
    stratified_by: str = "class"  # what the sample is stratified by, e.g. "series and class"
    group_by: str | None = None  # the column each change's ``by_group`` counts are over, e.g. "series"
    #: Per margin floor of ``MARGIN_GRID``: the answers at or above it (``by_margin``), and with
    #: magnifications ``max_flipped_magnification``, the largest share of them one alters.
    margins: list[dict[str, Any]] = field(default_factory=list)
    #: What ``flipped_95`` counts as one sample: "group" (the images of one ``groups`` value, e.g. a
    #: micrograph's tiles, ``effective_samples``) or "image".
    interval_by: str = "image"
    #: With ``interval_by`` "group": how alike a group's answers change (``flip_correlation``; None: not
    #: known, every group counted as one sample).
    flip_correlation: float | None = None
    #: Per change: ``(readable, changed)``, each ``(m,)`` bool over ``rows`` (``by_margin``'s input;
    #: not in ``to_dict``).
    changed_rows: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def acquisition_changes(self) -> list[dict[str, Any]]:
        """The changes but the control and the magnifications (``change_kind``)."""
        return [c for c in self.changes if change_kind(c) == "acquisition"]

    @property
    def max_flipped(self) -> float:
        """The largest share any acquisition change flips."""
        return max((c["flipped"] for c in self.acquisition_changes), default=0.0)

    def changed_by_group(self) -> dict[str, list[int]]:
        """Per held-out value: [predictions changed, predictions re-predicted], summed over the
        acquisition changes, most changed first — where the flips fall."""
        total: dict[str, list[int]] = {}
        for c in self.acquisition_changes:
            for g, (changed, n) in c.get("by_group", {}).items():
                t = total.setdefault(g, [0, 0])
                t[0], t[1] = t[0] + changed, t[1] + n
        return dict(sorted(total.items(), key=lambda kv: (-kv[1][0] / max(kv[1][1], 1), kv[0])))

    @property
    def steady_margin(self) -> dict[str, Any] | None:
        """The row of ``margins`` with the smallest floor at which no acquisition change alters
        ``STEADY_SHARE`` or more of the answers kept; None when no floor keeps an answer and gets there."""
        return steady_margin(self.margins)

    def to_dict(self) -> dict[str, Any]:
        return {"n_images": int(len(self.rows)), "accuracy_unchanged": self.accuracy, "changes": self.changes,
                "max_flipped": self.max_flipped, "seconds": self.seconds, "stratified_by": self.stratified_by,
                "group_by": self.group_by, "changed_by_group": self.changed_by_group(), "margins": self.margins,
                "steady_margin": self.steady_margin, "interval_by": self.interval_by,
                "flip_correlation": self.flip_correlation}


@dataclass
class CVResult:
    classes: list[str]
    y_true: np.ndarray  # (n,) class names
    y_pred: np.ndarray  # (n,) out-of-fold predictions
    proba: np.ndarray  # (n, n_classes) out-of-fold probabilities (0 for a class its fold never trained on)
    fold: np.ndarray  # (n,) fold index of each image
    fold_accuracy: list[float]  # per fold; with leave-one-group-out, per held-out group
    grouped: bool
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    indices: np.ndarray | None = None  # (n,) position of each row's image in the list given to cross_validate
    backbone_sha256: str = ""
    #: The column a fold keeps together ("series" with a split, "group" for grouped K-fold) and its
    #: value per row (n,), or None (stratified folds): the confound warning and the shift check's strata.
    group_by: str | None = None
    row_groups: np.ndarray | None = None
    leave_one_out: bool = False  # each fold holds out one value of ``group_by``
    fold_names: list[str] = field(default_factory=list)  # the held-out value of each fold, or "1", "2", …
    missing: list[list[str]] = field(default_factory=list)  # per fold: test classes absent from its training set
    shift: ShiftCheck | None = None  # set by ``shift_check``
    # What the shift check re-predicts with: the shared encoder and each fold's classifier, or
    # (refit="all", encoder None) each fold's whole model (not saved).
    encoder: Encoder | None = field(default=None, repr=False, compare=False)
    models: list[Any] = field(default_factory=list, repr=False, compare=False)
    views: list[View] = field(default_factory=lambda: [View()])  # averaged into every prediction (and the shift check's)
    refit: str = "head"  # REFITS: what each fold fitted
    #: The data's ``group`` column per row (n,) (e.g. the source micrograph of each tile), whatever the
    #: folds were made over; None without one. Images of one group are not independent samples (``by_group``).
    groups: np.ndarray | None = None

    @property
    def accuracy(self) -> float:
        """Mean over folds (over held-out groups with leave-one-group-out)."""
        return float(np.mean(self.fold_accuracy))

    @property
    def accuracy_std(self) -> float:
        """The standard deviation over folds (ddof 0, as ``np.std`` and scikit-learn's users report it;
        ``accuracy_95`` takes the sample standard deviation, ddof 1)."""
        return float(np.std(self.fold_accuracy))

    @property
    def accuracy_95(self) -> list[float] | None:
        """With leave-one-group-out, the 95 % interval of the mean over held-out groups
        (``mean_interval``): where the expected accuracy on a new group could lie. None otherwise
        (K folds are not independent samples of anything a user meets)."""
        return mean_interval(self.fold_accuracy) if self.leave_one_out else None

    def per_class(self) -> dict[str, dict[str, float]]:
        """Precision, recall, F1 and support of every class over the out-of-fold predictions."""
        p, r, f, s = precision_recall_fscore_support(self.y_true, self.y_pred, labels=self.classes, zero_division=0)
        return {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                for i, c in enumerate(self.classes)}

    def confusion(self) -> np.ndarray:
        """The confusion matrix ``(n_classes, n_classes)`` int64: rows true, columns predicted, in ``classes`` order."""
        return confusion_matrix(self.y_true, self.y_pred, labels=self.classes)

    def per_fold(self) -> list[dict[str, Any]]:
        """Per fold (per held-out group): name, n, accuracy, class counts of its test images, and
        the classes among them its classifier never saw in training."""
        names = self.fold_names or [str(f + 1) for f in range(len(self.fold_accuracy))]
        out = []
        for f, (name, acc) in enumerate(zip(names, self.fold_accuracy)):
            test = self.fold == f
            counts = {c: int(n) for c, n in zip(*np.unique(self.y_true[test], return_counts=True))}
            out.append({"held_out": name, "n": int(test.sum()), "accuracy": acc, "classes": counts,
                        "missing_from_training": self.missing[f] if f < len(self.missing) else []})
        return out

    def by_group(self) -> dict[str, Any] | None:
        """The out-of-fold answers per value of ``groups`` (e.g. per source micrograph): how many
        groups have all their images right, all wrong, or some of each, and the accuracy of the mean
        of each group's probabilities (over the groups whose images share one class). None without groups.

        Tiles of one micrograph tend to be right or wrong together, so an accuracy over images rests
        on about as many independent samples as there are micrographs."""
        if self.groups is None:
            return None
        right, mean_right = [], []  # per group: its rows right or not; the mean of its probabilities right
        for g in np.unique(self.groups):
            rows = self.groups == g
            right.append(self.y_pred[rows] == self.y_true[rows])
            if len(set(self.y_true[rows].tolist())) == 1:
                mean_right.append(self.classes[int(self.proba[rows].mean(axis=0).argmax())] == self.y_true[rows][0])
        return {"n_groups": len(right), "all_right": sum(bool(r.all()) for r in right),
                "all_wrong": sum(not r.any() for r in right), "mixed": sum(bool(r.any() and not r.all()) for r in right),
                "n_one_class": len(mean_right),
                "accuracy_of_mean": float(np.mean(mean_right)) if mean_right else None}

    def confounds(self) -> list[tuple[str, str]]:
        """(class, value) for every class whose images all share one value of ``group_by``."""
        return confounds(self.y_true, self.row_groups)

    def warnings(self) -> list[str]:
        """One line per confounded class (``confounds``)."""
        return [confound_warning(c, v, self.group_by or "group") for c, v in self.confounds()]

    def to_dict(self) -> dict[str, Any]:
        acc = np.asarray(self.fold_accuracy, dtype=float)
        return {"accuracy_mean": self.accuracy, "accuracy_std": self.accuracy_std, "accuracy_mean_95": self.accuracy_95,
                "accuracy_min": float(acc.min()), "accuracy_max": float(acc.max()),
                "fold_accuracy": self.fold_accuracy, "pooled_accuracy": float(accuracy_score(self.y_true, self.y_pred)),
                "refit": self.refit,
                "grouped": self.grouped, "split_by": self.group_by if self.leave_one_out else None,
                "folds": self.per_fold(), "warnings": self.warnings(),
                "classes": self.classes, "per_class": self.per_class(),
                "confusion": self.confusion().tolist(), "seconds": self.seconds, "n_images": int(len(self.y_true)),
                "skipped": self.skipped, "shift": self.shift.to_dict() if self.shift is not None else None,
                "by_group": self.by_group(),
                "views": [{"flip": v.op, "zoom": v.zoom} for v in self.views]}


def mean_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95,
                  clip: bool = True) -> list[float] | None:
    """The ``confidence`` interval ``[low, high]`` of the mean of ``values`` (one accuracy per held-out
    group: the independent samples of what a new group scores) by Student's t on n − 1 degrees of
    freedom with the sample standard deviation (ddof 1), clipped to [0, 1] unless not ``clip``; None
    for fewer than two values. Eight
    series of standard deviation 0.2 leave the mean uncertain by about ±0.18."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return None
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
    low, high = float(v.mean()) - half, float(v.mean()) + half
    return [max(0.0, low), min(1.0, high)] if clip else [low, high]


def mean_interval_text(interval: Sequence[float] | None, values: Sequence[float] | np.ndarray) -> str:
    """``CVResult.accuracy_95`` of ``values`` in words for the CLI and the report, "" without one; says
    when a bound was clipped to [0, 1] (the std printed beside it is over the values, ddof 0, while
    the interval takes their sample std)."""
    if interval is None:
        return ""
    v = np.asarray(values, dtype=np.float64)
    unclipped = mean_interval(v, clip=False)
    clipped = unclipped is not None and (unclipped[0] < 0.0 or unclipped[1] > 1.0)
    return (f"the mean's 95 % interval {interval[0]:.3f}–{interval[1]:.3f} (Student's t over the {len(v)} values"
            + (", clipped to [0, 1]" if clipped else "") + ")")


def refit_text(refit: str) -> str:
    """What each fold fitted, in one line (``cross_validate``'s ``refit``)."""
    if refit == "all":
        return "each fold: a whole fit on its training images, the PCA and codebook too (refit=all)"
    return ("each fold: the classifier, on codes from one PCA and codebook fitted on a sample of all the images, "
            "labels unused (refit=head)")


def confounds(y: np.ndarray, values: np.ndarray | None) -> list[tuple[str, str]]:
    """(class, value) for every class of ``y`` (n,) whose images all have the same ``values`` (n,)
    entry: a classifier can then score by recognising the value (the series) instead of the class."""
    if values is None:
        return []
    y, values = np.asarray(y), np.asarray(values)
    out = []
    for c in sorted(set(y.tolist())):
        seen = set(values[y == c].tolist())
        if len(seen) == 1:
            out.append((str(c), str(seen.pop())))
    return out


def confound_warning(cls: str, value: str, column: str) -> str:
    """The one-line warning for a class whose images all share one value of the split ``column``."""
    return (f"warning: class {cls} comes from one {column} only ({value}): accuracy here cannot tell class "
            f"from {column}")


def by_group_text(summary: dict[str, Any] | None, n_images: int) -> str:
    """``CVResult.by_group`` in one line, or "" without groups or when each image is its own group."""
    if summary is None or summary["n_groups"] >= n_images:
        return ""
    mean = summary["accuracy_of_mean"]
    n = summary["n_one_class"]
    of_mean = (f"; the mean of a group's probabilities is right for {round(mean * n)} of {n} ({mean:.3f})"
               if mean is not None else "")
    return (f"per group (the group column, {summary['n_groups']} values): {summary['all_right']} all right, "
            f"{summary['all_wrong']} all wrong, {summary['mixed']} mixed{of_mean} (the independent samples are "
            f"the {summary['n_groups']} groups, not the {n_images} images)")


def check_folds(n_splits: int, split: np.ndarray | None, split_name: str = "split", source: object = None) -> None:
    """What the folds are made over, before any image is read: with ``split`` (n,), at least two
    values to leave out in turn; without, ``n_splits`` ≥ 2. ``source`` (e.g. the manifest) starts
    the message of a split of one value."""
    if split is None:
        checks.integer("n_splits", n_splits, 2, " (the number of folds, CLI: --folds)")
        return
    values = np.unique(np.asarray(split).astype(str))
    if len(values) < 2:
        shown = f"value {str(values[0])!r}" if len(values) else "no value (there are no images)"
        where = f"{source}: " if source is not None else ""
        raise InvalidDatasetError(f"{where}cannot leave one group out: every image has the same {split_name} {shown}; "
                                  "split by a column with at least two values")


def fold_count(y: np.ndarray, groups: np.ndarray | None, n_splits: int) -> tuple[int, str]:
    """How many of ``n_splits`` stratified folds labels ``y`` (n,) allow, and what limits them: with
    ``groups`` (n,), no more than the groups, nor than the images of the largest class (scikit-learn's
    StratifiedGroupKFold refuses more); without, than the images of the smallest class.
    ``InvalidDatasetError`` under 2. Cheap: run it before any image is encoded."""
    counts = np.bincount(np.unique(np.asarray(y).astype(str), return_inverse=True)[1])
    if groups is not None:
        n_groups = len(np.unique(np.asarray(groups).astype(str)))
        n_ok, what = min(n_splits, n_groups, int(counts.max(initial=0))), (
            "groups" if n_groups <= counts.max(initial=0) else "images in the largest class")
    else:
        n_ok, what = min(n_splits, int(counts.min()) if len(counts) else 0), "images in the smallest class"
    if n_ok < 2:
        raise InvalidDatasetError(f"cannot make {n_splits} folds: too few {what} ({n_ok}); "
                                  "cross-validation needs at least 2")
    return n_ok, what


def folds(y: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int,
          split: np.ndarray | None = None, split_name: str = "split") -> np.ndarray:
    """Fold index of every image: with ``split``, one fold per value (sorted), leave-one-group-out;
    otherwise grouped-stratified with groups, stratified without."""
    check_folds(n_splits, split, split_name)
    if split is not None:
        return np.unique(np.asarray(split), return_inverse=True)[1].astype(np.int64)
    n_splits_ok, what = fold_count(y, groups, n_splits)
    if n_splits_ok < n_splits:
        log.warning("fastvlad: %d folds instead of %d: there are only %d %s", n_splits_ok, n_splits, n_splits_ok, what)
    splitter = (StratifiedGroupKFold(n_splits_ok, shuffle=True, random_state=seed) if groups is not None
                else StratifiedKFold(n_splits_ok, shuffle=True, random_state=seed))
    fold = np.empty(len(y), dtype=np.int64)
    with warnings.catch_warnings(record=True) as said:  # scikit-learn's notes, told as fastvlad's own
        warnings.simplefilter("always")
        for i, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
            fold[test] = i
    for note in dict.fromkeys(str(w.message) for w in said):
        log.warning("fastvlad: %s", note)
    return fold


class OneClass:
    """The classifier of a training set that holds one class (holding out the only other series):
    XGBoost cannot train on it, and the only answer its data allows is that class."""

    def __init__(self, cls: str) -> None:
        self.classes_ = np.array([cls])

    def predict_proba_codes(self, codes: np.ndarray) -> np.ndarray:
        return np.ones((len(codes), 1), dtype=np.float32)

    def proba_over_views(self, X: Sequence[ImageSource]) -> tuple[np.ndarray, None]:
        """``(n, 1)``: the one class for every image (no image is read)."""
        return np.ones((len(X), 1), dtype=np.float32), None


@dataclass
class CodeSet:
    """Every image's codes under one encoder fitted on a sample of them (labels unused), computed
    once for any number of fold schemes: the images', their augmented and zoomed copies' (``augment``,
    ``zoom``) and their other views' (``tta``, ``tta_zoom``)."""

    encoder: Encoder
    codes: np.ndarray  # (n_ok, D) float32, rows in ``indices`` order
    indices: np.ndarray  # (n_ok,) positions of the readable images in X
    failed: list[tuple[int, Any]]
    augmented: np.ndarray  # (m, D) float32 codes of augmented and zoomed copies (``training_copies``)
    augmented_of: np.ndarray  # (m,) the row of ``codes`` each copy was made from
    views: list[np.ndarray]  # per view after the first: (n_ok, D) float32, NaN where it could not be read
    seconds: dict[str, float]


def encode_images(estimator: FastVLAD, X: Sequence[ImageSource]) -> CodeSet:
    """Fit ``estimator``'s PCA and codebook on a sample of ``X`` and encode every image once, with the
    augmented and zoomed copies (``augment``, ``zoom``) and views (``tta``, ``tta_zoom``) the estimator
    asks for."""
    est = clone(estimator)
    X = list(X)
    checks.parameters(est, len(X))  # before any image, as fit does
    timings = Timings()
    encoder = Encoder.of(est).fit_codebook(X, int(est.k), int(est.codebook_images), timings=timings)
    enc = encoder.encode(X, timings)
    copies = Timings()  # as fit reports them: the copies' CNN passes, and their whole encoding
    aug, aug_of = training_copies(encoder, X, enc.indices, int(est.augment), tuple(est.zoom), checks.seed(est), copies,
                                  bool(est.zoom_jitter))
    seconds = {**timings.seconds, **copies.seconds}
    views = []
    readable = [X[i] for i in enc.indices]
    for view in est.views()[1:]:
        t = time.perf_counter()
        views.append(encoder.encode_view(readable, view).rows(len(readable)))
        seconds["tta"] = seconds.get("tta", 0.0) + time.perf_counter() - t
    return CodeSet(encoder, enc.codes, enc.indices, enc.failed, aug, aug_of, views, seconds)


def cross_validate(estimator: FastVLAD, X: Sequence[ImageSource], y: np.ndarray, groups: np.ndarray | None = None,
                   n_splits: int = 5, split: np.ndarray | None = None, split_name: str = "split",
                   codes: CodeSet | None = None, refit: str = "head") -> CVResult:
    """Out-of-fold predictions for every image; the CNN runs once per image.

    ``split`` (n,): leave-one-group-out over its values (``split_name`` names them in messages,
    e.g. "series"); ``n_splits`` and ``groups`` are then unused for the folds. A fold whose
    training set lacks a class gives it probability 0 (``CVResult.missing`` says which).
    ``codes``: ``encode_images(estimator, X)`` when already at hand (several fold schemes on one
    encoding). A fold's classifier also learns from its training images' augmented copies, and
    predicts the mean over an image's views (``tta``, ``tta_zoom``), as ``fit`` and ``predict_proba`` do.
    ``refit="all"``: each fold a whole ``fit`` on its training images and ``predict_proba`` of the
    held-out ones (``cross_validate_whole``): the CNN runs once per image per fold.
    """
    t0 = time.perf_counter()
    est = clone(estimator)
    X = list(X)
    checks.parameters(est, len(X))  # before any image, as fit does
    for name, column in (("groups", groups), ("split", split)):
        if column is not None and len(column) != len(X):
            raise ParameterError(f"{name} has {len(column)} values for {len(X)} images; give one per image")
    if refit not in REFITS:
        raise ParameterError(f"refit={refit!r} is unknown; use one of {REFITS}")
    check_folds(n_splits, split, split_name)
    if split is None:  # the folds' count, before hours of encoding (folds() makes them afterwards)
        fold_count(np.asarray(y), groups, n_splits)
    if refit == "all":
        if codes is not None:
            raise ParameterError("codes= is the shared encoding of refit='head'; refit='all' encodes every fold itself")
        return cross_validate_whole(est, X, y, groups, n_splits, split, split_name)
    cs = codes if codes is not None else encode_images(est, X)
    y_ok = np.asarray(y).astype(str)[cs.indices]
    classes = datasets.classes_left(np.asarray(y), y_ok)  # as fit, refuse to score one class
    g_ok = np.asarray(groups).astype(str)[cs.indices] if groups is not None else None
    s_ok = np.asarray(split).astype(str)[cs.indices] if split is not None else None
    fold = folds(y_ok, g_ok, n_splits, checks.seed(est), s_ok, split_name)
    n_folds = int(fold.max()) + 1
    pred = np.empty(len(y_ok), dtype=object)
    proba = np.zeros((len(y_ok), len(classes)), dtype=np.float32)
    accs: list[float] = []
    missing: list[list[str]] = []
    models: list[Any] = []
    t = time.perf_counter()
    with progress.bar(n_folds, "cross-validation", unit="fold") as bar:
        for f in range(n_folds):
            train, test = fold != f, fold == f
            seen = sorted(set(y_ok[train].tolist()))
            copies = np.isin(cs.augmented_of, np.flatnonzero(train))
            model = OneClass(seen[0]) if len(seen) == 1 else clone(est).fit_codes(
                np.concatenate([cs.codes[train], cs.augmented[copies]]),
                np.concatenate([y_ok[train], y_ok[cs.augmented_of[copies]]]))
            p = mean_proba(model, [cs.codes[test], *(v[test] for v in cs.views)])
            cols = np.array([classes.index(c) for c in model.classes_])
            proba[np.ix_(np.flatnonzero(test), cols)] = p
            pred[test] = model.classes_[p.argmax(axis=1)]
            accs.append(float((pred[test] == y_ok[test]).mean()))
            missing.append(sorted(set(y_ok[test].tolist()) - set(seen)))
            models.append(model)
            bar.advance()
    seconds = {**cs.seconds, "classifier": time.perf_counter() - t, "total": time.perf_counter() - t0}
    skipped = [(str(X[i]), str(e)) for i, e in cs.failed]
    return CVResult(classes, y_ok, pred.astype(str), proba, fold, accs, seconds=seconds, skipped=skipped,
                    indices=cs.indices, backbone_sha256=cs.encoder.cnn.sha256,
                    **grouping(split_name, g_ok, s_ok, n_folds), missing=missing, encoder=cs.encoder,
                    models=models, views=est.views(), groups=g_ok)


def grouping(split_name: str, groups: np.ndarray | None, split: np.ndarray | None, n_folds: int,
             rows: np.ndarray | None = None) -> dict[str, Any]:
    """What the folds keep together, as ``CVResult`` fields (``grouped``, ``group_by``, ``row_groups``,
    ``leave_one_out``, ``fold_names``). ``groups``/``split``: the values the folds were made over;
    ``rows``: the result's rows among them (default all)."""
    values = split if split is not None else groups
    return {"grouped": values is not None,
            "group_by": split_name if split is not None else "group" if groups is not None else None,
            "row_groups": values if values is None or rows is None else values[rows],
            "leave_one_out": split is not None,
            "fold_names": ([str(v) for v in np.unique(split)] if split is not None
                           else [str(f + 1) for f in range(n_folds)])}


def cross_validate_whole(est: FastVLAD, X: list[ImageSource], y: np.ndarray, groups: np.ndarray | None,
                         n_splits: int, split: np.ndarray | None, split_name: str) -> CVResult:
    """``cross_validate(refit="all")``: per fold, ``fit`` on the training images (the PCA and codebook
    too) and ``proba_over_views`` of the held-out ones — a user's model meeting a new sample. Folds
    are made over every image; rows whose image could not be read are left out afterwards."""
    t0 = time.perf_counter()
    if est.on_error == "raise":
        checks.readable(X)  # every unreadable file named before the first fold's fit
    y_all = np.asarray(y).astype(str)
    g_all = np.asarray(groups).astype(str) if groups is not None else None
    s_all = np.asarray(split).astype(str) if split is not None else None
    fold = folds(y_all, g_all, n_splits, checks.seed(est), s_all, split_name)
    n_folds = int(fold.max()) + 1
    classes = sorted(set(y_all.tolist()))
    proba = np.full((len(X), len(classes)), np.nan, dtype=np.float32)
    missing: list[list[str]] = []
    models: list[Any] = []
    skipped: list[tuple[str, str]] = []
    seconds: dict[str, float] = {}
    with progress.bar(n_folds, "cross-validation (a whole fit per fold)", unit="fold") as bar:
        for f in range(n_folds):
            train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            seen = sorted(set(y_all[train].tolist()))
            model: Any = OneClass(seen[0]) if len(seen) == 1 else clone(est).fit([X[i] for i in train], y_all[train])
            held = [X[i] for i in test]
            p, encoded = model.proba_over_views(held)
            if encoded is not None:
                skipped += [(name, why) for name, why in FastVLAD.describe_failures(held, encoded)]
                for stage, v in model.timings_.items():
                    seconds[stage] = seconds.get(stage, 0.0) + v
            block = np.zeros((len(test), len(classes)), dtype=np.float32)
            block[:, [classes.index(c) for c in model.classes_]] = p
            block[np.isnan(p).any(axis=1)] = np.nan
            proba[test] = block
            missing.append(sorted(set(y_all[test].tolist()) - set(seen)))
            models.append(model)
            bar.advance()
    indices = np.flatnonzero(~np.isnan(proba).any(axis=1))
    if not len(indices):
        raise InvalidDatasetError(f"none of the {len(X)} images could be read (e.g. {skipped[0][1]})")
    y_ok, fold_ok = y_all[indices], fold[indices]
    datasets.classes_left(y_all, y_ok)  # as fit, refuse to score one class
    pred = np.asarray(classes)[proba[indices].argmax(axis=1)]
    accs = [float((pred[fold_ok == f] == y_ok[fold_ok == f]).mean()) if (fold_ok == f).any() else float("nan")
            for f in range(n_folds)]
    fitted = [m for m in models if isinstance(m, FastVLAD)]
    return CVResult(classes, y_ok, pred, proba[indices], fold_ok, accs,
                    seconds={**seconds, "total": time.perf_counter() - t0}, skipped=skipped, indices=indices,
                    backbone_sha256=fitted[0].backbone_sha256_ if fitted else "",
                    **grouping(split_name, g_all, s_all, n_folds, indices), missing=missing, encoder=None,
                    models=models, views=est.views(), refit="all",
                    groups=g_all[indices] if g_all is not None else None)


def mean_proba(model: Any, views: Sequence[np.ndarray]) -> np.ndarray:
    """A fold classifier's probabilities ``(n, C)``, averaged over an image's views (the image, its
    other views); a view that could not be read (NaN row) is left out of its image's mean."""
    stack = np.stack([model.predict_proba_codes(v) for v in views])
    return np.nanmean(stack, axis=0).astype(np.float32) if len(views) > 1 else stack[0]


def stratified_rows(strata: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` rows of ``strata`` (n_rows,), seeded, each stratum in proportion to its size and every
    stratum present once ``n`` reaches their number: sorted (≤ n,) int64.

    Within a stratum the rows are shuffled; a row's key is its rank there over the stratum's size,
    so the first row of every stratum comes first, then rows in proportion to the sizes."""
    rng = np.random.default_rng(seed)
    strata = np.asarray(strata)
    if n >= len(strata):
        return np.arange(len(strata))
    key = np.empty(len(strata))
    for value in np.unique(strata):
        rows = rng.permutation(np.flatnonzero(strata == value))
        key[rows] = np.arange(len(rows)) / len(rows)
    tie = rng.permutation(len(strata))  # equal keys (the first rows of every stratum…) in random order
    return np.sort(np.lexsort((tie, key))[:n])


def shift_sample(groups: np.ndarray, y_true: np.ndarray, n_images: int | None, seed: int) -> np.ndarray:
    """The rows the shift check re-predicts: ``n_images`` of them (None: every row), stratified by
    group and class (``groups``, ``y_true``: ``(n,)``) with ``stratified_rows``; sorted ``(≤ n,)`` int64."""
    strata = np.array([f"{g}\x00{c}" for g, c in zip(np.asarray(groups).tolist(), np.asarray(y_true).tolist())])
    return stratified_rows(strata, len(strata) if n_images is None else n_images, seed)


def changed_predictions(result: CVResult, sources: list[Transformed],
                        rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each changed image (one per row of ``rows``) predicted by the fold that held its row out —
    the shared encoder and that fold's classifier, or (``refit="all"``) that fold's whole model —
    averaged over the same views as the CV: the class names ``(m,)`` and the rows ``(m,)`` whose
    changed image could be read."""
    pred = np.empty(len(rows), dtype=object)
    readable = np.zeros(len(rows), dtype=bool)
    for f in np.unique(result.fold[rows]):
        at = np.flatnonzero(result.fold[rows] == f)
        model = result.models[f]
        if result.encoder is None and isinstance(model, OneClass):  # a whole-fit CV's one-class fold: no image read
            pred[at], readable[at] = model.classes_[0], True
            continue
        encoder = result.encoder if result.encoder is not None else Encoder.of(model)
        held = [sources[i] for i in at]
        enc = encoder.encode(held)
        read = [held[i] for i in enc.indices]
        views = [enc.codes, *(encoder.encode_view(read, view).rows(len(read)) for view in result.views[1:])]
        ok = at[enc.indices]
        pred[ok] = model.classes_[mean_proba(model, views).argmax(axis=1)]
        readable[ok] = True
    return pred[readable].astype(str), rows[readable]


def changed_shares(y_true: np.ndarray, before: np.ndarray, after: np.ndarray,
                   samples: float | None = None) -> dict[str, Any]:
    """What a change did to ``(m,)`` predictions: ``flipped``, the share that changed, and
    ``flipped_95``, its 95 % interval (``share_interval``) over ``flipped_95_samples`` independent
    samples (``samples``; None: the m rows, or see ``effective_samples``); ``lost``, the share of the
    right ones made wrong (a flip among wrong answers costs nothing a user sees); ``accuracy`` after
    it. All 0 for no rows."""
    right, changed = before == y_true, after != before
    samples = float(len(before)) if samples is None else samples
    return {"flipped": float(changed.mean()) if len(before) else 0.0,
            "flipped_95": share_interval(float(changed.mean()) if len(before) else 0.0, samples),
            "flipped_95_samples": samples,
            "lost": float((after[right] != y_true[right]).mean()) if right.any() else 0.0,
            "accuracy": float((after == y_true).mean()) if len(before) else 0.0}


def flip_correlation(changed: Sequence[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """How alike the answers of one cluster (the tiles of one micrograph) change: the intraclass
    correlation of the changed flags, pooled over the changes — each ``(changed, clusters)``, ``(m,)``
    bool and ``(m,)`` — by one-way ANOVA over (change, cluster) cells (the estimator for unbalanced
    clusters of binary data, clipped to [0, 1]); None when nothing changed or no cell has two rows.
    It is estimated from the same check whose intervals it widens, and its own uncertainty is not in them."""
    ss_between = ss_within = df_between = df_within = n0_sum = 0.0
    for flags, clusters in changed:
        _, inverse = np.unique(np.asarray(clusters), return_inverse=True)
        n_g = np.bincount(inverse).astype(np.float64)
        k_g = np.bincount(inverse, np.asarray(flags, dtype=np.float64))
        m = n_g.sum()
        if m == 0:
            continue
        ss_between += float((n_g * (k_g / n_g - k_g.sum() / m) ** 2).sum())
        ss_within += float((k_g - k_g ** 2 / n_g).sum())
        df_between, df_within = df_between + len(n_g) - 1, df_within + m - len(n_g)
        n0_sum += m - float((n_g ** 2).sum()) / m
    if df_between <= 0 or df_within <= 0:
        return None
    msb, msw, n0 = ss_between / df_between, ss_within / df_within, n0_sum / df_between
    if msb + (n0 - 1) * msw <= 0:
        return None
    return float(np.clip((msb - msw) / (msb + (n0 - 1) * msw), 0.0, 1.0))


def effective_samples(clusters: np.ndarray, correlation: float | None = None) -> float:
    """How many independent samples ``(m,)`` rows in clusters (e.g. the tiles of micrographs) are
    worth when a cluster's rows correlate by ``correlation`` (``flip_correlation``): m / (1 + (m_w − 1) ρ),
    m_w = Σ m_g² / m the size-weighted mean cluster size (Kish's design effect). ρ = 0: the m rows;
    ρ = 1 or None (not known: the widest), m² / Σ m_g², about the number of clusters."""
    sizes = np.unique(np.asarray(clusters), return_counts=True)[1].astype(np.float64)
    if not len(sizes):
        return 0.0
    m, rho = sizes.sum(), 1.0 if correlation is None else correlation
    return float(m / (1.0 + ((sizes ** 2).sum() / m - 1.0) * rho))


def share_interval(share: float, n: float) -> list[float]:
    """The 95 % Wilson score interval ``[low, high]`` of a ``share`` observed on ``n`` independent
    samples (n need not be whole: ``effective_samples``; ``[0, 1]`` for none): where the share could lie
    on another sample of as many. On 200 independent images a share of 9.5 % reads 6.2–14.4 %; on 26.6,
    what the shift check's 200 tiles of the nanofiber set are worth were every micrograph's tiles to
    change together (``effective_samples``), 3.0–26.2 %."""
    if n <= 0:
        return [0.0, 1.0]
    z2 = WILSON_Z ** 2
    centre = (share + z2 / (2 * n)) / (1 + z2 / n)
    half = WILSON_Z / (1 + z2 / n) * math.sqrt(share * (1 - share) / n + z2 / (4 * n * n))
    # at a share of 0 (or 1) the bound is exactly 0 (or 1); rounding left it 1e-17 off, above the share
    return [0.0 if share <= 0 else max(0.0, centre - half), 1.0 if share >= 1 else min(1.0, centre + half)]


def interval_note(shift: Mapping[str, Any]) -> str:
    """What the 95 % intervals of a shift check's dict (``ShiftCheck.to_dict``) count as a sample, in
    words: "where it could lie on another sample of as many images" or of as many groups' images."""
    if shift.get("interval_by") != "group":
        return "where it could lie on another sample of as many images"
    samples = [c["flipped_95_samples"] for c in shift["changes"] if "flipped_95_samples" in c]
    rho = shift.get("flip_correlation")
    how = (f"the answers of one group change alike (intraclass correlation {rho:.2f})" if rho is not None else
           "how alike the answers of one group change is not known here, so each group counts as one sample")
    worth = f": the {shift['n_images']} images count as {min(samples):.1f} independent samples" if samples else ""
    return f"where it could lie on another sample of as many groups ({how}{worth})"


def changed_groups_text(change: Mapping[str, Any]) -> str:
    """A change's ``changed_groups`` as "5/38" (groups with an answer changed, of the groups), "–" without."""
    counts = change.get("changed_groups")
    return "–" if counts is None else f"{counts['some']}/{counts['of']}"


def share_interval_text(change: dict[str, Any]) -> str:
    """A change's ``flipped_95`` as "6.2–14.4 %"; "–" in a result from before it was recorded."""
    low_high = change.get("flipped_95")
    return "–" if low_high is None else f"{100 * low_high[0]:.1f}–{100 * low_high[1]:.1f} %"


def answer_margin(proba: np.ndarray) -> np.ndarray:
    """How sure each answer is: its probability minus the runner-up's, per row of ``(n, n_classes)``
    probabilities: ``(n,)`` float64 in [0, 1] (NaN for a NaN row, an image that could not be read).
    On new series the shift check's flips gather at small margins (ACCURACY.md run 78)."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape[1] < 2:
        return np.where(np.isnan(proba[:, 0]), np.nan, 1.0)
    top2 = np.sort(proba, axis=1)[:, -2:]  # NaN sorts last: a NaN row stays NaN
    return top2[:, 1] - top2[:, 0]


def by_margin(margin: np.ndarray, right: np.ndarray, changed: Mapping[str, tuple[np.ndarray, np.ndarray]],
              grid: Sequence[float] = MARGIN_GRID) -> list[dict[str, Any]]:
    """Per floor of ``grid``, the answers whose ``margin`` ``(m,)`` reaches it: ``margin``, ``kept``
    (their share), ``n``, ``accuracy`` (``right`` ``(m,)`` bool; ``accuracy_rest`` of the others; each
    None when there are none), and ``max_flipped``, the largest share of them one acquisition change alters.
    ``changed``: per change, ``(readable, altered)``, each ``(m,)`` bool (a change's share counts the
    answers it could re-predict)."""
    rows = []
    for floor in grid:
        kept = margin >= floor
        shares = [float(altered[kept & readable].mean()) for readable, altered in changed.values()
                  if (kept & readable).any()]
        rows.append({"margin": float(floor), "kept": float(kept.mean()) if len(kept) else 0.0, "n": int(kept.sum()),
                     "accuracy": float(right[kept].mean()) if kept.any() else None,  # no answer: no accuracy
                     "accuracy_rest": float(right[~kept].mean()) if (~kept).any() else None,
                     "max_flipped": max(shares, default=0.0)})
    return rows


def steady_margin(margins: Sequence[dict[str, Any]], share: float = STEADY_SHARE) -> dict[str, Any] | None:
    """The first row of ``by_margin``'s table that keeps an answer and whose ``max_flipped`` is under
    ``share``; None when there is none (or, in a result from before it was recorded, no table)."""
    return next((r for r in margins if r["n"] and r["max_flipped"] < share), None)


def steady_margin_text(margins: Sequence[dict[str, Any]], share: float = STEADY_SHARE) -> str:
    """One sentence on ``steady_margin``: from which margin on the answers held, how many they are and
    how right, e.g. "from a margin of 0.10 on, no acquisition change altered 5 % of the answers:
    67.1 % of them, accuracy 0.834 (the others 0.504)"."""
    row = steady_margin(margins, share)
    if row is None:
        return (f"at no margin up to {margins[-1]['margin']:.2f} did every acquisition change alter under "
                f"{100 * share:g} % of the answers" if margins else "")
    rest = "" if row["accuracy_rest"] is None else f" (the others {row['accuracy_rest']:.3f})"
    return (f"from a margin of {row['margin']:.2f} on, no acquisition change altered {100 * share:g} % of the "
            f"answers: {100 * row['kept']:.1f} % of them, accuracy {row['accuracy']:.3f}{rest}")


def shown_margins(margins: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``by_margin``'s table at the floors of ``MARGINS_SHOWN`` (the printed table)."""
    return [r for r in margins if any(abs(r["margin"] - m) < 1e-9 for m in MARGINS_SHOWN)]


def changed_clusters(clusters: np.ndarray, before: np.ndarray, after: np.ndarray) -> dict[str, int]:
    """How a change's altered answers fall on ``clusters`` ``(m,)`` (e.g. micrographs): ``some`` (the
    clusters with an answer altered), ``all`` (those with every answer altered) and ``of`` (the
    clusters). ``some`` near ``all`` says the answers of a cluster change together."""
    counts = changed_by_group(np.asarray(clusters), np.asarray(before), np.asarray(after)).values()
    return {"some": sum(changed > 0 for changed, _ in counts), "all": sum(changed == n for changed, n in counts),
            "of": len(counts)}


def changed_by_group(groups: np.ndarray, before: np.ndarray, after: np.ndarray) -> dict[str, list[int]]:
    """Per value of ``groups`` ``(m,)``: [predictions a change changed, predictions] (``before`` and
    ``after``, ``(m,)``)."""
    return {str(g): [int((after[groups == g] != before[groups == g]).sum()), int((groups == g).sum())]
            for g in np.unique(groups)}


def changed_by_group_text(check: ShiftCheck, most: int = 10) -> str:
    """One line: per held-out value, the predictions the acquisition changes changed, the ``most``
    most changed first, e.g. "changed by held-out series (predictions changed / re-predicted, over
    the 8 changes): ppc9 27/504, ppc3 12/272; none in pp25, pp28" (the JSON has every value)."""
    counts = check.changed_by_group()
    some = [f"{g} {c}/{n}" for g, (c, n) in counts.items() if c]
    none = sorted(g for g, (c, _) in counts.items() if not c)
    n_changes = len(check.acquisition_changes)
    text = (f"changed by held-out {check.group_by} (predictions changed / re-predicted, over the {n_changes} "
            f"changes): {_first(some, most) or 'none'}")
    return text + (f"; none in {_first(none, most)}" if some and none else "")


def _first(items: list[str], most: int) -> str:
    """The first ``most`` of ``items``, comma-separated, and how many more."""
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


#: What the shift check's magnifications are, for the CLI and the report.
MAGNIFICATION_NOTE = ("magnification ×z: the image's centre 1/z by 1/z brought to the input size, as z times the "
                      "magnification would show it; not counted among the acquisition changes. Where the files "
                      "carry a pixel size, --scale takes magnification out")


def change_kind(change: Mapping[str, Any]) -> str:
    """What a shift check's change is: "acquisition" (counted in the largest share and the margins),
    "control" (``intensity.CONTROLS``) or "magnification" (``intensity.MAGNIFICATIONS``), both shown
    beside them. A change recorded before ``kind`` was: "control" or "acquisition"."""
    return str(change.get("kind", "control" if change.get("control") else "acquisition"))


def check_magnification_size(image_size: tuple[int, int] | None) -> None:
    """``ParameterError`` for the magnification check at the native size (``image_size`` None): an
    image is not resized there, so its centre crop shows less field at the same magnification."""
    if image_size is None:
        raise ParameterError("the magnification check (--shift-magnification) needs an input size: at --image-size "
                             "native an image is not resized, so its magnified centre shows less of the field, not a "
                             "magnification; give --image-size N")


def shift_check(result: CVResult, X: Sequence[ImageSource], n_images: int | None = SHIFT_IMAGES,
                shifts: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
                random_state: int = 0, magnification: bool = False) -> ShiftCheck:
    """Re-predict out-of-fold images under each change of ``shifts`` (default ``intensity.SHIFTS`` and
    the control, ``intensity.CONTROLS``; with ``magnification`` also ``intensity.MAGNIFICATIONS``),
    each with the classifier of the fold that held it out, and record it in ``result.shift``.

    ``X``: the images given to ``cross_validate`` (same order). ``n_images``: a seeded sample, stratified
    by the held-out group (or ``group``) and class; None for every image. Each change costs one CNN
    pass per image.
    """
    from . import intensity

    if (result.encoder is None and result.refit != "all") or len(result.models) != len(result.fold_accuracy):
        raise ParameterError("this CV result has no fitted encoder and fold classifiers; run cross_validate in this "
                             "process and pass its result")
    X = list(X)
    indices = result.indices if result.indices is not None else np.arange(len(result.y_true))
    if len(indices) and int(np.max(indices)) >= len(X):
        raise ParameterError(f"X has {len(X)} images but the CV result refers to image #{int(np.max(indices))}; "
                             "pass the same images as to cross_validate")
    if n_images is not None and n_images < 1:
        raise ParameterError(f"n_images={n_images}: give at least 1 (or None for every image)")
    if shifts is None:
        shifts = {**intensity.SHIFTS, **intensity.CONTROLS}
    if magnification:
        fitted = result.encoder.settings if result.encoder is not None else EncoderSettings.of(result.models[0])
        check_magnification_size(fitted.image_size)
        shifts = {**shifts, **intensity.MAGNIFICATIONS}
    groups = result.row_groups if result.row_groups is not None else np.full(len(result.y_true), "")
    rows = shift_sample(groups, result.y_true, n_images, random_state)
    t0 = time.perf_counter()
    changes, altered = [], {}
    for name, fn in shifts.items():
        t = time.perf_counter()
        sources = [Transformed(X[int(indices[r])], fn, name) for r in rows]
        pred, ok = changed_predictions(result, sources, rows)
        kind = ("control" if name in intensity.CONTROLS else
                "magnification" if name in intensity.MAGNIFICATIONS else "acquisition")
        changes.append({"name": name, "n": int(len(ok)), "kind": kind, "control": kind == "control",
                        **changed_shares(result.y_true[ok], result.y_pred[ok], pred),
                        **({"by_group": changed_by_group(groups[ok], result.y_pred[ok], pred)}
                           if result.row_groups is not None else {}),
                        **({"changed_groups": changed_clusters(result.groups[ok], result.y_pred[ok], pred)}
                           if result.groups is not None else {}),
                        "seconds": time.perf_counter() - t})
        readable, flipped = np.isin(rows, ok), np.zeros(len(rows), dtype=bool)
        flipped[readable] = pred != result.y_pred[ok]
        altered[name] = (readable, flipped)
    acquisition = {c["name"]: altered[c["name"]] for c in changes if c["kind"] == "acquisition"}
    correlation = None
    if result.groups is not None:  # the tiles of one group change alike: fewer samples than rows
        correlation = flip_correlation([(flipped[readable], result.groups[rows[readable]])
                                        for readable, flipped in acquisition.values()])
        for c in changes:
            readable = altered[c["name"]][0]
            c["flipped_95_samples"] = effective_samples(result.groups[rows[readable]], correlation)
            c["flipped_95"] = share_interval(c["flipped"], c["flipped_95_samples"])
    right = result.y_pred[rows] == result.y_true[rows]
    margin = answer_margin(result.proba[rows])
    margins = by_margin(margin, right, acquisition)
    magnified = {c["name"]: altered[c["name"]] for c in changes if c["kind"] == "magnification"}
    if magnified:  # beside each floor, apart from the acquisition changes' largest
        for row, mag in zip(margins, by_margin(margin, right, magnified)):
            row["max_flipped_magnification"] = mag["max_flipped"]
    check = ShiftCheck(rows, float(right.mean()) if len(rows) else 0.0,
                       changes, time.perf_counter() - t0,
                       f"{result.group_by} and class" if result.row_groups is not None else "class",
                       result.group_by if result.row_groups is not None else None, margins,
                       "image" if result.groups is None else "group", correlation, altered)
    result.shift = check
    return check
