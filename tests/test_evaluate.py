"""Honest evaluation (issue 14): leave-one-group-out over a manifest column, accuracy per held-out
group, classes missing from a training fold, the confound warning, the shift check and
``evaluate --split/--shift`` on the command line."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score
from typer.testing import CliRunner

from fastvlad import datasets, demo, intensity
from fastvlad.cli import app
from fastvlad.errors import InvalidDatasetError, ParameterError
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import (
    MAGNIFICATION_NOTE,
    CVResult,
    ShiftCheck,
    answer_margin,
    by_group_text,
    by_margin,
    changed_by_group,
    changed_by_group_text,
    changed_clusters,
    changed_groups_text,
    changed_shares,
    check_folds,
    confounds,
    cross_validate,
    effective_samples,
    flip_correlation,
    folds,
    mean_interval,
    share_interval,
    shift_check,
    steady_margin,
    steady_margin_text,
    stratified_rows,
)

from .conftest import small_model_params
from .test_report import _check_self_contained

SMALL = ["--density", "0.1", "-k", "8", "--image-size", "64"]
PER_CLASS = 6


def _with_series(root: Path, series_of: Callable[[str, int], str]) -> Path:
    """The demo set (6 images per class, 2 groups per class) with a ``series`` column:
    ``series_of(label, j)`` for the j-th image of a class."""
    demo.write_dataset(root, PER_CLASS, size=64, random_state=0, groups=2)
    manifest = root / "manifest.csv"
    rows = list(csv.DictReader(manifest.open()))
    for r in rows:
        r["series"] = series_of(r["label"], int(Path(r["path"]).stem.rsplit("_", 1)[1]))
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "group", "series"])
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def balanced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every series holds every class; s0, s1, s2 hold 3, 2, 1 images of each (unequal sizes, so the
    mean over held-out series differs from the pooled accuracy)."""
    return _with_series(tmp_path_factory.mktemp("balanced"), lambda label, j: "s0" if j < 3 else "s1" if j < 5 else "s2")


