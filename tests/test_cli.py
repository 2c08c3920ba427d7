"""The command line on a small demo dataset: train, predict, evaluate, encode, info, errors."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import fastvlad
from fastvlad import plots
from fastvlad.cli import app
from fastvlad.errors import ParameterError, WriteError
from fastvlad.estimator import FastVLAD

SMALL = ["--density", "0.1", "-k", "8", "--image-size", "64"]


@pytest.fixture(scope="module")
def trained(vgg16_path: Path, demo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``fastvlad train`` on the demo folder: the model file and what the command printed."""
    out = tmp_path_factory.mktemp("model") / "m.fvl"
    res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(out), *SMALL])
    assert res.exit_code == 0, res.output
    return out, res.output


@pytest.fixture(scope="module")
def model_file(trained: tuple[Path, str]) -> Path:
    return trained[0]


def test_train_prints_plain_class_names(trained: tuple[Path, str]) -> None:
    (line,) = [line for line in trained[1].splitlines() if line.startswith("trained on")]
    # The default zoom=(1.2,): every image also at 1.2 times the input size, for the head only.
    assert line.startswith("trained on 16 images (the head also on 16 augmented or zoomed copies), classes "
                           f"CNT-Cluster, CNT-Matrix, CNT-MatrixSurface, CNT-fiber; saved {trained[0]} ("), line


