"""Real SEM micrographs (../shared/datasets/nanofiber-sem): grouped CV beats chance, train/predict
agree, and the default's leave-one-series-out accuracy stays above its measured floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastvlad import datasets
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import cross_validate, encode_images

pytestmark = pytest.mark.slow


def test_grouped_cv_beats_chance(nanofiber: Path, vgg16_path: Path) -> None:
    ds = datasets.load(nanofiber / "manifest.csv")
    assert len(ds) == 1035 and len(ds.classes) == 3 and ds.groups is not None
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
    held_out, truth = list(paths[test][::4]), ds.labels[test][::4]
    proba = model.predict_proba(held_out)
    pred = model.predict(held_out)
    assert len(pred) == len(held_out) and set(pred) <= set(ds.classes)
    assert list(pred) == list(model.classes_[proba.argmax(axis=1)])  # predict is the most probable class
    # Micrographs of groups never seen in training: better than always answering the largest class.
    majority = np.unique(truth, return_counts=True)[1].max() / len(truth)
    accuracy = float((pred == truth).mean())
    print(f"held-out accuracy {accuracy:.3f} on {len(truth)} images (majority class {majority:.3f})")
    assert accuracy > majority + 0.1


#: ACCURACY.md run 94, the default (stretch, 112 short side, one zoomed copy at 1.2 flipped and
#: re-exposed, soft assignment at softness 10, the ridge head on the codes' 64 principal axes at alpha
#: 80, balanced, tta 1): leave-one-series-out mean 0.793 over the 8 series at seed 0, worst series
#: 0.345 (this test, Machine D). The floors sit a few points under, so another machine's BLAS passes
#: and a regression fails: the ridge on the codes themselves (the default of runs 70–93) read 0.752
#: here (worst 0.379), the nearest centre's 0.700, the logistic head's 0.641, the 0.1.0 default's 0.251.
LOSO_MEAN_FLOOR = 0.76
LOSO_WORST_FLOOR = 0.30


def test_default_leave_one_series_out_floor(nanofiber: Path, vgg16_path: Path) -> None:
    """The protocol of benchmarks/accuracy.py: one encoding of every tile (and its mirror, for tta),
    then each series held out once. About 6 minutes on 2 cores."""
    ds = datasets.load(nanofiber / "manifest.csv")
    series = ds.column("series")
    assert len(set(series)) == 8
    est = FastVLAD(device="cpu")
    X = [str(p) for p in ds.paths]
    res = cross_validate(est, X, ds.y, split=series, split_name="series", codes=encode_images(est, X))
    for f in res.per_fold():  # each series held out once, never on both sides
        assert f["n"] == int((series == f["held_out"]).sum())
    print({f["held_out"]: round(f["accuracy"], 3) for f in res.per_fold()}, f"mean {res.accuracy:.3f}")
    assert res.accuracy >= LOSO_MEAN_FLOOR, res.to_dict()
    assert min(res.fold_accuracy) >= LOSO_WORST_FLOOR, res.to_dict()
