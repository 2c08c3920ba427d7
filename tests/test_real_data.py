"""Real SEM micrographs (../shared/datasets/nanofiber-sem): grouped CV beats chance, train/predict agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastvlad import datasets
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import cross_validate

pytestmark = pytest.mark.slow


def test_grouped_cv_beats_chance(nanofiber: Path, vgg16_path: Path) -> None:
    ds = datasets.load(nanofiber / "manifest.csv")
    assert len(ds) == 936 and len(ds.classes) == 3 and ds.groups is not None
    est = FastVLAD(density=1, k=32, image_size=112, codebook_images=50, n_estimators=30, device="cpu")
    res = cross_validate(est, [str(p) for p in ds.paths], ds.labels, ds.groups, n_splits=3)
    assert res.grouped
    for f in range(3):  # no micrograph (group) in two folds
        assert not set(ds.groups[res.fold == f]) & set(ds.groups[res.fold != f])
    majority = np.unique(ds.labels, return_counts=True)[1].max() / len(ds)
    assert res.accuracy > majority + 0.1, res.to_dict()


def test_train_predict_on_held_out_groups(nanofiber: Path, vgg16_path: Path) -> None:
    ds = datasets.load(nanofiber / "manifest.csv")
    groups = sorted(set(ds.groups))
    test_groups = set(groups[::5])
    test = np.array([g in test_groups for g in ds.groups])
    paths = np.array([str(p) for p in ds.paths])
    model = FastVLAD(density=1, k=32, image_size=112, codebook_images=50, n_estimators=30, device="cpu")
    model.fit(list(paths[~test][::3]), ds.labels[~test][::3])
    pred = model.predict(list(paths[test][::4]))
    assert set(pred) <= set(ds.classes)
    assert len(pred) == len(paths[test][::4])