def test_predict_writes_csv(model_file: Path, demo_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    res = CliRunner().invoke(app, ["-q", "predict", str(model_file), str(demo_folder), "--output", str(out)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 16
    assert {"path", "predicted", "p_CNT-Cluster", "p_CNT-fiber", "p_CNT-Matrix", "p_CNT-MatrixSurface"} <= set(rows[0])
    # The CSV says what the Python API says about the same files (its own CNN run, not the CLI's).
    model = fastvlad.load(model_file)
    paths = [str(demo_folder / r["path"]) for r in rows]
    proba = model.predict_proba(paths)
    assert [r["predicted"] for r in rows] == list(model.predict(paths))
    got = np.array([[float(r[f"p_{c}"]) for c in model.classes_] for r in rows])
    np.testing.assert_allclose(got, proba, atol=5e-7)  # the CSV's 6 decimals


def test_predict_marks_answers_under_the_margin_as_not_sure(model_file: Path, demo_folder: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    res = CliRunner().invoke(app, ["-q", "predict", str(model_file), str(demo_folder), "-o", str(out)])
    assert res.exit_code == 0 and "margin" not in next(csv.reader(out.open()))  # only when asked for
    rows = list(csv.DictReader(out.open()))
    p = np.array([[float(r[f"p_{c}"]) for c in fastvlad.load(model_file).classes_] for r in rows])
    top2 = np.sort(p, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]  # worked here from the written probabilities, not by the module's helper
    ordered = np.sort(margin)
    gap = int(np.argmax(np.diff(ordered)))  # halfway across the widest gap: some answers on each side,
    threshold = float(ordered[gap] + ordered[gap + 1]) / 2  # none within the CSV's rounding of it
    res = CliRunner().invoke(app, ["-q", "predict", str(model_file), str(demo_folder), "-o", str(out),
                                   "--min-margin", str(threshold)])
    assert res.exit_code == 0, res.output
    marked = list(csv.DictReader(out.open()))
    assert [r["predicted"] for r in marked] == [r["predicted"] for r in rows]
    np.testing.assert_allclose([float(r["margin"]) for r in marked], margin, atol=2e-6)
    assert [r["sure"] for r in marked] == ["yes" if m >= threshold else "no" for m in margin]
    assert {r["sure"] for r in marked} == {"yes", "no"}
    for bad in ("-0.1", "1.5", "nan"):
        res = CliRunner().invoke(app, ["-q", "predict", str(model_file), str(demo_folder), "-o", str(out),
                                       "--min-margin", bad])
        assert isinstance(res.exception, ParameterError) and f"--min-margin={float(bad)!r}" in str(res.exception)


def test_evaluate_grouped(vgg16_path: Path, demo_folder: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["-q", "evaluate", str(demo_folder), "--folds", "2", *SMALL,
                                   "--confusion", str(tmp_path / "cm.png"), "--json", str(tmp_path / "cv.json")])
    assert res.exit_code == 0, res.output
    assert "2-fold grouped CV accuracy" in res.output
    assert "each prediction: the mean over each image and 1 flipped copy (2 CNN passes)" in res.output
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_encode(model_file: Path, demo_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "codes.npy"
    res = CliRunner().invoke(app, ["-q", "encode", str(demo_folder), "-o", str(out), "--model", str(model_file)])
    assert res.exit_code == 0, res.output
    codes, paths = _written(out)
    assert codes.shape == (16, 8 * 64)  # k · pca (the default)
    np.testing.assert_array_equal(codes, fastvlad.load(model_file).transform(paths))  # the API's codes, bit for bit


def test_fp16_flag_runs_a_float16_cnn(model_file: Path, demo_folder: Path, tmp_path: Path) -> None:
    """``--fp16`` on a model trained in float32: codes within float16 rounding of the float32 ones
    (same labels for almost every point), not equal to them; ``--fp32`` gives the float32 codes back."""
    codes = {}
    for flag in ("--fp16", "--fp32"):
        out = tmp_path / f"codes{flag}.npy"
        res = CliRunner().invoke(app, ["-q", "encode", str(demo_folder), "-o", str(out), "--model", str(model_file),
                                       flag])
        assert res.exit_code == 0, res.output
        codes[flag] = np.load(out)
    res = CliRunner().invoke(app, ["-q", "encode", str(demo_folder), "-o", str(tmp_path / "c.npy"), "--model",
                                   str(model_file)])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(codes["--fp32"], np.load(tmp_path / "c.npy"))
    half, full = codes["--fp16"], codes["--fp32"]
    assert not np.array_equal(half, full)
    # The float16 graph, as the API runs it: the same codes bit for bit.
    paths = _written(tmp_path / "codes--fp16.npy")[1]
    np.testing.assert_array_equal(half, fastvlad.load(model_file).set_params(fp16=True).transform(paths))
    # Within float16 rounding of the float32 codes (measured on these 16 images: max |Δ| ≤ 1.8e-4,
    # corr 0.9999998); an image may move more when a point's label flips on a near-tie.
    per_image = np.abs(half - full).max(axis=1)
    assert (per_image < 2e-3).sum() >= len(per_image) - 2, per_image
    assert np.corrcoef(half.ravel(), full.ravel())[0, 1] > 0.9999


@pytest.mark.parametrize(("flags", "width"), [(["--pca", "none"], 1472), (["--pca", "16"], 16),
                                              (["--faithful"], 1472), (["--faithful", "--pca", "32"], 32)])
def test_encode_pca_options(vgg16_path: Path, demo_folder: Path, tmp_path: Path, flags: list[str], width: int) -> None:
    out = tmp_path / "codes.npy"
    res = CliRunner().invoke(app, ["-q", "encode", str(demo_folder), "-o", str(out), *SMALL, *flags])
    assert res.exit_code == 0, res.output
    codes, paths = _written(out)
    assert codes.shape == (16, 8 * width)
    # What the API gives for the same settings: a codebook (and PCA) fitted on the data, its codes.
    pca = None if "none" in flags else int(flags[-1]) if "--pca" in flags else 64
    make = FastVLAD.faithful if "--faithful" in flags else FastVLAD
    est = make(density=0.1, k=8, image_size=64, pca=pca if "--pca" in flags or "--faithful" not in flags else None)
    np.testing.assert_array_equal(codes, est.fit_codebook(paths).transform(paths))


def _written(out: Path) -> tuple[np.ndarray, list[str]]:
    """The codes ``encode`` wrote and the image paths beside them, in row order."""
    return np.load(out), out.with_suffix(".paths.txt").read_text().splitlines()


def test_bad_pca_option(demo_folder: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["-q", "encode", str(demo_folder), "-o", str(tmp_path / "c.npy"), "--pca", "lots"])
    assert isinstance(res.exception, ParameterError) and "--pca 'lots'" in str(res.exception)


def test_train_zoom_and_alpha_options(vgg16_path: Path, demo_folder: Path, tmp_path: Path) -> None:
    """--zoom 1.5,0.75 --alpha 20 --no-zoom-jitter --power is the estimator's zoom=(1.5, 0.75), alpha=20,
    zoom_jitter=False, power=True: the saved model has them and learnt from three times the images; --zoom none
    is zoom=(); a bad list or alpha names the option and writes nothing."""
    out = tmp_path / "m.fvl"
    res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(out), *SMALL, "--zoom", "1.5,0.75",
                                   "--alpha", "20", "--no-zoom-jitter", "--power"])
    assert res.exit_code == 0, res.output
    model = fastvlad.load(out)
    assert model.zoom == (1.5, 0.75) and model.alpha == 20 and model.train_info_["n_images"] == 16
    assert model.zoom_jitter is False and model.power is True
    assert model.train_info_["n_copies"] == 2 * 16 and "(the head also on 32 augmented or zoomed copies)" in res.output
    res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(tmp_path / "x.fvl"), "--alpha", "0"])
    assert isinstance(res.exception, ParameterError) and "alpha=0" in str(res.exception)
    res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(out), *SMALL, "--zoom", "none"])
    assert res.exit_code == 0 and fastvlad.load(out).zoom == ()
    res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(tmp_path / "x.fvl"), "--zoom", "1.5;2"])
    assert isinstance(res.exception, ParameterError) and "--zoom '1.5;2'" in str(res.exception)
    assert not (tmp_path / "x.fvl").exists()


