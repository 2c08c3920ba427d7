"""The evaluation report: numbers equal scikit-learn's, self-contained HTML, thumbnails of the right images."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)
from typer.testing import CliRunner

from fastvlad import evaluate, report
from fastvlad.cli import app
from fastvlad.datasets import Dataset
from fastvlad.errors import WriteError
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import CVResult

from .conftest import small_model_params

SMALL = ["--density", "0.1", "-k", "8", "--image-size", "64"]


class _Resources(HTMLParser):
    """Every src/href attribute of a page, and the tags that could fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "data")]


def _resources(page: str) -> _Resources:
    parser = _Resources()
    parser.feed(page)
    return parser


def _check_self_contained(page: str) -> None:
    res = _resources(page)
    assert res.urls, "the page embeds no image"
    assert not any("http" in u for u in res.urls)
    assert all(u.startswith("data:image/png;base64,") for u in res.urls)
    assert not {"script", "link", "iframe"} & set(res.tags)
    assert "url(" not in page  # no CSS fetches


@pytest.fixture(scope="module")
def cli_report(vgg16_path: Path, demo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    res = CliRunner().invoke(app, ["-q", "evaluate", str(demo_folder), "--folds", "2", *SMALL, "--report", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_report_numbers_equal_sklearn(cli_report: Path, demo_folder: Path) -> None:
    nums = json.loads((cli_report / "report.json").read_text())
    rows = list(csv.DictReader((cli_report / "predictions.csv").open()))
    # the predictions are the right images: each row's true label is the manifest's
    manifest = {r["path"]: r["label"] for r in csv.DictReader((demo_folder / "manifest.csv").open())}
    assert len(rows) == len(manifest) == nums["n_images"]
    assert all(manifest[r["path"]] == r["true"] for r in rows)
    y_true = np.array([r["true"] for r in rows])
    y_pred = np.array([r["predicted"] for r in rows])
    fold = np.array([int(r["fold"]) for r in rows])
    classes = sorted(set(manifest.values()))
    per_fold = [accuracy_score(y_true[fold == f], y_pred[fold == f]) for f in np.unique(fold)]
    assert nums["cv"] == "grouped" and len(per_fold) == 2
    np.testing.assert_allclose(nums["fold_accuracy"], per_fold)
    np.testing.assert_allclose([nums["accuracy_mean"], nums["accuracy_std"]], [np.mean(per_fold), np.std(per_fold)])
    np.testing.assert_allclose(nums["pooled_accuracy"], accuracy_score(y_true, y_pred))
    p, r, f1, s = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    for i, c in enumerate(classes):
        got = nums["per_class"][c]
        np.testing.assert_allclose([got["precision"], got["recall"], got["f1"], got["support"]], [p[i], r[i], f1[i], s[i]])
    np.testing.assert_array_equal(nums["confusion"], confusion_matrix(y_true, y_pred, labels=classes))
    # the stated settings and versions are those of the run
    assert nums["settings"]["k"] == 8 and nums["settings"]["density"] == 0.1 and nums["versions"]["xgboost"]
    assert len(nums["backbone_sha256"]) == 64 and len(nums["data"]["images_sha256"]) == 64
    page = (cli_report / "index.html").read_text()
    assert f"{nums['accuracy_mean']:.3f} ± {nums['accuracy_std']:.3f}" in page
    _check_self_contained(page)
    for name in ("confusion.png", "folds.png"):
        assert (cli_report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _synthetic(tmp_path: Path, n: int = 30) -> tuple[CVResult, Dataset]:
    """A dataset whose image i is a flat gray of level 5·i, and a CV result over the readable
    ones (every 7th image 'skipped'), so a thumbnail's gray level says which image it shows."""
    rng = np.random.default_rng(1)
    classes = ["fibre", "matrix", "particle & <odd> name"]
    labels = np.array([classes[i % 3] for i in range(n)])
    paths = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.full((40, 60), 5 * i, np.uint8)).save(paths[-1])
    kept = np.array([i for i in range(n) if i % 7 != 3])
    y_true = labels[kept]
    y_pred = np.where(rng.random(len(kept)) < 0.6, y_true, rng.choice(classes, len(kept)))
    y_pred[y_true == "matrix"] = "fibre"  # a class that is never predicted right
    proba = rng.dirichlet(np.ones(3), len(kept)).astype(np.float32)
    fold = rng.integers(0, 3, len(kept))
    accs = [float((y_pred[fold == f] == y_true[fold == f]).mean()) for f in range(3)]
    res = CVResult(classes, y_true, y_pred, proba, fold, accs, False, {"total": 1.0},
                   [(str(paths[i]), "unreadable") for i in range(n) if i % 7 == 3], kept, "ab" * 32)
    groups = np.array([f"micrograph{i % 5}" for i in range(n)])
    return res, Dataset(paths, labels, groups, tmp_path)


def test_thumbnails_show_the_right_images(tmp_path: Path) -> None:
    res, ds = _synthetic(tmp_path / "data")
    out = report.write_report(tmp_path / "rep", res, FastVLAD(**small_model_params()), ds)
    page = out.read_text()
    _check_self_contained(page)
    assert "particle &amp; &lt;odd&gt; name" in page and "<odd>" not in page
    for n, cls in enumerate(res.classes):
        for correct in (True, False):
            rows = report.choose_examples(res, cls, correct)
            truth = (res.y_true == cls) & ((res.y_pred == res.y_true) == correct)
            assert set(rows) <= set(np.flatnonzero(truth)) and len(rows) == min(truth.sum(), report.EXAMPLES_PER_KIND)
            conf = res.proba[rows, [res.classes.index(p) for p in res.y_pred[rows]]]
            assert np.all(np.diff(conf) <= 0)  # most confident first
            # with groups, as many micrographs as there are before a second tile of one (what the report shows)
            groups = ds.groups[res.indices]
            rows = report.choose_examples(res, cls, correct, groups=groups)
            n_groups = len(set(groups[truth]))
            assert len(set(groups[rows[:n_groups]])) == min(n_groups, len(rows))
            kind = "correct" if correct else "wrong"
            files = sorted((tmp_path / "rep" / "examples").glob(f"{n}_*_{kind}_*.png"))
            assert len(files) == len(rows)
            for row, f in zip(rows, sorted(files, key=lambda p: int(p.stem.rsplit("_", 1)[1]))):
                level = np.asarray(Image.open(f).convert("L"))[0, 0]
                assert level == 5 * res.indices[row]
    assert report.choose_examples(res, "matrix", True).size == 0 and "no correct predictions" in page
    nums = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert nums["cv"] == "stratified" and len(nums["skipped"]) == len(ds) - len(res.indices)
    assert nums["data"]["n_groups"] == 5
    assert [r["path"] for r in nums["predictions"]] == [str(ds.paths[i]) for i in res.indices]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    res, ds = _synthetic(tmp_path / "data")
    page = report.write_report(tmp_path / "rep", res, FastVLAD(**small_model_params()), ds)
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2400",
           page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Failed to load resource" in line
               or "net::ERR" in line]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not console, console
    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 10  # something was drawn, not a blank page
    keep = os.environ.get("FASTVLAD_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


@pytest.fixture
def no_cv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if ``evaluate`` starts its cross-validation: the outputs are checked before it."""
    def ran(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cross-validation ran before the outputs were checked")

    monkeypatch.setattr(evaluate, "cross_validate", ran)


def _manifest(demo_folder: Path, to: Path) -> Path:
    """The demo manifest at ``to``, its paths made absolute so it can lie anywhere."""
    rows = list(csv.DictReader((demo_folder / "manifest.csv").open()))
    to.parent.mkdir(parents=True, exist_ok=True)
    with to.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "path": str(demo_folder / r["path"])} for r in rows)
    return to


def test_evaluate_refuses_a_report_over_its_data(demo_folder: Path, tmp_path: Path, no_cv: None) -> None:
    """The manifest at DIR/predictions.csv (a file the report writes), or an image in DIR/examples:
    refused before the cross-validation, nothing changed."""
    manifest = _manifest(demo_folder, tmp_path / "rep" / "predictions.csv")
    before = manifest.read_bytes()
    res = CliRunner().invoke(app, ["-q", "evaluate", str(manifest), "--folds", "2", *SMALL,
                                   "--report", str(tmp_path / "rep")])
    assert isinstance(res.exception, WriteError) and "refusing to write" in str(res.exception), res.output
    assert manifest.read_bytes() == before and sorted((tmp_path / "rep").iterdir()) == [manifest]
    image = tmp_path / "rep2" / "examples" / "0_CNT-Cluster_correct_0.png"
    image.parent.mkdir(parents=True)
    shutil.copy(sorted(demo_folder.glob("CNT-Cluster/*.png"))[0], image)
    other = _manifest(demo_folder, tmp_path / "m.csv")
    with other.open("a") as f:
        f.write(f"{image},CNT-Cluster,extra\n")
    res = CliRunner().invoke(app, ["-q", "evaluate", str(other), "--folds", "2", *SMALL,
                                   "--report", str(tmp_path / "rep2")])
    assert isinstance(res.exception, WriteError) and "refusing to write" in str(res.exception), res.output


def test_evaluate_checks_every_output_before_the_cv(demo_folder: Path, tmp_path: Path, no_cv: None) -> None:
    """--report at a file, or a report folder whose examples/ is a file: a clear message before the
    cross-validation, and neither --json nor --confusion written."""
    taken = tmp_path / "existing_file"
    taken.write_text("mine")
    rep = tmp_path / "rep4"
    rep.mkdir()
    (rep / "examples").write_text("mine")
    for folder, says in ((taken, f"{taken} is a file"), (rep, f"{rep / 'examples'} is a file")):
        res = CliRunner().invoke(app, ["-q", "evaluate", str(demo_folder), "--folds", "2", *SMALL,
                                       "--json", str(tmp_path / "j.json"), "--confusion", str(tmp_path / "c.png"),
                                       "--report", str(folder)])
        assert isinstance(res.exception, WriteError) and says in str(res.exception), res.output
    assert sorted(tmp_path.iterdir()) == [taken, rep] and sorted(rep.iterdir()) == [rep / "examples"]
    assert taken.read_text() == "mine"


def test_a_report_inside_the_dataset_folder_is_refused(demo_folder: Path) -> None:
    """``--report DATA`` had made the report's examples/ a new class of the dataset for the next run."""
    for folder in (demo_folder, demo_folder / "rep", demo_folder / next(p.name for p in demo_folder.iterdir()
                                                                         if p.is_dir())):
        res = CliRunner().invoke(app, ["-q", "evaluate", str(demo_folder), "--folds", "2", *SMALL,
                                       "--report", str(folder)])
        assert isinstance(res.exception, WriteError) and "inside the dataset folder" in str(res.exception)
    assert not (demo_folder / "rep").exists() and not (demo_folder / "examples").exists()


def test_a_failed_report_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while the report is written: no new folder, an old report untouched, no temp file."""
    res, ds = _synthetic(tmp_path / "data")

    def fail(*args: object, **kwargs: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "render_html", fail)
    with pytest.raises(OSError):
        report.write_report(tmp_path / "rep", res, FastVLAD(**small_model_params()), ds)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    old = tmp_path / "old"
    old.mkdir()
    (old / "index.html").write_text("old report")
    with pytest.raises(OSError):
        report.write_report(old, res, FastVLAD(**small_model_params()), ds)
    assert [p.name for p in old.iterdir()] == ["index.html"] and (old / "index.html").read_text() == "old report"
    monkeypatch.undo()
    page = report.write_report(old, res, FastVLAD(**small_model_params()), ds)
    assert page == old / "index.html" and "old report" not in page.read_text()
    assert sorted(p.name for p in old.iterdir()) == ["confusion.png", "examples", "folds.png", "index.html",
                                                   "predictions.csv", "report.json"]


def test_report_writes_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    """A file name that is not UTF-8: its own bytes in predictions.csv (read back with
    errors="surrogateescape"), escaped as \\xNN in the page, which stays UTF-8."""
    res, ds = _synthetic(tmp_path / "data")
    row = int(report.choose_examples(res, res.classes[0], True)[0])  # an image the page shows
    i = int(res.indices[row])
    bad = os.fsencode(ds.paths[i].parent) + b"/bad\xff\xfename.png"
    os.rename(ds.paths[i], bad)
    ds.paths[i] = Path(os.fsdecode(bad))
    page = report.write_report(tmp_path / "rep", res, FastVLAD(**small_model_params()), ds)
    assert "bad\\xff\\xfename.png" in page.read_bytes().decode("utf-8")
    with open(tmp_path / "rep" / "predictions.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        paths = [os.fsencode(r["path"]) for r in csv.DictReader(f)]
    assert paths[row] == b"bad\xff\xfename.png"
    nums = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert os.fsencode(nums["predictions"][row]["path"]) == bad