@pytest.fixture(scope="module")
def confounded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CNT-fiber comes from series ppc9 alone, which holds nothing else; the other classes share s0–s2."""
    return _with_series(tmp_path_factory.mktemp("confounded"),
                        lambda label, j: "ppc9" if label == "CNT-fiber" else f"s{j % 3}")


@pytest.fixture(scope="module")
def split_cv(vgg16_path: Path, balanced: Path) -> tuple[CVResult, datasets.Dataset]:
    ds = datasets.load(balanced)
    res = cross_validate(FastVLAD(**small_model_params()), [str(p) for p in ds.paths], ds.y, ds.groups,
                         split=ds.column("series"), split_name="series")
    return res, ds


def test_leave_one_group_out_holds_out_each_group_once() -> None:
    rng = np.random.default_rng(0)
    split = rng.choice(["a", "b", "c", "d", "e"], 60)
    y = rng.choice(["x", "y"], 60)
    fold = folds(y, None, 3, 0, split)  # n_splits is ignored: one fold per value
    assert sorted(np.unique(fold)) == list(range(5))
    for f in range(5):
        (held,) = set(split[fold == f])  # one group per fold…
        assert held not in set(split[fold != f])  # …never on both sides
        np.testing.assert_array_equal(fold == f, split == held)  # all of it
    with pytest.raises(InvalidDatasetError, match="at least two values"):
        folds(y, None, 3, 0, np.full(60, "same"))


def test_per_group_accuracy_recomputes_from_out_of_fold_predictions(split_cv: tuple[CVResult, datasets.Dataset]) -> None:
    res, ds = split_cv
    series = ds.column("series")[res.indices]
    assert res.leave_one_out and res.group_by == "series" and res.fold_names == ["s0", "s1", "s2"]
    nums = res.to_dict()
    assert nums["split_by"] == "series" and [f["held_out"] for f in nums["folds"]] == ["s0", "s1", "s2"]
    assert nums["views"] == [{"flip": 0, "zoom": 1.0}, {"flip": 1, "zoom": 1.0}]  # the default tta=1
    accs = []
    for f, row in enumerate(nums["folds"]):
        test = series == row["held_out"]
        np.testing.assert_array_equal(res.fold == f, test)
        # the classifier of this fold learnt from every other image and none of this group
        assert res.models[f].train_info_["n_images"] == int((~test).sum())
        accs.append(accuracy_score(res.y_true[test], res.y_pred[test]))
        assert row["n"] == int(test.sum()) and row["accuracy"] == pytest.approx(accs[-1])
        assert row["classes"] == {c: int((res.y_true[test] == c).sum()) for c in res.classes}
        assert row["missing_from_training"] == []
    np.testing.assert_allclose([nums["accuracy_mean"], nums["accuracy_std"], nums["accuracy_min"], nums["accuracy_max"]],
                               [np.mean(accs), np.std(accs), np.min(accs), np.max(accs)])
    assert nums["pooled_accuracy"] == pytest.approx(accuracy_score(res.y_true, res.y_pred))
    assert res.warnings() == [] and nums["warnings"] == []  # every series holds every class


def test_a_class_missing_from_training(vgg16_path: Path, confounded: Path) -> None:
    ds = datasets.load(confounded)
    sources = [str(p) for p in ds.paths]
    res = cross_validate(FastVLAD(**small_model_params()), sources, ds.y, split=ds.column("series"),
                         split_name="series")
    fibre = res.classes.index("CNT-fiber")
    for f, row in enumerate(res.per_fold()):
        test = res.fold == f
        if row["held_out"] == "ppc9":  # its only class was never seen in training
            assert row["missing_from_training"] == ["CNT-fiber"] and row["accuracy"] == 0.0
            assert not np.any(res.proba[test, fibre]) and "CNT-fiber" not in set(res.y_pred[test])
        else:
            assert row["missing_from_training"] == []
        np.testing.assert_allclose(res.proba[test].sum(axis=1), 1, rtol=1e-5)  # every class column filled
    # two classes, one series each: holding one out leaves a training set of a single class
    two = np.isin(ds.y, ["CNT-fiber", "CNT-Matrix"])
    res = cross_validate(FastVLAD(**small_model_params()), list(np.array(sources)[two]), ds.y[two],
                         split=ds.y[two], split_name="series")
    assert res.fold_accuracy == [0.0, 0.0] and res.missing == [["CNT-Matrix"], ["CNT-fiber"]]
    assert set(res.y_pred[res.y_true == "CNT-fiber"]) == {"CNT-Matrix"}


def test_confound_warning_fires_only_when_a_class_has_one_value() -> None:
    y = np.array(["Defective"] * 4 + ["NonDefective"] * 4)
    confounded = np.array(["ppc9"] * 4 + ["pp25", "pp28", "pp25", "pp28"])
    balanced = np.array(["ppc9", "psnppy4"] * 2 + ["pp25", "pp28", "pp25", "pp28"])
    assert confounds(y, confounded) == [("Defective", "ppc9")]
    assert confounds(y, balanced) == [] and confounds(y, None) == []


def test_by_group_counts_groups_all_right_all_wrong_and_mixed() -> None:
    classes = ["a", "b"]
    # g1 all right; g2 one right of three, the mean of its probabilities right; g3 all wrong; g4 holds
    # both classes (mixed, and left out of the accuracy of the mean)
    groups = np.array(["g1", "g1", "g1", "g2", "g2", "g2", "g3", "g4", "g4"])
    y_true = np.array(["a", "a", "a", "b", "b", "b", "a", "b", "a"])
    y_pred = np.array(["a", "a", "a", "a", "a", "b", "b", "a", "a"])
    proba = np.array([[0.9, 0.1]] * 3 + [[0.6, 0.4], [0.6, 0.4], [0.0, 1.0], [0.2, 0.8], [0.7, 0.3], [0.7, 0.3]],
                     dtype=np.float32)
    res = CVResult(classes, y_true, y_pred, proba, np.zeros(9, int), [0.5], True, groups=groups)
    summary = res.by_group()
    assert summary == {"n_groups": 4, "all_right": 1, "all_wrong": 1, "mixed": 2, "n_one_class": 3,
                       "accuracy_of_mean": 2 / 3}
    assert res.to_dict()["by_group"] == summary
    assert by_group_text(summary, 9).startswith("per group (the group column, 4 values): 1 all right, 1 all wrong, "
                                                "2 mixed; the mean of a group's probabilities is right for 2 of 3 (0.667)")
    no_groups = CVResult(classes, y_true, y_pred, proba, np.zeros(9, int), [0.5], False)
    assert no_groups.by_group() is None and by_group_text(None, 9) == ""
    one_each = CVResult(classes, y_true, y_pred, proba, np.zeros(9, int), [0.5], True, groups=np.arange(9).astype(str))
    assert by_group_text(one_each.by_group(), 9) == ""  # every image its own group: nothing to add


def test_stratified_sample_is_seeded_and_covers_every_stratum() -> None:
    strata = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 15 + ["d"] * 5)
    rows = stratified_rows(strata, 20, seed=1)
    np.testing.assert_array_equal(rows, stratified_rows(strata, 20, seed=1))
    assert not np.array_equal(rows, stratified_rows(strata, 20, seed=2))
    assert len(rows) == len(set(rows.tolist())) == 20
    counts = {s: int((strata[rows] == s).sum()) for s in "abcd"}
    assert counts == {"a": 10, "b": 6, "c": 3, "d": 1}  # in proportion
    assert set(strata[stratified_rows(strata, 4, seed=0)]) == set("abcd")  # each stratum before a second of any
    np.testing.assert_array_equal(stratified_rows(strata, 500, seed=0), np.arange(100))


def test_shift_check_is_deterministic_and_identity_changes_nothing(split_cv: tuple[CVResult, datasets.Dataset]) -> None:
    res, ds = split_cv
    sources = [str(p) for p in ds.paths]
    shifts = {"identity": lambda v: v, "inverted": lambda v: 255.0 - v}
    a = shift_check(res, sources, n_images=12, shifts=shifts, random_state=3).to_dict()
    first_rows = res.shift.rows.copy()  # type: ignore[union-attr]
    b = shift_check(res, sources, n_images=12, shifts=shifts, random_state=3).to_dict()
    np.testing.assert_array_equal(first_rows, res.shift.rows)  # type: ignore[union-attr]
    for d in (a, b):
        d.pop("seconds")
        for c in d["changes"]:
            c.pop("seconds")
    assert a == b
    identity = a["changes"][0]
    assert identity["n"] == 12 and identity["flipped"] == 0.0 and identity["accuracy"] == a["accuracy_unchanged"]
    assert identity["lost"] == 0.0
    # 12 rows cover the 3 series × 4 classes strata
    series = ds.column("series")[res.indices]
    assert len({(series[r], res.y_true[r]) for r in first_rows}) == 12
    assert res.to_dict()["shift"]["changes"][0]["name"] == "identity"


def test_magnifications_are_shown_beside_the_acquisition_changes(split_cv: tuple[CVResult, datasets.Dataset]) -> None:
    """A change named in ``intensity.MAGNIFICATIONS`` is recorded with kind "magnification" and kept out
    of what counts the acquisition changes: the largest share, the margins, the per-group counts.
    Here it inverts the image, so it changes answers an unchanged image does not."""
    res, ds = split_cv
    sources = [str(p) for p in ds.paths]
    name = next(iter(intensity.MAGNIFICATIONS))
    check = shift_check(res, sources, n_images=12, shifts={"identity": lambda v: v, name: lambda v: 255.0 - v})
    kinds = {c["name"]: c["kind"] for c in check.changes}
    assert kinds == {"identity": "acquisition", name: "magnification"}
    assert check.changes[1]["flipped"] > 0 and not check.changes[1]["control"]
    assert check.max_flipped == 0.0 and [c["name"] for c in check.acquisition_changes] == ["identity"]
    assert check.margins[0]["max_flipped"] == 0.0
    assert check.margins[0]["max_flipped_magnification"] == check.changes[1]["flipped"]  # every answer at floor 0
    assert all(changed == 0 for changed, _ in check.changed_by_group().values())
    assert check.to_dict()["max_flipped"] == 0.0 and "changed_rows" not in check.to_dict()
    for c in check.changes:  # every change's rows, the magnification's too: what its share counts
        readable, changed = check.changed_rows[c["name"]]
        assert readable.all() and changed.mean() == c["flipped"]
    every = shift_check(res, sources, n_images=4, magnification=True)
    assert [c["kind"] for c in every.changes] == ["acquisition"] * 8 + ["control"] + ["magnification"] * 3
    assert [c["name"] for c in every.changes][-3:] == list(intensity.MAGNIFICATIONS)
    assert all(c["n"] == 4 for c in every.changes)
    none = shift_check(res, sources, n_images=4, shifts={"identity": lambda v: v})
    assert all("max_flipped_magnification" not in r for r in none.margins)


def test_changed_shares_count_right_answers_lost_among_the_right_ones() -> None:
    """``lost`` is the share of the right predictions a change makes wrong: a flip between two wrong
    classes, or from wrong to right, changes a prediction but loses no right answer."""
    y_true = np.array(["a", "a", "b", "b", "c"])
    before = np.array(["a", "a", "b", "c", "a"])  # right, right, right, wrong, wrong
    after = np.array(["a", "b", "b", "b", "b"])  # kept, lost, kept, wrong → right, wrong → wrong

    def shares(*arrays: np.ndarray) -> dict[str, float]:
        return {k: v for k, v in changed_shares(*arrays).items() if not k.startswith("flipped_95")}

    assert shares(y_true, before, after) == {"flipped": 0.6, "lost": 1 / 3, "accuracy": 0.6}
    assert shares(y_true, before, before) == {"flipped": 0.0, "lost": 0.0, "accuracy": 0.6}
    none_right = shares(y_true[3:], before[3:], y_true[3:])
    assert none_right == {"flipped": 1.0, "lost": 0.0, "accuracy": 1.0}
    empty = np.array([], dtype=str)
    assert changed_shares(empty, empty, empty) == {"flipped": 0.0, "flipped_95": [0.0, 1.0], "flipped_95_samples": 0.0,
                                                   "lost": 0.0, "accuracy": 0.0}


def test_a_changed_share_carries_its_95_percent_interval() -> None:
    """The Wilson score interval of the flipped share (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n),
    z = 1.96, here worked by hand: 19 of 200 → 0.0617–0.1436; none of 200 → 0–z²/(n + z²) = 0.0188."""
    y_true = np.array(["a"] * 200)
    after = y_true.copy()
    after[:19] = "b"
    low, high = changed_shares(y_true, y_true, after)["flipped_95"]
    assert low == pytest.approx(0.0617, abs=1e-4) and high == pytest.approx(0.1436, abs=1e-4)
    assert changed_shares(y_true, y_true, y_true)["flipped_95"] == pytest.approx([0.0, 0.0188], abs=1e-4)
    assert changed_shares(y_true[:1], y_true[:1], after[:1])["flipped_95"][0] > 0.2  # 1 of 1: far from sure


def test_the_mean_accuracy_over_held_out_groups_carries_a_t_interval() -> None:
    """Mean ± t(0.975, n − 1)·s/√n with the sample standard deviation s, worked by hand: 0.6, 0.7, 0.8
    → 0.7 ± 4.302653 × 0.1 / √3 = 0.4516–0.9484; clipped to [0, 1]; none for one value."""
    assert mean_interval([0.6, 0.7, 0.8]) == pytest.approx([0.45158, 0.94842], abs=1e-5)
    assert mean_interval([0.9, 1.0, 1.0, 0.3]) == pytest.approx([0.2643, 1.0], abs=1e-4)
    assert mean_interval([0.7]) is None and mean_interval([0.5, 0.5]) == [0.5, 0.5]
    # A clipped bound is said so: "0.000–1.000" had been printed for −0.125…1.701 without a word.
    from fastvlad.evaluate import mean_interval_text

    assert mean_interval_text(mean_interval([0.9, 1.0, 1.0, 0.3]), [0.9, 1.0, 1.0, 0.3]).endswith(
        "0.264–1.000 (Student's t over the 4 values, clipped to [0, 1])")
    assert mean_interval_text(mean_interval([0.6, 0.7, 0.8]), [0.6, 0.7, 0.8]).endswith("over the 3 values)")


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (0, 38), (3, 38), (19, 200), (200, 200), (7, 1035)])
def test_the_share_interval_is_scipys_wilson_interval_on_whole_samples(k: int, n: int) -> None:
    """``share_interval`` takes a fractional sample size (``effective_samples``); on whole ones it is
    scipy's Wilson score interval (an independent implementation)."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert share_interval(k / n, n) == pytest.approx([ci.low, ci.high], abs=1e-12)