def test_train_softness_option(vgg16_path: Path, demo_folder: Path, tmp_path: Path) -> None:
    """--softness 5 is the estimator's softness=5.0 and the saved model has it; --softness none is
    None (the nearest centre); a bad value names the option and writes nothing."""
    out = tmp_path / "m.fvl"
    res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(out), *SMALL, "--softness", "5"])
    assert res.exit_code == 0, res.output
    assert fastvlad.load(out).softness == 5.0
    res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(out), *SMALL, "--softness", "none"])
    assert res.exit_code == 0 and fastvlad.load(out).softness is None
    for bad, says in (("soft", "--softness 'soft'"), ("hard", "--softness 'hard'"), ("-1", "softness=-1.0")):
        res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(tmp_path / "x.fvl"), "--softness", bad])
        assert isinstance(res.exception, ParameterError) and says in str(res.exception), res.output
    assert not (tmp_path / "x.fvl").exists()


def test_train_code_pca_option(vgg16_path: Path, demo_folder: Path, tmp_path: Path) -> None:
    """--code-pca 5 is the estimator's code_pca=5 and the saved model has it (and its axes); without
    the option the default 64; --code-pca none is None (the head on the codes, no code_axes.npy); a
    bad value names the option and writes nothing."""
    out = tmp_path / "m.fvl"
    res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(out), *SMALL, "--code-pca", "5"])
    assert res.exit_code == 0, res.output
    model = fastvlad.load(out)
    assert model.code_pca == 5 and model.head_.axes is not None and model.alpha is None
    res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(out), *SMALL])
    assert res.exit_code == 0 and fastvlad.load(out).code_pca == 64
    res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(out), *SMALL, "--code-pca", "none"])
    assert res.exit_code == 0 and fastvlad.load(out).code_pca is None and fastvlad.load(out).head_.axes is None
    for bad, says in (("many", "--code-pca 'many'"), ("2.5", "--code-pca '2.5'"), ("0", "code_pca=0")):
        res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(tmp_path / "x.fvl"), "--code-pca", bad])
        assert isinstance(res.exception, ParameterError) and says in str(res.exception), res.output
    assert not (tmp_path / "x.fvl").exists()


