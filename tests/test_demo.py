"""Tests of the synthetic TEM-like data generator (fastvlad.demo)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastvlad.demo import CLASSES, make_dataset, make_image, write_dataset
from fastvlad.errors import ParameterError


def _simple_features(img: np.ndarray) -> list[float]:
    """Mean intensity, dark-pixel fraction and edge density: crude, class-agnostic cues."""
    f = img.astype(np.float32)
    bg = float(np.median(f))
    gy, gx = np.gradient(f)
    return [f.mean() / 255.0, float((f < bg - 40).mean()), float((np.hypot(gx, gy) > 25).mean())]


# --------------------------------------------------------------------------- basics


def test_classes() -> None:
    assert CLASSES == ("CNT-Cluster", "CNT-fiber", "CNT-Matrix", "CNT-MatrixSurface")


@pytest.mark.parametrize("label", [*CLASSES, 0, 1, 2, 3, np.int64(2)])
def test_make_image_shape_dtype(label: str | int) -> None:
    img = make_image(label, rng=0)
    assert img.shape == (224, 224)
    assert img.dtype == np.uint8
    # TEM look: bright background (a blob may cover half the field, so not the median),
    # and dark objects well below it.
    bg = np.percentile(img, 90)
    assert 185 <= bg <= 255
    assert np.percentile(img, 1) < bg - 60


@pytest.mark.parametrize("size", [(100, 151), (151, 100), [64, 33], 32, 97])
@pytest.mark.parametrize("label", range(4))
def test_odd_sizes(size: tuple[int, int] | int, label: int) -> None:
    img = make_image(label, size, rng=np.random.default_rng([3, label]))
    hw = (size, size) if isinstance(size, int) else tuple(size)
    assert img.shape == hw
    assert img.dtype == np.uint8
    assert img.std() > 3  # not blank


def test_name_and_index_labels_agree() -> None:
    for i, name in enumerate(CLASSES):
        assert np.array_equal(make_image(i, 64, rng=5), make_image(name, 64, rng=5))


# --------------------------------------------------------------------------- determinism


def test_make_image_deterministic() -> None:
    for label in CLASSES:
        a = make_image(label, 96, rng=123)
        b = make_image(label, 96, rng=np.random.default_rng(123))
        assert a.tobytes() == b.tobytes()
        assert a.tobytes() != make_image(label, 96, rng=124).tobytes()


def test_make_image_generator_advances() -> None:
    g = np.random.default_rng(7)
    assert not np.array_equal(make_image(0, 64, g), make_image(0, 64, g))
    # rng=None draws fresh entropy but must still work
    assert make_image(1, 64).shape == (64, 64)


def test_make_dataset_deterministic_and_interleaved() -> None:
    x1, y1 = make_dataset(3, 64, random_state=11)
    x2, y2 = make_dataset(3, 64, random_state=11)
    assert x1.shape == (12, 64, 64) and x1.dtype == np.uint8
    assert y1.shape == (12,) and y1.dtype.kind in "UO"
    assert x1.tobytes() == x2.tobytes()
    assert list(y1) == list(y2) == list(CLASSES) * 3
    x3, _ = make_dataset(3, 64, random_state=12)
    assert x1.tobytes() != x3.tobytes()
    # all images differ from each other
    assert len({im.tobytes() for im in x1}) == len(x1)


def test_make_dataset_subset_reproducible() -> None:
    # Image i is seeded from (random_state, i): a smaller data set is a prefix of a larger one,
    # and each image can be regenerated on its own.
    small, _ = make_dataset(2, (48, 80), random_state=4)
    big, labels = make_dataset(4, (48, 80), random_state=4)
    assert np.array_equal(small, big[: len(small)])
    i = 13
    alone = make_image(labels[i], (48, 80), np.random.default_rng([4, i]))
    assert np.array_equal(alone, big[i])


# --------------------------------------------------------------------------- class statistics


def test_classes_have_distinct_statistics() -> None:
    x, y = make_dataset(12, 128, random_state=1)
    feats = np.array([_simple_features(im) for im in x])
    feats = (feats - feats.mean(0)) / feats.std(0)
    centroids = np.array([feats[y == c].mean(0) for c in CLASSES])
    dists = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    off_diag = dists[~np.eye(4, dtype=bool)]
    assert off_diag.min() > 0.5, dists
    # Matrix classes have a large dark-ish blob: more pixels well below background than fibres.
    dark = {c: np.mean([_simple_features(im)[1] for im in x[y == c]]) for c in CLASSES}
    assert dark["CNT-Matrix"] > dark["CNT-fiber"]
    assert dark["CNT-MatrixSurface"] > dark["CNT-fiber"]


def test_task_is_learnable_but_not_trivial() -> None:
    """Raw pixels with a linear model must not solve it; crude features must beat chance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = make_dataset(40, 96, random_state=0)
    small = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in x])
    pix = small.reshape(len(x), -1).astype(np.float32) / 255.0
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    acc_pix = cross_val_score(clf, pix, y, cv=cv).mean()
    feats = np.array([_simple_features(im) for im in x])
    acc_feat = cross_val_score(clf, feats, y, cv=cv).mean()
    assert acc_pix < 0.95, acc_pix
    assert acc_feat > 0.4, acc_feat


# --------------------------------------------------------------------------- write_dataset