def test_tiles_of_one_micrograph_that_change_together_count_as_one_sample() -> None:
    """Tiles of one micrograph can change together (ACCURACY.md run 88: they are copies of it a few
    pixels apart): 200 tiles of 10 micrographs, 2 micrographs wholly changed, correlate fully and are 10
    samples, 2 changed — Wilson's interval on 2 of 10 (0.057–0.510), not on 40 of 200 (0.150–0.261)."""
    clusters = np.repeat(np.arange(10), 20).astype(str)
    flags = np.zeros(200, dtype=bool)
    flags[:40] = True  # micrographs 0 and 1, every tile
    rho = flip_correlation([(flags, clusters)])
    assert rho == 1.0 and effective_samples(clusters, rho) == 10.0
    assert share_interval(0.2, effective_samples(clusters, rho)) == pytest.approx([0.0567, 0.5098], abs=1e-4)
    assert share_interval(0.2, 200) == pytest.approx([0.1505, 0.2609], abs=1e-4)
    y_true = np.array(["a"] * 200)
    after = np.where(flags, "b", "a")
    assert changed_shares(y_true, y_true, after, 10.0)["flipped_95"] == share_interval(0.2, 10.0)
    assert changed_clusters(clusters, y_true, after) == {"some": 2, "all": 2, "of": 10}
    after[45] = "b"  # one tile more, of micrograph 2
    assert changed_clusters(clusters, y_true, after) == {"some": 3, "all": 2, "of": 10}