def test_train_tta_zoom_option(vgg16_path: Path, demo_folder: Path, tmp_path: Path) -> None:
    """--tta-zoom 0.75 is the estimator's tta_zoom=(0.75,): the saved model has it and predict's CSV
    averages that view too (as the API does); --tta-zoom none is (); a bad list names the option
    and writes nothing."""
    out = tmp_path / "m.fvl"
    res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(out), *SMALL, "--tta-zoom", "0.75"])
    assert res.exit_code == 0, res.output
    model = fastvlad.load(out)
    assert model.tta_zoom == (0.75,)
    preds = tmp_path / "p.csv"
    res = CliRunner().invoke(app, ["-q", "predict", str(out), str(demo_folder), "--output", str(preds)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(preds.open()))
    paths = [str(demo_folder / r["path"]) for r in rows]
    got = np.array([[float(r[f"p_{c}"]) for c in model.classes_] for r in rows])
    np.testing.assert_allclose(got, model.predict_proba(paths), atol=5e-7)
    assert not np.allclose(got, model.set_params(tta_zoom=()).predict_proba(paths), atol=1e-4)
    res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(out), *SMALL, "--tta-zoom", "none"])
    assert res.exit_code == 0 and fastvlad.load(out).tta_zoom == ()
    res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(tmp_path / "x.fvl"), "--tta-zoom", "0.7;1"])
    assert isinstance(res.exception, ParameterError) and "--tta-zoom '0.7;1'" in str(res.exception)
    assert not (tmp_path / "x.fvl").exists()


def test_a_bad_tta_zoom_is_refused_at_predict_before_any_image(model_file: Path, tmp_path: Path) -> None:
    model = fastvlad.load(model_file).set_params(tta_zoom=(0.1,))
    with pytest.raises(ParameterError, match=r"tta_zoom\[0\]=0.1"):
        model.predict([str(tmp_path / "missing.png")])


def test_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = CliRunner().invoke(app, ["info"])
    assert res.exit_code == 0 and "onnxruntime" in res.output and "cache" in res.output
    # what the cache holds: each calibration set adds an int8 copy, and nothing removes one
    monkeypatch.setenv("FASTVLAD_HOME", str(tmp_path))
    (tmp_path / "vgg16_taps.v1.onnx").write_bytes(b"x" * 3_000_000)
    for name in ("int8.v1.a.b.c.d.onnx", "int8.v1.a.e.c.d.onnx"):
        (tmp_path / name).write_bytes(b"x" * 2_000_000)
    res = CliRunner().invoke(app, ["info"])
    assert "the VGG16 graph: 1 file, 3 MB; int8 copies: 2 files, 4 MB" in res.output, res.output


def test_error_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fastvlad", "train", str(tmp_path), "-o", str(tmp_path / "m.fvl")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "no images found" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m.fvl").exists()


def _copy_image(demo_folder: Path, to: Path | bytes, nth: int = 0) -> None:
    """The ``nth`` demo image copied to ``to`` (a ``bytes`` path for a name that is not UTF-8)."""
    src = sorted(demo_folder.glob("*/*.png"))[nth]
    os.makedirs(os.path.dirname(to), exist_ok=True)
    shutil.copy(src, to)


def test_explain_refuses_to_write_over_its_inputs(model_file: Path, demo_folder: Path, tmp_path: Path) -> None:
    """-o the image, the model, or a name whose support overlay (``<stem>.support.png``) is the image:
    refused before any work, nothing changed."""
    img, model = tmp_path / "a.support.png", tmp_path / "m.fvl"
    _copy_image(demo_folder, img)
    shutil.copy(model_file, model)
    before = {p: p.read_bytes() for p in (img, model)}
    for out in (img, model, tmp_path / "a.png"):  # a.png's support overlay is a.support.png
        res = CliRunner().invoke(app, ["-q", "explain", str(model), str(img), "-o", str(out), "--device", "cpu"])
        assert isinstance(res.exception, WriteError) and "refusing to write" in str(res.exception), res.output
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "a.png").exists()


