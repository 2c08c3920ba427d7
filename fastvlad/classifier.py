"""The classifier on VLAD codes: XGBoost ``multi:softprob``, ``hist`` (the paper's kind of head), or a
linear head (``LinearHead``): a multinomial logistic regression or a ridge classifier.

XGBoost's defaults mirror scikit-learn's ``GradientBoostingClassifier()`` that the paper used:
100 rounds, depth 3, learning rate 0.1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from . import progress
from .errors import InvalidDatasetError


@dataclass(frozen=True)
class BoosterSettings:
    n_estimators: int = 100
    max_depth: int = 3
    learning_rate: float = 0.1
    max_bin: int = 256
    colsample_bynode: float = 1.0
    subsample: float = 1.0  # share of the training rows each tree sees
    min_child_weight: float = 1.0  # smallest total (hessian) weight a leaf may hold
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: Any) -> BoosterSettings:
        """The settings of an estimator's parameters (``FastVLAD``)."""
        # ints and floats as XGBoost's JSON parameters want them (an integral float such as 100.0 passes
        # the parameter checks, and XGBoost refuses it for max_bin)
        return cls(int(model.n_estimators), int(model.max_depth), float(model.learning_rate), int(model.max_bin),
                   float(model.colsample_bynode), float(model.subsample), float(model.min_child_weight))

    def params(self, n_classes: int, device: str, seed: int) -> dict[str, Any]:
        """XGBoost training parameters."""
        p = {"objective": "multi:softprob", "num_class": n_classes, "tree_method": "hist", "device": device,
             "max_depth": self.max_depth, "eta": self.learning_rate, "max_bin": self.max_bin,
             "colsample_bynode": self.colsample_bynode, "subsample": self.subsample,
             "min_child_weight": self.min_child_weight, "seed": seed, "eval_metric": "mlogloss"}
        return {**p, **self.extra}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Sample weights ``(n,)`` that give every class the same total weight: n / (n_classes · count)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return (len(y) / (n_classes * counts[y])).astype(np.float32)


def train(codes: np.ndarray, y: np.ndarray, n_classes: int, settings: BoosterSettings, device: str = "cpu",
          seed: int = 0, weights: np.ndarray | None = None) -> Any:
    """Fit a booster on codes ``(n, dim)`` float32 and integer labels ``(n,)`` (``weights``: per sample)."""
    import xgboost as xgb

    dtrain = xgb.QuantileDMatrix(codes, label=y, weight=weights, max_bin=settings.max_bin)
    with progress.bar(settings.n_estimators, "boosting", unit="round") as bar:
        return xgb.train(settings.params(n_classes, device, seed), dtrain, num_boost_round=settings.n_estimators,
                         callbacks=[_advance_per_round(bar)])


def _advance_per_round(bar: progress.Progress):  # type: ignore[no-untyped-def]
    """An XGBoost callback that advances ``bar`` after every boosting round."""
    import xgboost as xgb

    class Advance(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log) -> bool:  # type: ignore[no-untyped-def]
            bar.advance()
            return False  # never stop training early

    return Advance()


def predict_proba(head: Any, codes: np.ndarray) -> np.ndarray:
    """Class probabilities ``(n, n_classes)`` float32 of a fitted head (an XGBoost booster or a ``LinearHead``)."""
    if isinstance(head, LinearHead):
        return head.predict_proba(codes)
    import xgboost as xgb

    return head.predict(xgb.DMatrix(codes)).astype(np.float32)


def to_bytes(booster: Any) -> bytes:
    """The booster as XGBoost's UBJSON (no pickle)."""
    return bytes(booster.save_raw(raw_format="ubj"))


def from_bytes(data: bytes) -> Any:
    """An XGBoost booster from its UBJSON (checked by ``booster_check`` first when it comes from a file)."""
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(data))
    return booster


# -- the linear head ------------------------------------------------------------------------------
#: The heads that are a ``LinearHead`` (saved as ``linear.npy``); the rest is XGBoost.
LINEAR = ("logistic", "ridge")
#: The ridge head's L2 strength when ``alpha`` is None, by what the head sees: the codes' principal
#: axes (``code_pca``; ACCURACY.md runs 93–94) or the codes themselves (runs 49–51).
RIDGE_ALPHA = {"code axes": 80.0, "codes": 20.0}


def uses_code_axes(model: Any) -> bool:
    """Whether an estimator's (``FastVLAD``) head is fitted on its codes' ``CodeAxes``: a linear head
    with ``code_pca`` set (XGBoost ignores ``code_pca``, as the linear heads ignore its parameters)."""
    return model.code_pca is not None and model.classifier in LINEAR


