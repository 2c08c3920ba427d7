"""Cross-validation that runs the CNN once per image.

The hypercolumn PCA (with ``pca``) and the codebook are unsupervised: both are fitted once on
one sample of ALL images (labels unused), every image is encoded once, and only the
classifier (XGBoost, on the cached codes) is refitted per fold. Folds are
grouped by the ``group`` column when there is one (tiles of one micrograph never straddle
train and test), stratified otherwise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from . import progress
from .encoder import Encoder, Timings
from .errors import InvalidDatasetError
from .estimator import FastVLAD


@dataclass
class CVResult:
    classes: list[str]
    y_true: np.ndarray  # (n,) class names
    y_pred: np.ndarray  # (n,) out-of-fold predictions
    proba: np.ndarray  # (n, n_classes) out-of-fold probabilities
    fold: np.ndarray  # (n,) fold index of each image
    fold_accuracy: list[float]
    grouped: bool
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    indices: np.ndarray | None = None  # (n,) position of each row's image in the list given to cross_validate
    backbone_sha256: str = ""

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.fold_accuracy))

    @property
    def accuracy_std(self) -> float:
        return float(np.std(self.fold_accuracy))

    def per_class(self) -> dict[str, dict[str, float]]:
        p, r, f, s = precision_recall_fscore_support(self.y_true, self.y_pred, labels=self.classes, zero_division=0)
        return {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                for i, c in enumerate(self.classes)}

    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.y_true, self.y_pred, labels=self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy_mean": self.accuracy, "accuracy_std": self.accuracy_std,
                "fold_accuracy": self.fold_accuracy, "pooled_accuracy": float(accuracy_score(self.y_true, self.y_pred)),
                "grouped": self.grouped, "classes": self.classes, "per_class": self.per_class(),
                "confusion": self.confusion().tolist(), "seconds": self.seconds, "n_images": int(len(self.y_true)),
                "skipped": self.skipped}


def folds(y: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int) -> np.ndarray:
    """Fold index of every image: grouped-stratified with groups, stratified without."""
    n_splits_ok = min(n_splits, len(np.unique(groups)) if groups is not None else np.bincount(
        np.unique(y, return_inverse=True)[1]).min())
    if n_splits_ok < 2:
        raise InvalidDatasetError(f"cannot make {n_splits} folds: too few {'groups' if groups is not None else 'images per class'}")
    splitter = (StratifiedGroupKFold(n_splits_ok, shuffle=True, random_state=seed) if groups is not None
                else StratifiedKFold(n_splits_ok, shuffle=True, random_state=seed))
    fold = np.empty(len(y), dtype=np.int64)
    for i, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
        fold[test] = i
    return fold


def cross_validate(estimator: FastVLAD, X: list, y: np.ndarray, groups: np.ndarray | None = None,
                   n_splits: int = 5) -> CVResult:
    """Out-of-fold predictions for every image; the CNN runs once per image."""
    t0 = time.perf_counter()
    est = clone(estimator)
    X = list(X)
    timings = Timings()
    encoder = Encoder.of(est).fit_codebook(X, int(est.k), int(est.codebook_images), timings=timings)
    enc = encoder.encode(X, timings)
    codes, y_ok = enc.codes, np.asarray(y)[enc.indices]
    g_ok = np.asarray(groups)[enc.indices] if groups is not None else None
    fold = folds(y_ok, g_ok, n_splits, est.random_state)
    classes = sorted(set(y_ok.tolist()))
    pred = np.empty(len(y_ok), dtype=object)
    proba = np.zeros((len(y_ok), len(classes)), dtype=np.float32)
    accs: list[float] = []
    t = time.perf_counter()
    with progress.bar(int(fold.max()) + 1, "cross-validation", unit="fold") as bar:
        for f in range(int(fold.max()) + 1):
            train, test = fold != f, fold == f
            model = clone(est).fit_codes(codes[train], y_ok[train])
            p = model.predict_proba_codes(codes[test])
            cols = np.array([classes.index(c) for c in model.classes_])
            proba[np.ix_(np.flatnonzero(test), cols)] = p
            pred[test] = model.classes_[p.argmax(axis=1)]
            accs.append(float((pred[test] == y_ok[test]).mean()))
            bar.advance()
    seconds = {**timings.seconds, "classifier": time.perf_counter() - t, "total": time.perf_counter() - t0}
    skipped = [(str(X[i]), str(e)) for i, e in enc.failed]
    return CVResult(classes, y_ok, pred.astype(str), proba, fold, accs, groups is not None, seconds, skipped,
                    enc.indices, encoder.cnn.sha256)