def _anova_icc(cells: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The pooled one-way ANOVA intraclass correlation written out row by row (``flip_correlation``'s oracle)."""
    ssb = ssw = dfb = dfw = n0 = 0.0
    for flags, clusters in cells:
        y, m = flags.astype(float), len(flags)
        names = sorted(set(clusters.tolist()))
        for g in names:
            yg = y[clusters == g]
            ssb += len(yg) * (yg.mean() - y.mean()) ** 2
            ssw += sum((v - yg.mean()) ** 2 for v in yg)
        dfb, dfw = dfb + len(names) - 1, dfw + m - len(names)
        n0 += m - sum((clusters == g).sum() ** 2 for g in names) / m
    msb, msw, n0 = ssb / dfb, ssw / dfw, n0 / dfb
    return max(0.0, min(1.0, (msb - msw) / (msb + (n0 - 1) * msw)))


def test_flip_correlation_is_the_pooled_intraclass_correlation() -> None:
    """Whole clusters changed: 1; one change in every cluster whatever its size: 0 (clipped); partial
    clusters of unequal sizes, pooled over three changes: the ANOVA estimator written out by hand; no
    change at all, or one row per cluster: not known (None)."""
    rng = np.random.default_rng(0)
    clusters = np.repeat(["a", "b", "c", "d"], [2, 2, 5, 9])
    whole = np.isin(clusters, ["a", "c"])
    assert flip_correlation([(whole, clusters)]) == 1.0
    spread = np.zeros(len(clusters), dtype=bool)
    for g in "abcd":
        spread[np.flatnonzero(clusters == g)[:1]] = True
    assert flip_correlation([(spread, clusters)]) == 0.0
    cells = [(rng.random(len(clusters)) < np.where(np.isin(clusters, ["c", "d"]), 0.6, 0.1), clusters),
             (spread, clusters), (whole & (rng.random(len(clusters)) < 0.7), clusters)]
    expected = _anova_icc(cells)
    assert 0.0 < expected < 1.0 and flip_correlation(cells) == pytest.approx(expected, abs=1e-12)
    assert flip_correlation([(np.zeros(len(clusters), dtype=bool), clusters)]) is None
    assert flip_correlation([(np.ones(4, dtype=bool), np.arange(4))]) is None


def test_effective_samples_of_clusters() -> None:
    """m / (1 + (Σ m_g² / m − 1) ρ): every row its own cluster gives m; equal clusters fully alike their
    number, not alike the rows; one large cluster and three single tiles, fully alike, 47² / (44² + 3) —
    about one sample more than the large one; ρ not known counts as fully alike."""
    assert effective_samples(np.arange(7), 0.5) == 7.0
    assert effective_samples(np.repeat(["p", "q", "r"], 5), 1.0) == 3.0
    assert effective_samples(np.repeat(["p", "q", "r"], 5), 0.0) == 15.0
    assert effective_samples(np.repeat(["p", "q", "r"], 5), 0.5) == pytest.approx(15 / 3)
    big = np.array(["big"] * 44 + ["a", "b", "c"])
    assert effective_samples(big, 1.0) == effective_samples(big) == pytest.approx(47 ** 2 / (44 ** 2 + 3))
    assert effective_samples(np.array([], dtype=str)) == 0.0


def test_an_answers_margin_is_its_probability_minus_the_runner_ups() -> None:
    proba = np.array([[0.5, 0.3, 0.2], [0.1, 0.45, 0.45], [0.0, 0.0, 1.0], [np.nan, np.nan, np.nan]])
    np.testing.assert_allclose(answer_margin(proba)[:3], [0.2, 0.0, 1.0], atol=1e-12)
    assert np.isnan(answer_margin(proba)[3])
    np.testing.assert_array_equal(answer_margin(np.array([[1.0], [np.nan]])), [1.0, np.nan])


def test_sure_answers_are_those_at_or_above_a_margin() -> None:
    """``by_margin``: per floor, the answers whose margin reaches it, how right they are and the most one
    change alters among them, counting only the answers a change could re-predict; ``steady_margin``:
    the first floor where every change alters under 5 %. Worked by hand on six answers."""
    margin = np.array([0.0, 0.05, 0.1, 0.2, 0.3, np.nan])
    right = np.array([False, True, False, True, True, False])
    readable = np.array([True, True, True, True, False, True])
    changed = {"gain": (np.ones(6, bool), np.array([True, True, False, False, False, False])),
               "blur": (readable, np.array([False, False, True, False, True, False]))}  # row 4 unreadable: not counted
    rows = by_margin(margin, right, changed, grid=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5))
    assert [r["n"] for r in rows] == [5, 4, 3, 2, 1, 0]  # the NaN margin (an unread image) is never sure
    assert [r["kept"] for r in rows] == pytest.approx([5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0])
    assert [r["accuracy"] for r in rows][:5] == pytest.approx([0.6, 0.75, 2 / 3, 1.0, 1.0])
    assert rows[5]["accuracy"] is None  # no answer reaches 0.5: no accuracy (the JSON had read 0.0)
    assert [r["accuracy_rest"] for r in rows][:2] == pytest.approx([0.0, 0.0]) and rows[3]["accuracy_rest"] == 0.25
    # floor 0: gain 2/5, blur 1/4 (row 2; row 4 unread); 0.05: gain 1/4, blur 1/3; 0.1: 0, 1/2; 0.2: 0, 0
    assert [r["max_flipped"] for r in rows] == pytest.approx([0.4, 1 / 3, 0.5, 0.0, 0.0, 0.0])
    assert steady_margin(rows) == rows[3] and steady_margin(rows, share=0.45) == rows[0]
    assert steady_margin(rows[:3]) is None and steady_margin([]) is None
    assert steady_margin_text(rows) == ("from a margin of 0.20 on, no acquisition change altered 5 % of the "
                                        "answers: 33.3 % of them, accuracy 1.000 (the others 0.250)")
    assert steady_margin_text(rows[:3]).startswith("at no margin up to 0.10 did every acquisition change alter")
    check = ShiftCheck(np.arange(6), 0.5, [], 1.0, margins=rows)
    assert check.steady_margin == rows[3] and check.to_dict()["steady_margin"]["margin"] == 0.2


def test_changes_are_counted_per_held_out_group_without_the_control() -> None:
    """``changed_by_group``: per held-out value, the predictions a change changed; the check sums
    them over the acquisition changes only (the control is none), most changed share first."""
    groups = np.array(["s1", "s1", "s2", "s2", "s3"])
    before = np.array(["a", "b", "a", "a", "c"])
    assert changed_by_group(groups, before, np.array(["a", "a", "a", "b", "c"])) == {
        "s1": [1, 2], "s2": [1, 2], "s3": [0, 1]}
    changes = [{"name": "gain", "flipped": 0.6, "by_group": {"s1": [1, 2], "s2": [2, 2], "s3": [0, 1]}},
               {"name": "blur", "flipped": 0.2, "by_group": {"s1": [0, 2], "s2": [1, 2], "s3": [0, 1]}},
               {"name": "control: one pixel ±1", "flipped": 0.6, "control": True,
                "by_group": {"s1": [2, 2], "s2": [0, 2], "s3": [1, 1]}}]
    check = ShiftCheck(np.arange(5), 0.5, changes, 1.0, "series and class", "series")
    assert check.changed_by_group() == {"s2": [3, 4], "s1": [1, 4], "s3": [0, 2]}
    assert list(check.to_dict()["changed_by_group"]) == ["s2", "s1", "s3"]
    assert changed_by_group_text(check) == ("changed by held-out series (predictions changed / re-predicted, over the "
                                            "2 changes): s2 3/4, s1 1/4; none in s3")
    assert changed_by_group_text(check, most=1).endswith(": s2 3/4 and 1 more; none in s3")


def test_the_control_is_reported_but_is_no_acquisition_change() -> None:
    """The control (one gray level at one pixel: the points drawn anew) is in the table, but the
    largest flip rate is an acquisition change's."""
    changes = [{"name": "gain ×0.8", "flipped": 0.10}, {"name": "control: one pixel ±1", "flipped": 0.30,
                                                        "control": True}]
    check = ShiftCheck(np.arange(4), 0.5, changes, 1.0)
    assert check.max_flipped == 0.10 and check.to_dict()["max_flipped"] == 0.10
    img = np.full((5, 6), 255, np.float32)
    changed = intensity.one_pixel(img)
    assert changed[0, 0] == 254 and np.array_equal(changed[1:], img[1:]) and img[0, 0] == 255


def test_refit_all_is_a_whole_fit_per_fold(vgg16_path: Path, confounded: Path) -> None:
    """``refit="all"``: each fold's model is ``fit`` on the training images alone (the codebook
    never sees the held-out ones) and predicts them as a saved model would; the shift check
    re-predicts with that fold's model (an unchanged image flips nothing)."""
    ds = datasets.load(confounded)
    X, y, series = [str(p) for p in ds.paths], np.asarray(ds.y), ds.column("series")
    est = FastVLAD(**small_model_params(classifier="logistic"))
    res = cross_validate(est, X, y, ds.groups, split=series, split_name="series", refit="all")
    assert res.refit == "all" and res.encoder is None and res.to_dict()["refit"] == "all"
    for f, held in enumerate(res.fold_names):
        test = series == held
        assert np.array_equal(np.flatnonzero(test), res.indices[res.fold == f])
        if held == "ppc9":  # the only CNT-fiber series: its fold never trained on the class it holds
            assert res.missing[f] == ["CNT-fiber"]
        model = FastVLAD(**est.get_params()).fit([x for x, t in zip(X, test) if not t], y[~test])
        cols = [res.classes.index(c) for c in model.classes_]
        np.testing.assert_allclose(res.proba[res.fold == f][:, cols], model.predict_proba([x for x, t in zip(X, test) if t]),
                                   rtol=0, atol=1e-6)
    same = shift_check(res, X, n_images=8, shifts={"identity": lambda v: v}, random_state=0)
    assert same.changes[0]["n"] == 8 and same.changes[0]["flipped"] == 0.0
    # nothing changed, so how alike a group's answers change is not known: each group one sample
    assert same.interval_by == "group" and same.flip_correlation is None
    assert same.changes[0]["flipped_95_samples"] == effective_samples(res.groups[same.rows], None) < 8
    with pytest.raises(ParameterError, match="refit='everything' is unknown"):
        cross_validate(est, X, y, refit="everything")
    with pytest.raises(ParameterError, match="codes= is the shared encoding"):
        cross_validate(est, X, y, refit="all", codes=object())  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [1, 1.04, 1.14, 3, 8, 26.6, 200, 1e6])
