"""Cross-validation of a tiling model: tiles are the samples, micrographs the groups.

Every tile of a micrograph lands in the same fold (grouped by the data's ``group`` column when it
has one, else by the micrograph itself), so no micrograph has tiles on both sides; the
out-of-fold tile probabilities then give each micrograph an answer (``tiling.Plan.aggregate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import datasets, tiling
from .evaluate import CVResult, cross_validate
from .images import ImageSource


@dataclass
class TiledCV:
    """A tile-level ``CVResult`` and the plan that says which micrograph each tile came from."""

    result: CVResult
    plan: tiling.Plan
    y: np.ndarray  # (n_micrographs,) labels

    def micrographs(self) -> tuple[tiling.Aggregate, float]:
        """Out-of-fold answers per micrograph and their accuracy (micrographs with no readable tile left out)."""
        tile_proba = np.full((len(self.plan.sources), len(self.result.classes)), np.nan, dtype=np.float32)
        if self.result.indices is not None:
            tile_proba[self.result.indices] = self.result.proba
        agg = self.plan.aggregate(tile_proba)
        ok = ~np.isnan(agg.proba).any(axis=1)
        pred = np.asarray(self.result.classes)[agg.proba[ok].argmax(axis=1)]
        return agg, float((pred == self.y[ok]).mean()) if ok.any() else float("nan")


def cross_validate_tiles(estimator: Any, X: Sequence[ImageSource], y: np.ndarray, groups: np.ndarray | None = None,
                         n_splits: int = 5) -> TiledCV:
    """``evaluate.cross_validate`` on the tiles of the micrographs ``X`` (labels ``y``, optional ``groups``
    per micrograph) cut by ``estimator``'s tiling settings."""
    plan = tiling.plan_for(estimator, X)
    if plan is None:
        plan = tiling.Plan(list(X), np.arange(len(X)), len(X))
    y = np.asarray(y)
    datasets.classes_left(y, y[plan.owner])  # micrographs dropped while planning never reach cross_validate
    by = np.asarray(groups) if groups is not None else np.arange(len(X)).astype(str)
    res = cross_validate(estimator, plan.sources, y[plan.owner], by[plan.owner], n_splits)
    res.skipped = plan.failures() + res.skipped
    return TiledCV(res, plan, y)