def ridge_alpha(model: Any) -> float:
    """The ridge head's L2 strength: the estimator's ``alpha``, or when it is None ``RIDGE_ALPHA``'s
    for what the head sees (the axes' unit-length codes and the raw codes want different strengths)."""
    if model.alpha is not None:
        return float(model.alpha)
    return RIDGE_ALPHA["code axes" if uses_code_axes(model) else "codes"]


@dataclass(frozen=True)
class LinearHead:
    """A linear head on the codes: ``p = softmax(x @ coef.T + intercept)``, x the codes, or with
    ``axes`` their unit-length projection on the training codes' principal axes (``CodeAxes``). For
    the logistic regression these are its probabilities; for the ridge classifier, a softmax of its
    scores (targets ±1): they order the classes as the scores do but are not calibrated.

    coef ``(n_classes, dim or d)`` float32, intercept ``(n_classes,)`` float32; saved as one
    ``(n_classes, dim or d + 1)`` array, and the axes as another (no pickle)."""

    coef: np.ndarray
    intercept: np.ndarray
    axes: CodeAxes | None = None

    def margin(self, codes: np.ndarray) -> np.ndarray:
        """Raw scores ``(n, n_classes)`` float64 (the softmax's input)."""
        x = self.axes.apply(codes) if self.axes is not None else np.asarray(codes, dtype=np.float64)
        return x @ self.coef.T.astype(np.float64) + self.intercept

    def contributions(self, codes: np.ndarray) -> np.ndarray:
        """Each code element's share of each score, ``(n, n_classes, dim)`` float64: with the intercept
        they sum to ``margin`` (with ``axes``, each centred element times its weight through the axes,
        over the image's length on them)."""
        x = np.asarray(codes, dtype=np.float64)
        if self.axes is None:
            return x[:, None, :] * self.coef[None].astype(np.float64)
        through = self.coef.astype(np.float64) @ self.axes.axes.T.astype(np.float64)  # (n_classes, dim)
        return ((x - self.axes.mean)[:, None, :] * through[None]) * self.axes.inverse_length(x)[:, None, None]

    def predict_proba(self, codes: np.ndarray) -> np.ndarray:
        """The softmax of the scores of codes ``(n, D)``: ``(n, n_classes)`` float32."""
        m = self.margin(codes)
        m -= m.max(axis=1, keepdims=True)
        e = np.exp(m)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def to_array(self) -> np.ndarray:
        """The coefficients and intercepts as the model file's ``linear.npy``: ``(n_classes, d + 1)`` float32."""
        return np.hstack([self.coef, self.intercept[:, None]]).astype(np.float32)

    @classmethod
    def from_array(cls, a: np.ndarray, axes: CodeAxes | None = None) -> LinearHead:
        """The head of ``to_array``'s ``(n_classes, d + 1)``, on ``axes`` (or on the codes themselves)."""
        a = np.ascontiguousarray(a, dtype=np.float32)
        return cls(np.ascontiguousarray(a[:, :-1]), np.ascontiguousarray(a[:, -1]), axes)


#: ``CodeAxes`` divides each axis by its variance to this power over 2: 1 would whiten the codes
#: fully, 0 only rotate them (ACCURACY.md, run 93: 0.5 read best on new series).
CODE_WHITEN_POWER = 0.5