def test_share_interval_holds_shares_of_none_and_all(n: float) -> None:
    """A share of 0 (or 1) lies in its interval: the low bound exactly 0 (the high exactly 1). Rounding
    gave 5.6e-17 for none of 8 images changed (a shift check of a steady model), 1 - 1e-16 for all."""
    assert share_interval(0.0, n)[0] == 0.0 < share_interval(0.0, n)[1]
    assert share_interval(1.0, n)[1] == 1.0 > share_interval(1.0, n)[0]
    low, high = share_interval(0.5, n)
    assert 0.0 < low < 0.5 < high < 1.0


def test_cli_split_series_with_shift(vgg16_path: Path, confounded: Path, tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["-q", "evaluate", str(confounded), "--split", "Series", "--shift", "--shift-images",
                                   "8", *SMALL, "--json", str(tmp_path / "cv.json"), "--report", str(tmp_path / "rep")])
    assert out.exit_code == 0, out.output
    warning = ("warning: class CNT-fiber comes from one series only (ppc9): accuracy here cannot tell class from "
               "series")
    lines = out.output.splitlines()
    assert warning in lines
    assert any(line.startswith("leave-one-series-out CV on 24 images (4 values of series") for line in lines)
    assert any(line.startswith("ppc9") and "not in training: CNT-fiber" in line for line in lines)
    assert any(line.split() == ["true", "/", "predicted", *sorted(set(datasets.load(confounded).y))] for line in lines)
    nums = json.loads((tmp_path / "cv.json").read_text())
    mean_low, mean_high = mean_interval(nums["fold_accuracy"])
    assert nums["accuracy_mean_95"] == [mean_low, mean_high]
    assert f"the mean's 95 % interval {mean_low:.3f}–{mean_high:.3f} (Student's t over the 4 values" in out.output
    groups = nums["by_group"]  # the demo set's group column: 2 groups per class, whatever the split
    assert groups["n_groups"] == 8 and groups["all_right"] + groups["all_wrong"] + groups["mixed"] == 8
    assert by_group_text(groups, 24) in lines
    assert [f["held_out"] for f in nums["folds"]] == ["ppc9", "s0", "s1", "s2"] and nums["warnings"] == [warning]
    assert nums["shift"]["n_images"] == 8 and len(nums["shift"]["changes"]) == 9  # eight changes, the control
    assert [c["name"] for c in nums["shift"]["changes"] if c["control"]] == ["control: one pixel ±1"]
    by_group = nums["shift"]["changed_by_group"]  # summed over the eight changes, not the control
    assert nums["shift"]["group_by"] == "series" and sorted(by_group) == ["ppc9", "s0", "s1", "s2"]
    for g, (changed, n) in by_group.items():
        acquisition = [c for c in nums["shift"]["changes"] if not c["control"]]
        assert changed == sum(c["by_group"][g][0] for c in acquisition) and n == sum(c["by_group"][g][1] for c in acquisition)
    assert sum(n for _, n in by_group.values()) == 8 * 8
    assert any(line.startswith("  changed by held-out series (predictions changed / re-predicted, over the 8 changes)")
               for line in lines)
    assert nums["shift"]["interval_by"] == "group" and "the 8 images count as " in out.output
    assert "flip_correlation" in nums["shift"]
    margins = nums["shift"]["margins"]  # every answer at floor 0: its largest change is the table's
    assert [r["margin"] for r in margins][:3] == [0.0, 0.01, 0.02] and len(margins) == 51
    assert margins[0]["n"] == 8 and margins[0]["max_flipped"] == nums["shift"]["max_flipped"]
    assert margins[0]["accuracy"] == nums["shift"]["accuracy_unchanged"]
    assert [r["n"] for r in margins] == sorted((r["n"] for r in margins), reverse=True)
    assert f"  {steady_margin_text(margins)}" in lines and nums["shift"]["steady_margin"] == steady_margin(margins)
    assert f"  0.00        100.0 %{margins[0]['accuracy']:>10.3f}{100 * margins[0]['max_flipped']:>12.1f} %" in lines
    for c in nums["shift"]["changes"]:
        assert 0 <= c["lost"] <= 1 and 0 <= c["flipped"] <= 1 and c["n"] == 8
        low, high = c["flipped_95"]
        assert low <= c["flipped"] <= high and high - low > 0.3  # 8 images: a wide interval
        interval, groups_changed = f"{100 * low:.1f}–{100 * high:.1f} %", c["changed_groups"]
        assert groups_changed["of"] <= 8 and groups_changed["all"] <= groups_changed["some"] <= groups_changed["of"]
        assert effective_samples(np.array(["g"] * 8), 1.0) <= c["flipped_95_samples"] <= 8  # groups: fewer than 8
        assert (f"{c['name']:<22}{100 * c['flipped']:>7.1f} %{interval:>16}{changed_groups_text(c):>9}"
                f"{100 * c['lost']:>11.1f} %") in out.output
    page = (tmp_path / "rep" / "index.html").read_text()
    assert f"the mean's 95 % interval {mean_low:.3f}–{mean_high:.3f}" in page
    assert all(f"<td>{100 * c['flipped']:.1f} %</td><td>{100 * c['flipped_95'][0]:.1f}–" in page
               for c in nums["shift"]["changes"])
    _check_self_contained(page)
    assert "Per held-out series" in page and "Shift check" in page and "cannot tell class from series" in page
    assert "Per held-out series, over the acquisition changes" in page
    assert "Sure answers" in page and "<td>0.00</td><td>100.0 %</td>" in page
    assert "per group (the group column, 8 values)" in page
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["cv"] == "leave-one-series-out" and report["folds"] == nums["folds"]


