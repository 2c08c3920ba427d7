"""Datasets on disk (fastvlad/datasets.py): folders and CSV manifests, good and bad, and the
CLI's ``--on-error`` handling of the images in them."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fastvlad import datasets
from fastvlad.cli import app
from fastvlad.errors import ImageReadError, InvalidDatasetError, ParameterError

SMALL = ["--density", "0.1", "-k", "8", "--image-size", "64"]


def img(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 20), value, np.uint8)).save(path)
    return path


def manifest(folder: Path, text: str | bytes, name: str = "manifest.csv") -> Path:
    path = folder / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.fixture
def two_classes(tmp_path: Path) -> Path:
    for cls in ("a", "b"):
        for i in range(2):
            img(tmp_path / cls / f"{i}.png")
    return tmp_path


# -- folders ----------------------------------------------------------------------------------
def test_class_folders(two_classes: Path) -> None:
    ds = datasets.load(two_classes)
    assert [p.relative_to(two_classes).as_posix() for p in ds.paths] == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]
    assert ds.labels.tolist() == ["a", "a", "b", "b"] and ds.classes == ["a", "b"]


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidDatasetError, match="no images found in class sub-folders"):
        datasets.load(tmp_path)


def test_loose_images_need_class_folders_to_train(tmp_path: Path) -> None:
    img(tmp_path / "x.png")
    with pytest.raises(InvalidDatasetError, match="1 loose images were found: put them in class sub-folders"):
        datasets.load(tmp_path)
    assert len(datasets.load(tmp_path, require_labels=False)) == 1  # fine for predict


def test_one_class(tmp_path: Path) -> None:
    img(tmp_path / "only" / "x.png")
    with pytest.raises(InvalidDatasetError, match=r"only class\(es\) \['only'\].*at least two"):
        datasets.load(tmp_path)


def test_class_with_one_image_is_allowed_with_a_notice(two_classes: Path, caplog: pytest.LogCaptureFixture) -> None:
    img(two_classes / "c" / "single.png")
    with caplog.at_level(logging.WARNING, logger="fastvlad"):
        ds = datasets.load(two_classes)
    assert ds.classes == ["a", "b", "c"]
    assert "['c'] have a single image" in caplog.text


def test_hidden_empty_and_other_files(two_classes: Path, caplog: pytest.LogCaptureFixture) -> None:
    (two_classes / "a" / ".DS_Store").write_bytes(b"\0")
    (two_classes / "a" / "._0.png").write_bytes(b"\0\5\26\7")  # macOS resource fork: not an image
    img(two_classes / ".git" / "x.png")
    img(two_classes / "a" / ".thumbs" / "t.png")
    (two_classes / "a" / "notes.txt").write_text("x")
    (two_classes / "b" / "scan.raw").write_bytes(b"x")  # .dm4 is an image now (the microscopy extra)
    (two_classes / "empty_class").mkdir()
    img(two_classes / "stray.png")
    with caplog.at_level(logging.INFO, logger="fastvlad"):
        ds = datasets.load(two_classes)
    assert len(ds) == 4 and ds.classes == ["a", "b"]
    assert "ignored 2 file(s) that are not images" in caplog.text and ".raw ×1" in caplog.text
    assert "empty_class holds no images" in caplog.text
    assert "1 image(s) directly in the folder have no class folder" in caplog.text


def test_unreadable_image_paths_are_kept_to_be_reported(two_classes: Path) -> None:
    (two_classes / "a" / "broken.png").symlink_to(two_classes / "gone.png")
    (two_classes / "b" / "loop.png").symlink_to(two_classes / "b" / "loop.png")
    names = [p.name for p in datasets.load(two_classes).paths]
    assert "broken.png" in names and "loop.png" in names


@pytest.mark.parametrize("where", ["top", "class", "nested"])
def test_unlistable_folder(two_classes: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    # Root lists any folder, so the OS's answer for another user is simulated.
    img(two_classes / "b" / "deeper" / "x.png")
    denied = {"top": two_classes, "class": two_classes / "b", "nested": two_classes / "b" / "deeper"}[where]
    real_scandir, real_iterdir = os.scandir, Path.iterdir

    def check(path: object) -> None:
        if Path(str(path)) == denied:
            raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", lambda p=".": check(p) or real_scandir(p))
    monkeypatch.setattr(Path, "iterdir", lambda self: check(self) or real_iterdir(self))
    with pytest.raises(InvalidDatasetError, match=f"cannot list the folder.*Permission denied: {denied}"):
        datasets.load(two_classes)


@pytest.mark.parametrize(("name", "match"), [("nowhere", "no such folder or file"),
                                             ("notes.txt", "not a folder, a CSV manifest")])
def test_not_a_dataset(tmp_path: Path, name: str, match: str) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InvalidDatasetError, match=match):
        datasets.load(tmp_path / name)


# -- CSV manifests ----------------------------------------------------------------------------
def test_csv_is_authoritative_over_folder_names(two_classes: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest(two_classes, "path,label,group\na/0.png,b,g1\na/1.png,a,g1\nb/0.png,b,g2\nb/1.png,a,g2\n")
    with caplog.at_level(logging.WARNING, logger="fastvlad"):
        ds = datasets.load(two_classes)
    assert ds.labels.tolist() == ["b", "a", "b", "a"] and ds.groups.tolist() == ["g1", "g1", "g2", "g2"]
    assert "2 image(s) sit in a folder named after another class" in caplog.text
    assert "a/0.png → 'b'" in caplog.text


def test_csv_dialects(two_classes: Path) -> None:
    for text in ("\ufeffPath;Label\na/0.png;a\nb/0.png;b\n",  # BOM, semicolons, capitals
                 " path \t label\na/0.png\ta\n\nb/0.png\tb\n",  # tabs, spaces, a blank line
                 "path,label\r\na\\0.png,a\r\nb/0.png, b \r\n"):  # CRLF, Windows separator, spaces
        ds = datasets.from_csv(manifest(two_classes, text))
        assert [p.name for p in ds.paths] == ["0.png", "0.png"] and ds.labels.tolist() == ["a", "b"], text
        assert all(p.is_file() for p in ds.paths)


@pytest.mark.parametrize(("text", "match"), [
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "binary data, not a text CSV"),
    ("path,label\ncaf\xe9.png,a\n".encode("latin-1"), r"line 2: not UTF-8 text \(byte 0xe9\)"),
    ("file,label\na/0.png,a\n", r"no 'path' column"),
    ("", r"no 'path' column"),
    ("path,label\n", "lists no images"),
    ("path,label\na/0.png,a\nb/0.png\n", r"line 3: 1 field\(s\) where the header has 2"),
    ("path,label\na/0.png,a,extra\n", r"line 2: 3 field\(s\)"),
    ("path,label\n ,a\n", "line 2: empty path"),
    ("path,label\na/0.png,a\n./a/../a/0.png,b\n", "line 3: path './a/../a/0.png' is already listed on line 2"),
    ('path,label\n"a/0.png,a\n', "not a valid CSV|field"),
    # the line named: a field over the csv module's limit said only "field larger than field limit"
    ("path,label\na/0.png,a\nb/0.png," + "x" * 200_000 + "\n", r"line 3: not a valid CSV \(field larger than"),
])
def test_bad_csv(two_classes: Path, text: str | bytes, match: str) -> None:
    with pytest.raises(InvalidDatasetError, match=match):
        datasets.load(manifest(two_classes, text))


def test_csv_missing_files(two_classes: Path) -> None:
    path = manifest(two_classes, "path,label\na/0.png,a\nz/1.png,b\nb/0.png,b\na,a\n")
    with pytest.raises(InvalidDatasetError, match=r"2 listed file\(s\) do not exist or are not files "
                                                  r"\(line 3: .*z/1.png; line 5: .*\).*--on-error skip"):
        datasets.load(path)
    ds = datasets.load(path, check_files=False)  # on_error="skip": reported when decoded instead
    assert len(ds) == 4


def test_csv_empty_label(two_classes: Path) -> None:
    with pytest.raises(InvalidDatasetError, match=r"1 image\(s\) have an empty label \(e.g. .*b/0.png\)"):
        datasets.load(manifest(two_classes, "path,label\na/0.png,a\nb/0.png,\na/1.png,b\n"))


def test_csv_unreadable(two_classes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = manifest(two_classes, "path,label\na/0.png,a\n")

    def deny(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(InvalidDatasetError, match="cannot read the CSV.*Permission denied"):
        datasets.load(path)


# -- the CLI on a folder with bad images ------------------------------------------------------
@pytest.fixture(scope="module")
def folder_with_bad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fastvlad import demo

    root = tmp_path_factory.mktemp("withbad")
    demo.write_dataset(root, 3, size=64, random_state=1)
    (root / "manifest.csv").unlink()  # class folders only
    (root / "CNT-fiber" / "empty.png").write_bytes(b"")
    good = next((root / "CNT-Matrix").glob("*.png")).read_bytes()
    (root / "CNT-Matrix" / "cut.png").write_bytes(good[: len(good) // 2])
    return root


def test_predict_skip_reports_in_csv_and_stderr(vgg16_path: Path, folder_with_bad: Path, tmp_path: Path) -> None:
    from . import tiny_model

    model = tiny_model.fitted().save(tmp_path / "m.fvl")
    out = tmp_path / "p.csv"
    res = CliRunner().invoke(app, ["-q", "predict", str(model), str(folder_with_bad), "-o", str(out),
                                   "--on-error", "skip"])
    assert res.exit_code == 0, res.output
    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    assert len(rows) == 14  # 12 good + 2 bad: none dropped
    assert rows["CNT-fiber/empty.png"]["predicted"] == "" and "empty file" in rows["CNT-fiber/empty.png"]["error"]
    assert "truncated" in rows["CNT-Matrix/cut.png"]["error"]
    assert sum(r["error"] == "" and r["predicted"] != "" for r in rows.values()) == 12
    assert "skipped 2 unreadable image(s)" in res.stderr
    assert "empty.png: empty file" in res.stderr and "cut.png: cannot decode" in res.stderr


def test_train_skip_reports_in_the_model_and_stderr(vgg16_path: Path, folder_with_bad: Path, tmp_path: Path) -> None:
    import json
    import zipfile

    out = tmp_path / "m.fvl"
    res = CliRunner().invoke(app, ["-q", "train", str(folder_with_bad), "-o", str(out), *SMALL, "--on-error", "skip"])
    assert res.exit_code == 0, res.output
    assert "skipped 2 unreadable image(s)" in res.stderr and "trained on 12 images" in res.stdout
    with zipfile.ZipFile(out) as zf:
        skipped = json.loads(zf.read("config.json"))["train"]["skipped"]
    assert sorted(Path(name).name for name, _ in skipped) == ["cut.png", "empty.png"]
    assert all(why for _, why in skipped)


def test_predict_default_stops_naming_the_file(vgg16_path: Path, folder_with_bad: Path, tmp_path: Path) -> None:
    from . import tiny_model

    model = tiny_model.fitted().save(tmp_path / "m.fvl")
    res = CliRunner().invoke(app, ["-q", "predict", str(model), str(folder_with_bad), "-o", str(tmp_path / "p.csv")])
    assert res.exit_code != 0 and isinstance(res.exception, ImageReadError)
    assert "empty.png: empty file" in str(res.exception)  # found by the header scan, before the CNN
    assert not (tmp_path / "p.csv").exists()


def test_encode_skip_writes_nan_rows_and_reasons(vgg16_path: Path, folder_with_bad: Path, tmp_path: Path) -> None:
    from . import tiny_model

    model = tiny_model.fitted().save(tmp_path / "m.fvl")
    out = tmp_path / "codes.npy"
    res = CliRunner().invoke(app, ["-q", "encode", str(folder_with_bad), "-o", str(out), "--model", str(model),
                                   "--on-error", "skip"])
    assert res.exit_code == 0, res.output
    codes = np.load(out)
    paths = out.with_suffix(".paths.txt").read_text().split()
    bad = {i for i, p in enumerate(paths) if p.endswith(("empty.png", "cut.png"))}
    assert len(paths) == len(codes) == 14 and len(bad) == 2
    assert all(np.isnan(codes[i]).all() == (i in bad) for i in range(14))
    errors = list(csv.DictReader(out.with_suffix(".errors.csv").open()))
    assert sorted(Path(e["path"]).name for e in errors) == ["cut.png", "empty.png"]


def test_missing_csv_files_are_skipped_and_reported(vgg16_path: Path, two_classes: Path, tmp_path: Path) -> None:
    from . import tiny_model

    model = tiny_model.fitted().save(tmp_path / "m.fvl")
    manifest(two_classes, "path,label\na/0.png,a\ngone.png,a\nb/0.png,b\n")
    out = tmp_path / "p.csv"
    res = CliRunner().invoke(app, ["-q", "predict", str(model), str(two_classes), "-o", str(out), "--on-error", "skip"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == ["a/0.png", "gone.png", "b/0.png"]
    assert "file not found" in rows[1]["error"] and "gone.png: file not found" in res.stderr
    # the summary says the run was not clean (the exit code is 0, as --on-error skip asks)
    assert "wrote 3 predictions to" in res.stdout and "(1 of the images could not be read" in res.stdout


def test_bad_on_error_value(two_classes: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", str(two_classes), "-o", str(tmp_path / "m.fvl"), "--on-error", "ignore"])
    assert isinstance(res.exception, ParameterError) and "--on-error='ignore' is unknown" in str(res.exception)


def test_manifest_errors_name_the_csv_not_its_folder(two_classes: Path) -> None:
    """A dataset error from a CSV names the CSV: the folder may hold several manifests."""
    for text, call, match in (("path,label\na/0.png,a\na/1.png,a\n", datasets.load, "found only class"),
                              ("path,label\na/0.png,a\nb/0.png,\n", datasets.load, "empty label"),
                              ("path,label\na/0.png,a\nb/0.png,b\n",
                               lambda p: datasets.load(p).column("series"), "no column 'series'"),
                              ("path,label,series\na/0.png,a,s1\nb/0.png,b,\n",
                               lambda p: datasets.load(p).column("series"), "no value in column 'series'")):
        csv_path = manifest(two_classes, text, "train.csv")
        with pytest.raises(InvalidDatasetError, match=match) as err:
            call(csv_path)
        assert str(err.value).startswith(f"{csv_path}: "), str(err.value)
    with pytest.raises(InvalidDatasetError) as err:  # a folder's own errors still name the folder
        datasets.load(two_classes).column("series")
    assert str(err.value).startswith(f"{two_classes}: ")


@pytest.mark.parametrize("header", ["path,label,Label", "Path,label,PATH", "path,label,group,GROUP"])
def test_csv_columns_repeated_in_another_case_are_refused(two_classes: Path, header: str) -> None:
    """Column names are case-insensitive, so 'label' and 'Label' are one name twice: which one is
    meant cannot be told (the first used to win silently)."""
    names = header.split(",")
    rows = "".join(",".join([f"{cls}/0.png", cls] + ["x"] * (len(names) - 2)) + "\n" for cls in "ab")
    csv_path = manifest(two_classes, f"{header}\n{rows}", "m.csv")
    dup, last = next(n for n in names if n.lower() == names[-1].lower()), names[-1]
    with pytest.raises(InvalidDatasetError, match=rf"m\.csv: the header names one column twice \('{dup}' and "
                       rf"'{last}'; column names are case-insensitive\)"):
        datasets.load(csv_path)


def test_one_file_under_two_names_is_refused(tmp_path: Path) -> None:
    """A link (or hard link) to an image already listed made it two images: counted twice, and
    cross-validation could train on it and test on it."""
    for c in "ab":
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(np.full((32, 32), 60 * i + (c == "b") * 10, np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "a" / "link.png").symlink_to(tmp_path / "b" / "0.png")
    with pytest.raises(InvalidDatasetError, match=r"b/0.png is the same file as .*a/link.png, through a link"):
        datasets.load(tmp_path)
    (tmp_path / "a" / "link.png").unlink()
    os.link(tmp_path / "a" / "0.png", tmp_path / "hard.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na/0.png,a\na/1.png,a\nb/0.png,b\nhard.png,b\n")
    with pytest.raises(InvalidDatasetError, match=r"m.csv, line 5: .*hard.png is the same file as line 2"):
        datasets.load(manifest)
    assert len(datasets.load(tmp_path)) == 4  # the hard link outside the class folders is not listed there


def test_a_linked_folder_inside_a_class_folder_is_noted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its images were left out without a word (os.walk does not follow links)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(outside / "x.png")
    for c in "ab":
        (tmp_path / "d" / c).mkdir(parents=True)
        Image.fromarray(np.full((32, 32), 9, np.uint8)).save(tmp_path / "d" / c / "0.png")
    (tmp_path / "d" / "a" / "more").symlink_to(outside)
    with caplog.at_level(logging.WARNING, logger="fastvlad"):
        assert len(datasets.load(tmp_path / "d")) == 2
    assert "1 linked folder(s) inside class folders are not followed (e.g. " in caplog.text, caplog.text