def test_explain_on_a_dataset_refuses_to_write_over_its_images(model_file: Path, demo_folder: Path,
                                                               tmp_path: Path) -> None:
    """Dataset mode writes <DIR>/codewords.json and one codewords_<n>_<class>.png per class: an
    image of the data at one of those names is refused, as is a DIR that is a file."""
    first = str(fastvlad.load(model_file).classes_[0])
    out = tmp_path / "cw"
    victim = out / f"codewords_0_{plots.slug(first)}.png"
    _copy_image(demo_folder, victim)
    _copy_image(demo_folder, tmp_path / "b.png", 1)
    manifest = tmp_path / "data.csv"
    manifest.write_text(f"path,label\ncw/{victim.name},{first}\nb.png,{first}\n")
    before = victim.read_bytes()
    res = CliRunner().invoke(app, ["-q", "explain", str(model_file), str(manifest), "-o", str(out),
                                   "--max-images", "2", "--device", "cpu"])
    assert isinstance(res.exception, WriteError) and "refusing to write" in str(res.exception), res.output
    assert victim.read_bytes() == before and sorted(out.iterdir()) == [victim]
    res = CliRunner().invoke(app, ["-q", "explain", str(model_file), str(manifest), "-o", str(manifest),
                                   "--max-images", "2", "--device", "cpu"])
    assert isinstance(res.exception, WriteError) and "is a file" in str(res.exception), res.output


@pytest.mark.parametrize("option", [["--patches=-1"], ["--patches", "0"], ["--max-images", "0"], ["--top", "0"],
                                    ["--patches", "100000000"]])  # no bound: out of memory after the work
def test_explain_refuses_bad_options(model_file: Path, demo_folder: Path, tmp_path: Path, option: list[str]) -> None:
    res = CliRunner().invoke(app, ["-q", "explain", str(model_file), str(demo_folder), "-o", str(tmp_path / "cw"),
                                   "--device", "cpu", *option])
    name = option[0].split("=")[0]
    assert isinstance(res.exception, ParameterError) and f"{name}=" in str(res.exception), res.output
    assert not (tmp_path / "cw").exists()


BAD_NAME = b"bad\xff\xfename.png"  # not UTF-8: a name from another system's encoding


def _data_with_a_bad_name(demo_folder: Path, tmp_path: Path) -> Path:
    """A class folder with two images, one of them named ``BAD_NAME``."""
    root = tmp_path / "data"
    _copy_image(demo_folder, root / "CNT-fiber" / "ok.png")
    _copy_image(demo_folder, os.fsencode(root / "CNT-fiber") + b"/" + BAD_NAME, 1)
    return root


def test_predict_writes_a_name_that_is_not_utf8(model_file: Path, demo_folder: Path, tmp_path: Path) -> None:
    """The CSV holds the file name's own bytes (read it back with errors="surrogateescape"), to a
    file and to standard output."""
    data = _data_with_a_bad_name(demo_folder, tmp_path)
    out = tmp_path / "w.csv"
    res = CliRunner().invoke(app, ["-q", "predict", str(model_file), str(data), "-o", str(out)])
    assert res.exit_code == 0, res.output
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.DictReader(f))
    assert sorted(os.fsencode(r["path"]) for r in rows) == [b"CNT-fiber/" + BAD_NAME, b"CNT-fiber/ok.png"]
    assert all(r["predicted"] for r in rows)
    res = CliRunner().invoke(app, ["-q", "predict", str(model_file), str(data), "-o", "-"])
    assert res.exit_code == 0, res.output
    assert res.stdout_bytes.startswith(b"path,") and b"CNT-fiber/" + BAD_NAME + b"," in res.stdout_bytes