def test_cli_shift_magnification(vgg16_path: Path, balanced: Path, tmp_path: Path) -> None:
    """``--shift-magnification`` runs the shift check with the magnifications shown apart, in the
    terminal, the JSON and the report."""
    out = CliRunner().invoke(app, ["-q", "evaluate", str(balanced), "--split", "series", "--shift-magnification",
                                   "--shift-images", "4", *SMALL, "--json", str(tmp_path / "cv.json"),
                                   "--report", str(tmp_path / "rep")])
    assert out.exit_code == 0, out.output
    shift = json.loads((tmp_path / "cv.json").read_text())["shift"]
    assert [c["name"] for c in shift["changes"] if c["kind"] == "magnification"] == list(intensity.MAGNIFICATIONS)
    assert shift["max_flipped"] == max(c["flipped"] for c in shift["changes"] if c["kind"] == "acquisition")
    assert f"  ({MAGNIFICATION_NOTE})" in out.output.splitlines()
    assert all(f"  {name:<22}" in out.output for name in intensity.MAGNIFICATIONS)
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Magnification ×z: the image" in page and "<td>magnification ×2</td>" in page
    top = shift["margins"][0]
    assert top["max_flipped_magnification"] == max(c["flipped"] for c in shift["changes"] if c["kind"] == "magnification")
    assert f"{'by a magnification':>20}" in out.output and "<th>most changed by a magnification</th>" in page
    assert (f"  0.00        100.0 %{top['accuracy']:>10.3f}{100 * top['max_flipped']:>12.1f} %"
            f"{100 * top['max_flipped_magnification']:>18.1f} %") in out.output.splitlines()