def test_write_dataset(tmp_path: Path) -> None:
    n = 6
    manifest = write_dataset(tmp_path / "ds", n, size=(40, 56), random_state=2, groups=3)
    assert manifest == tmp_path / "ds" / "manifest.csv"
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0].keys()) == ["path", "label", "group"]
    assert len(rows) == 4 * n
    images, labels = make_dataset(n, (40, 56), random_state=2)
    for c, name in enumerate(CLASSES):
        mine = [r for r in rows if r["label"] == name]
        assert [r["path"] for r in mine] == [f"{name}/{name}_{j:04d}.png" for j in range(n)]
        # groups split evenly: 3 groups of 2 images, named <class>/g<k>
        groups = [r["group"] for r in mine]
        assert groups == [f"{name}/g{k}" for k in (0, 0, 1, 1, 2, 2)]
        for j, r in enumerate(mine):
            p = manifest.parent / r["path"]
            assert p.is_file()
            with Image.open(p) as im:
                assert im.mode == "L"
                arr = np.asarray(im)
            # the PNGs hold exactly the make_dataset images (same per-index seeds)
            assert np.array_equal(arr, images[4 * j + c])
            assert labels[4 * j + c] == name
    # nothing but the class folders and the manifest (no temp files left behind)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == sorted([*CLASSES, "manifest.csv"])


def test_write_dataset_uneven_groups(tmp_path: Path) -> None:
    manifest = write_dataset(str(tmp_path), 5, size=32, groups=2)
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["group"]] = counts.get(r["group"], 0) + 1
    assert len(counts) == 8
    assert sorted(set(counts.values())) == [2, 3]
    # more groups than images: each image its own group, none empty
    manifest = write_dataset(tmp_path / "b", 2, size=32, groups=4)
    with manifest.open(newline="") as fh:
        assert len({r["group"] for r in csv.DictReader(fh)}) == 8


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_image("CNT-Foo"), "unknown label 'CNT-Foo'"),
        (lambda: make_image("cnt-fiber"), "unknown label"),
        (lambda: make_image(4), "out of range"),
        (lambda: make_image(-1), "out of range"),
        (lambda: make_image(True), "bool"),
        (lambda: make_image(1.0), "class name"),
        (lambda: make_image(0, size=31), "too small"),
        (lambda: make_image(0, size=(64, 16)), "too small"),
        (lambda: make_image(0, size=(64, 64, 1)), "pair of ints"),
        (lambda: make_image(0, size=64.0), "pair of ints"),
        (lambda: make_image(0, rng="seed"), "rng must be"),
        (lambda: make_image(0, rng=-3), "rng seed must be >= 0"),
        (lambda: make_dataset(0), "n_per_class must be >= 1"),
        (lambda: make_dataset(2, size=16), "too small"),
        (lambda: make_dataset(2, random_state=-1), "random_state must be >= 0"),
        (lambda: make_dataset(2.5), "n_per_class must be an int"),
    ],
)
def test_errors(call, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        call()


def test_write_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="n_per_class must be >= 1"):
        write_dataset(tmp_path, 0)
    with pytest.raises(ParameterError, match="groups must be >= 1"):
        write_dataset(tmp_path, 2, groups=0)
    with pytest.raises(ParameterError, match="too small"):
        write_dataset(tmp_path, 2, size=8)
    # validation happens before anything is written
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- the command


def test_demo_command_cleans_up_unless_kept(vgg16_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fastvlad demo`` prints accuracy, stage times and the prediction rate (saying that tta
    encodes each image twice), leaves no temporary folder behind, and with --keep writes the model."""
    import tempfile

    from typer.testing import CliRunner

    from fastvlad.cli import app

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    small = ["--n-train", "3", "--n-test", "1", "--size", "64", "--density", "0.1", "-k", "4"]
    res = CliRunner().invoke(app, ["-q", "demo", *small])
    assert res.exit_code == 0, res.output
    assert "held-out accuracy:" in res.output, res.output
    assert "(the mean over each image and 1 flipped copy (2 CNN passes))" in res.output, res.output
    assert list(scratch.iterdir()) == []  # the demo images and model went with the temporary folder
    kept = tmp_path / "kept"
    res = CliRunner().invoke(app, ["-q", "demo", *small, "--keep", str(kept)])
    assert res.exit_code == 0, res.output
    assert (kept / "model.fvl").is_file() and f"model saved to {kept / 'model.fvl'}" in res.output


@pytest.mark.parametrize("option, error, match", [
    (["--n-train", "100000000"], "ParameterError", "--n-train=100000000: must be an integer from 1 to 25000"),
    (["--n-test", "0"], "ParameterError", "--n-test=0"),  # was "n_per_class must be >= 1"
    (["--size", "100000"], "ParameterError", "--size=100000: must be an integer from 16 to 4096"),  # out of memory
    (["--density", "0", "--keep", "{tmp}/new"], "ParameterError", "density=0"),  # was, after writing the images
    (["--keep", "{tmp}/a_file"], "WriteError", "is a file; give a new or empty folder"),  # was [Errno 20], exit 1
    (["--keep", "{tmp}/full"], "WriteError", "is not empty"),  # its model.fvl was replaced without a word
])
def test_demo_checks_its_options_before_any_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: list[str],
                                                  error: str, match: str) -> None:
    """Unbounded counts had written demo PNGs without end; --keep over a file or a non-empty folder
    (a dataset, a model) failed late or replaced what was there."""
    import tempfile

    from typer.testing import CliRunner

    from fastvlad.cli import app

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    (tmp_path / "a_file").write_text("mine")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "model.fvl").write_text("mine")
    res = CliRunner().invoke(app, ["-q", "demo", "--size", "32", "--n-train", "2", "--n-test", "1",
                                   *[o.format(tmp=tmp_path) for o in option]])
    assert type(res.exception).__name__ == error and match in str(res.exception), res.output
    assert list(scratch.iterdir()) == [] and (tmp_path / "full" / "model.fvl").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "full", "tmp"]
