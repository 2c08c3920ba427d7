"""Gradient-boosted softmax classifier on VLAD codes: XGBoost ``multi:softprob``, ``hist``.

Defaults mirror scikit-learn's ``GradientBoostingClassifier()`` that the paper used:
100 rounds, depth 3, learning rate 0.1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import progress


@dataclass(frozen=True)
class BoosterSettings:
    n_estimators: int = 100
    max_depth: int = 3
    learning_rate: float = 0.1
    max_bin: int = 256
    colsample_bynode: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: Any) -> BoosterSettings:
        """The settings of an estimator's parameters (``FastVLAD``)."""
        return cls(model.n_estimators, model.max_depth, model.learning_rate, model.max_bin, model.colsample_bynode)

    def params(self, n_classes: int, device: str, seed: int) -> dict[str, Any]:
        """XGBoost training parameters."""
        p = {"objective": "multi:softprob", "num_class": n_classes, "tree_method": "hist", "device": device,
             "max_depth": self.max_depth, "eta": self.learning_rate, "max_bin": self.max_bin,
             "colsample_bynode": self.colsample_bynode, "seed": seed, "eval_metric": "mlogloss"}
        return {**p, **self.extra}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train(codes: np.ndarray, y: np.ndarray, n_classes: int, settings: BoosterSettings, device: str = "cpu",
          seed: int = 0) -> Any:
    """Fit a booster on codes ``(n, dim)`` float32 and integer labels ``(n,)``."""
    import xgboost as xgb

    dtrain = xgb.QuantileDMatrix(codes, label=y, max_bin=settings.max_bin)
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


def predict_proba(booster, codes: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Class probabilities ``(n, n_classes)`` float32."""
    import xgboost as xgb

    return booster.predict(xgb.DMatrix(codes)).astype(np.float32)


def to_bytes(booster) -> bytes:  # type: ignore[no-untyped-def]
    """The booster as XGBoost's UBJSON (no pickle)."""
    return bytes(booster.save_raw(raw_format="ubj"))


def from_bytes(data: bytes):  # type: ignore[no-untyped-def]
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(data))
    return booster