@dataclass(frozen=True)
class CodeAxes:
    """The training codes' first principal axes, each divided by the square root of its standard
    deviation (``CODE_WHITEN_POWER``); a code on them is scaled to unit length, as VLAD codes are
    after each of their normalisations. A linear head's penalty then weighs the codes' main
    directions less and their rare ones more (Jégou and Chum, ECCV 2012, whiten VLAD codes so).
    mean ``(dim,)`` and axes ``(dim, d)`` float32, as saved."""

    mean: np.ndarray
    axes: np.ndarray

    @classmethod
    def fit(cls, codes: np.ndarray, dims: int) -> CodeAxes:
        """The axes of codes ``(n, dim)``: ``dims`` of them, or as many as the codes span."""
        x = np.asarray(codes, dtype=np.float64)
        mean = x.mean(axis=0)
        x = x - mean
        # The eigenvectors of the smaller of x·xᵀ and xᵀ·x: a GEMM and an (m, m) eigh instead of an SVD
        # of x, for a fit's few thousand codes of 6,400 dims.
        wide = len(x) <= x.shape[1]
        var, vec = np.linalg.eigh(x @ x.T if wide else x.T @ x)
        var, vec = var[::-1], vec[:, ::-1]  # largest first
        d = min(int(dims), int(np.count_nonzero(var > var[0] * 1e-10)) if var.size and var[0] > 0 else 0)
        if d == 0:
            raise InvalidDatasetError("the training codes are all the same, so they span no axis for code_pca: "
                                      "the training images do not differ; use code_pca=None or other images")
        axes = x.T @ vec[:, :d] / np.sqrt(var[:d]) if wide else vec[:, :d]  # (dim, d), orthonormal
        axes = axes / (var[:d] / len(x)) ** (CODE_WHITEN_POWER / 2)
        return cls(mean.astype(np.float32), axes.astype(np.float32))

    def projected(self, codes: np.ndarray) -> np.ndarray:
        """Codes ``(n, dim)`` on the axes, before the unit length: ``(n, d)`` float64."""
        return (np.asarray(codes, dtype=np.float64) - self.mean) @ self.axes.astype(np.float64)

    def inverse_length(self, codes: np.ndarray) -> np.ndarray:
        """1 / the length of each code's projection ``(n,)`` float64 (0 for a code at the mean)."""
        return _inverse_norms(self.projected(codes))

    def apply(self, codes: np.ndarray) -> np.ndarray:
        """Codes ``(n, dim)`` on the axes, unit length: ``(n, d)`` float64."""
        z = self.projected(codes)
        return z * _inverse_norms(z)[:, None]

    def to_array(self) -> np.ndarray:
        """``(d + 1, dim)`` float32: the axes as rows, then the mean."""
        return np.vstack([self.axes.T, self.mean[None]]).astype(np.float32)

    @classmethod
    def from_array(cls, a: np.ndarray) -> CodeAxes:
        """The axes of ``to_array``'s ``(d + 1, D)``: the d axes as rows, then the mean code."""
        a = np.asarray(a, dtype=np.float32)
        return cls(np.ascontiguousarray(a[-1]), np.ascontiguousarray(a[:-1].T))


def _inverse_norms(z: np.ndarray) -> np.ndarray:
    """1 / each row's length of ``z`` ``(n, d)``: ``(n,)`` float64, 0 for a zero row."""
    length = np.linalg.norm(z, axis=1)
    return np.divide(1.0, length, out=np.zeros_like(length), where=length > 0)


def train_linear(model: Any, codes: np.ndarray, y: np.ndarray, n_classes: int,
                 weights: np.ndarray | None = None) -> LinearHead:
    """Fit the linear head of an estimator's parameters (``FastVLAD``: ``classifier`` in ``LINEAR``,
    its ``C`` or ``ridge_alpha``, ``random_state``, ``code_pca``) on codes ``(n, dim)`` and labels ``(n,)``
    in [0, n_classes). With ``code_pca``, on the codes' ``CodeAxes``, which the head keeps."""
    axes = CodeAxes.fit(codes, int(model.code_pca)) if uses_code_axes(model) else None
    x = axes.apply(codes) if axes is not None else codes
    if model.classifier == "ridge":
        head = train_ridge(x, y, n_classes, ridge_alpha(model), weights)
    else:
        head = train_logistic(x, y, n_classes, float(model.C), int(model.random_state), weights)
    return replace(head, axes=axes)


def train_logistic(codes: np.ndarray, y: np.ndarray, n_classes: int, C: float, seed: int = 0,
                   weights: np.ndarray | None = None) -> LinearHead:
    """Fit the logistic head on codes ``(n, dim)`` and integer labels ``(n,)`` in [0, n_classes)
    (scikit-learn's ``LogisticRegression``, L2 penalty of strength 1/C, lbfgs; ``weights``: per sample)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(codes, y, sample_weight=weights)
    coef, intercept = lr.coef_, lr.intercept_
    if coef.shape[0] == 1:  # two classes: sigmoid(w·x + b) = softmax([0, w·x + b])
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    return LinearHead(coef.astype(np.float32), intercept.astype(np.float32))


def train_ridge(codes: np.ndarray, y: np.ndarray, n_classes: int, alpha: float,
                weights: np.ndarray | None = None) -> LinearHead:
    """Fit the ridge head on codes ``(n, dim)`` and integer labels ``(n,)`` in [0, n_classes): least
    squares onto ±1 targets per class with an L2 penalty ``alpha`` (scikit-learn's ``RidgeClassifier``;
    closed form, no seed). On new material series it scored above the logistic head at every seed
    measured (ACCURACY.md, run 31)."""
    from sklearn.linear_model import RidgeClassifier

    rc = RidgeClassifier(alpha=alpha).fit(codes, y, sample_weight=weights)
    coef, intercept = np.atleast_2d(rc.coef_), np.atleast_1d(rc.intercept_)  # two classes: coef_ is (dim,)
    if coef.shape[0] == 1:  # two classes: one score s (target +1 for class 1, −1 for class 0), so
        # class 0's own score, as with more classes, is −s
        coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
    return LinearHead(coef.astype(np.float32), intercept.astype(np.float32))