def test_cli_refit_all(vgg16_path: Path, balanced: Path, tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["-q", "evaluate", str(balanced), "--split", "series", "--refit", "all", *SMALL,
                                   "--json", str(tmp_path / "cv.json")])
    assert out.exit_code == 0, out.output
    assert "each fold: a whole fit on its training images, the PCA and codebook too (refit=all)" in out.output
    nums = json.loads((tmp_path / "cv.json").read_text())
    assert nums["refit"] == "all" and nums["by_group"]["n_groups"] == 8  # the group column, not the series


def test_cli_split_by_a_missing_column_is_a_clean_error(balanced: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fastvlad", "evaluate", str(balanced), "--split", "batch"],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "no column 'batch'" in proc.stderr and "'label', 'group', 'series'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_leave_one_series_out_on_nanofiber(nanofiber: Path, vgg16_path: Path, tmp_path: Path) -> None:
    """The CLI end to end with the default estimator at cheap settings; the accuracy floor is set elsewhere."""
    out = CliRunner().invoke(app, ["-q", "evaluate", str(nanofiber), "--split", "series", "--image-size", "112x164",
                                   "-k", "32", "--density", "2", "--json", str(tmp_path / "cv.json")])
    assert out.exit_code == 0, out.output
    nums = json.loads((tmp_path / "cv.json").read_text())
    series = sorted(set(datasets.load(nanofiber).column("series")))
    # 8 series: README lists 9 (class, series) pairs, but psnppy4 holds two classes
    assert len(series) == 8 and [f["held_out"] for f in nums["folds"]] == series
    assert sum(f["n"] for f in nums["folds"]) == nums["n_images"]
    assert all(0.0 <= f["accuracy"] <= 1.0 for f in nums["folds"])
    assert nums["accuracy_mean"] == pytest.approx(np.mean([f["accuracy"] for f in nums["folds"]]))
    assert nums["warnings"] == []  # every class of this set comes from two series or more


# -- classes left after skipping, fold counts, a split of one value ------------------------------
def _demo_images(label: str, n: int) -> list[np.ndarray]:
    return [demo.make_image(label, (64, 64), np.random.default_rng([7, i])) for i in range(n)]


def test_cross_validation_refuses_a_single_readable_class(vgg16_path: Path, tmp_path: Path) -> None:
    """on_error="skip" and every image of all classes but one unreadable: scoring one class would
    read 1.000; fit refuses it, and so does cross-validation, naming the class left and those lost."""
    gone = [str(tmp_path / f"gone{i}.png") for i in range(3)]
    X = [*_demo_images("CNT-fiber", 4), *gone]
    y = np.array(["CNT-fiber"] * 4 + ["CNT-Matrix"] * 3)
    with pytest.raises(InvalidDatasetError, match=r"only class 'CNT-fiber' is left.*every image of class\(es\) "
                       r"'CNT-Matrix' \(3\) was skipped.*needs at least two"):
        cross_validate(FastVLAD(**small_model_params(on_error="skip")), X, y, n_splits=2)


def test_a_class_whose_images_were_all_skipped_is_named(vgg16_path: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    X = [*_demo_images("CNT-fiber", 4), *_demo_images("CNT-Matrix", 4), str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    y = np.array(["CNT-fiber"] * 4 + ["CNT-Matrix"] * 4 + ["CNT-Cluster"] * 2)
    with caplog.at_level(logging.WARNING, logger="fastvlad"):
        res = cross_validate(FastVLAD(**small_model_params(on_error="skip")), X, y, n_splits=2)
    assert res.classes == ["CNT-Matrix", "CNT-fiber"] and len(res.skipped) == 2
    assert "every image of class(es) 'CNT-Cluster' (2) was skipped" in caplog.text


def test_cli_evaluate_with_one_readable_class_fails(vgg16_path: Path, tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / "a").mkdir(exist_ok=True)
        Image.fromarray(demo.make_image("CNT-fiber", (64, 64), np.random.default_rng([0, i]))).save(tmp_path / "a" / f"{i}.png")
    (tmp_path / "b").mkdir()
    for i in range(2):
        (tmp_path / "b" / f"{i}.png").write_bytes(b"")  # unreadable
    out = CliRunner().invoke(app, ["-q", "evaluate", str(tmp_path), "--folds", "2", "--on-error", "skip", *SMALL,
                                   "--zoom", "none", "--tta", "0", "--device", "cpu"])
    assert out.exit_code != 0 and isinstance(out.exception, InvalidDatasetError), out.output
    assert "only class 'a' is left" in str(out.exception)


@pytest.mark.parametrize("n_splits", [0, 1, -3])
def test_fewer_than_two_folds_is_a_parameter_error(n_splits: int, tmp_path: Path) -> None:
    y = np.array(["a", "b"] * 10)
    with pytest.raises(ParameterError, match=rf"n_splits={n_splits}: must be an integer ≥ 2.*--folds"):
        folds(y, None, n_splits, 0)
    X = [str(tmp_path / f"{i}.png") for i in range(20)]  # never read: refused before any image
    with pytest.raises(ParameterError, match=rf"n_splits={n_splits}: must be an integer ≥ 2"):
        cross_validate(FastVLAD(**small_model_params()), X, y, n_splits=n_splits)


def test_a_split_of_one_value_shows_the_value_and_the_column(tmp_path: Path) -> None:
    y = np.array(["a", "b"] * 10)
    X = [str(tmp_path / f"{i}.png") for i in range(20)]  # never read: refused before any image
    with pytest.raises(InvalidDatasetError, match=r"every image has the same series value 'only'; split by a "
                       r"column with at least two values") as err:
        cross_validate(FastVLAD(**small_model_params()), X, y, split=np.full(20, "only"), split_name="series")
    assert "np.str_" not in str(err.value)
    with pytest.raises(InvalidDatasetError, match="same split value 'only'"):
        folds(y, None, 3, 0, np.full(20, "only"))
    with pytest.raises(InvalidDatasetError, match=r"^m\.csv: cannot leave one group out: every image has the same "
                       "series value 'only'"):  # what the CLI can say, naming its manifest
        check_folds(5, np.full(20, "only"), "series", "m.csv")


def test_folds_say_when_there_are_fewer_than_asked_and_tell_sklearns_notes(caplog: pytest.LogCaptureFixture) -> None:
    """Six groups give six folds, not the 100 asked for, and the user is told; scikit-learn's note on
    a class smaller than the folds comes as fastvlad's warning, not as a raw UserWarning with its
    source line."""
    import logging
    import warnings

    from fastvlad.evaluate import folds

    y = np.array(["a"] * 6 + ["b"] * 6)
    groups = np.repeat(np.arange(6), 2).astype(str)
    with caplog.at_level(logging.WARNING, logger="fastvlad"), warnings.catch_warnings():
        warnings.simplefilter("error")  # a raw warning fails the test
        fold = folds(y, groups, 100, 0)
    assert fold.max() + 1 == 6 and "6 folds instead of 100: there are only 6 groups" in caplog.text
    caplog.clear()
    y_small = np.array(["a"] * 9 + ["b"])  # one image of b: fewer than the 3 folds
    with caplog.at_level(logging.WARNING, logger="fastvlad"), warnings.catch_warnings():
        warnings.simplefilter("error")
        folds(y_small, np.arange(10).astype(str), 3, 0)
    assert "fastvlad: The least populated class in y has only 1 members" in caplog.text


def test_grouped_folds_are_no_more_than_the_largest_class(caplog: pytest.LogCaptureFixture) -> None:
    """Four classes of three images in eight groups: scikit-learn's StratifiedGroupKFold refuses more
    folds than the largest class holds, so 5 asked give 3, said, not a ValueError after the encoding."""
    y = np.repeat(np.array(["a", "b", "c", "d"]), 3)
    groups = (np.arange(12) % 8).astype(str)
    with caplog.at_level(logging.WARNING, logger="fastvlad"):
        fold = folds(y, groups, 5, 0)
    assert fold.max() + 1 == 3 and "3 folds instead of 5: there are only 3 images in the largest class" in caplog.text
    assert all(len(set(groups[fold == f]) & set(groups[fold != f])) == 0 for f in range(3))


def test_too_few_groups_for_two_folds_is_refused_before_any_image(tmp_path: Path) -> None:
    y = np.array(["a", "b"] * 10)
    X = [str(tmp_path / f"{i}.png") for i in range(20)]  # never read: refused before any image
    with pytest.raises(InvalidDatasetError, match=r"cannot make 5 folds: too few groups \(1\)"):
        cross_validate(FastVLAD(**small_model_params()), X, y, groups=np.full(20, "g"), n_splits=5)


def test_magnification_check_at_the_native_size_is_refused_before_the_cv(balanced: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """At ``--image-size native`` an image is not resized, so its centre crop is no magnification; on
    16-px images the check had failed (the crop under 16 px) only after the whole CV had run."""
    from fastvlad import evaluate

    def no_cv(*args: object, **kwargs: object) -> None:
        raise AssertionError("the CV ran")

    monkeypatch.setattr(evaluate, "cross_validate", no_cv)
    out = CliRunner().invoke(app, ["-q", "evaluate", str(balanced), "--shift-magnification", "--image-size", "native"])
    assert isinstance(out.exception, ParameterError) and "needs an input size" in str(out.exception), out.output