def test_encode_writes_a_name_that_is_not_utf8(model_file: Path, demo_folder: Path, tmp_path: Path) -> None:
    data = _data_with_a_bad_name(demo_folder, tmp_path)
    out = tmp_path / "codes.npy"
    res = CliRunner().invoke(app, ["-q", "encode", str(data), "-o", str(out), "--model", str(model_file)])
    assert res.exit_code == 0, res.output
    names = out.with_suffix(".paths.txt").read_bytes().splitlines()
    assert sorted(os.path.basename(n) for n in names) == [BAD_NAME, b"ok.png"]
    assert all(os.path.isfile(n) for n in names) and np.isfinite(np.load(out)).all()


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_cache_folder_that_is_a_file_is_exit_2_naming_fastvlad_home(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], below: str) -> None:
    """FASTVLAD_HOME at a file or below one: the commands that reach the cache stop with one line naming
    the variable, the path and the problem, exit 2; ``info`` says so on its cache line and exits 0."""
    from fastvlad.cli import main

    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    home = afile / below if below else afile
    monkeypatch.setenv("FASTVLAD_HOME", str(home))
    problem = "is a file, not a folder" if not below else f"is below {afile}, which is a file, not a folder"
    message = f"FASTVLAD_HOME={home}: {problem}; point it at a folder (or unset it for the user cache folder)"
    for command in (["models", "pull"], ["models", "quantize"]):
        res = CliRunner().invoke(app, ["-q", *command])
        assert isinstance(res.exception, ParameterError) and str(res.exception) == message, res.output
    monkeypatch.setattr(sys, "argv", ["fastvlad", "-q", "models", "pull"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    res = CliRunner().invoke(app, ["info"])
    assert res.exit_code == 0, res.output
    (line,) = [line for line in res.output.splitlines() if line.startswith("cache")]
    assert line.split(None, 1)[1] == f"{home} (unusable: {message})"
    assert sorted(tmp_path.iterdir()) == [afile] and afile.read_bytes() == b""


def test_encode_removes_the_side_files_of_an_earlier_run(model_file: Path, demo_folder: Path, tmp_path: Path) -> None:
    """<out>.errors.csv and <out>.tiles.csv of an earlier run (made here by hand) describe other data: an
    untiled run that skips nothing removes them, and only them, beside its new codes and paths."""
    out = tmp_path / "codes.npy"
    stale = [out.with_suffix(".errors.csv"), out.with_suffix(".tiles.csv")]
    for f in stale:
        f.write_text("path,error\nold/a.png,cannot decode\n")
    kept = [tmp_path / "codes.notes.csv", tmp_path / "other.errors.csv"]
    for f in kept:
        f.write_text("mine\n")
    res = CliRunner().invoke(app, ["-q", "encode", str(demo_folder), "-o", str(out), "--model", str(model_file)])
    assert res.exit_code == 0, res.output
    assert [f.name for f in stale if f.exists()] == []
    codes, paths = _written(out)
    assert codes.shape[0] == len(paths) == 16 and np.isfinite(codes).all()
    assert all(f.read_text() == "mine\n" for f in kept)


@pytest.mark.parametrize("command, option, match", [
    ("encode", ["--scale", "2"], r"--scale with a saved model: .* leave --scale out"),
    ("encode", ["--tile", "32x32"], r"--tile with a saved model: .*tile none"),
    ("encode", ["--tile-stride", "8"], r"--tile-stride 8: .* does not cut tiles"),
    ("predict", ["--tile-stride", "8"], r"--tile-stride 8: .* does not cut tiles"),
])
def test_saved_model_refuses_the_options_it_fixed(model_file: Path, demo_folder: Path, tmp_path: Path,
                                                   command: str, option: list[str], match: str) -> None:
    """encode --model ignored --scale and --tile without a word; predict --tile-stride on a model
    without tiles named "--tile HxW", an option predict does not have."""
    from fastvlad.errors import ParameterError

    inputs = ([str(demo_folder), "--model", str(model_file)] if command == "encode"
              else [str(model_file), str(demo_folder)])
    res = CliRunner().invoke(app, ["-q", command, *inputs, "-o", str(tmp_path / "out"), *option])
    assert isinstance(res.exception, ParameterError), res.output
    assert re.search(match, str(res.exception)) and "CLI: --tile HxW" not in str(res.exception)
    assert list(tmp_path.iterdir()) == []
