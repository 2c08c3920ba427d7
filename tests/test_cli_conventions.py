"""Command-line conventions (issue 18, item 5): --version, -o -, never writing over an input, a
``true`` column, -v without Pillow's debug lines, progress lines off a terminal, the device
notice, choices in --help, the confusion matrix's headers, and a one-image answer."""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fastvlad import backends
from fastvlad._version import __version__
from fastvlad.cli import app, outputs
from fastvlad.cli.evaluate import confusion_text
from fastvlad.errors import WriteError

from .tiny_model import fitted


@pytest.fixture(scope="module")
def model_file(vgg16_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' tiny model (demo classes, 64² input), saved once."""
    return fitted().save(tmp_path_factory.mktemp("conv") / "m.fvl")


def _invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def test_version() -> None:
    res = _invoke("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"fastvlad {__version__}"


def test_csv_to_standard_output(model_file: Path, demo_folder: Path) -> None:
    res = _invoke("-q", "predict", str(model_file), str(demo_folder), "-o", "-")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 16 and rows[0]["predicted"]
    assert "wrote 16 predictions to standard output" in res.stderr  # the status line stays off the data
    assert not Path("-").exists()


def test_predict_keeps_the_true_labels(model_file: Path, demo_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    assert _invoke("-q", "predict", str(model_file), str(demo_folder), "-o", str(out)).exit_code == 0
    rows = list(csv.DictReader(out.open()))
    manifest = {r["path"]: r["label"] for r in csv.DictReader((demo_folder / "manifest.csv").open())}
    assert [r["true"] for r in rows] == [manifest[r["path"]] for r in rows]
    loose = tmp_path / "loose"  # no labels: no true column
    loose.mkdir()
    shutil.copy(demo_folder / rows[0]["path"], loose / "a.png")
    assert _invoke("-q", "predict", str(model_file), str(loose), "-o", str(out)).exit_code == 0
    assert "true" not in next(csv.reader(out.open()))


@pytest.mark.parametrize("target", ["model", "manifest", "image"])
def test_refuses_to_write_over_what_it_reads(model_file: Path, demo_folder: Path, tmp_path: Path, target: str) -> None:
    data = tmp_path / "data"
    shutil.copytree(demo_folder, data)
    model = tmp_path / "m.fvl"
    shutil.copy(model_file, model)
    image = data / next(csv.DictReader((data / "manifest.csv").open()))["path"]
    output = {"model": model, "manifest": data / "manifest.csv", "image": image}[target]
    before = output.read_bytes()
    os.chdir(tmp_path)  # the same file by a relative name is caught too
    try:
        res = _invoke("-q", "predict", str(model), str(data), "-o", os.path.relpath(output, tmp_path))
    finally:
        os.chdir(Path(__file__).parent)
    assert isinstance(res.exception, WriteError), res.output
    assert "refusing to write" in str(res.exception)
    assert output.read_bytes() == before


class _Stream(io.StringIO):
    """Standard output whose writes fail with ``error``."""

    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def write(self, text: str) -> int:
        raise self.error


@pytest.mark.parametrize("stdout", ["none", "closed", "bad descriptor", "broken pipe"])
def test_standard_output_that_cannot_be_written(monkeypatch: pytest.MonkeyPatch, stdout: str) -> None:
    """Closed (None when started with ``>&-``): a ``WriteError``, not an AttributeError. A reader
    that left (``| head``) stays a BrokenPipeError, which Click turns into a quiet exit."""
    closed = io.StringIO()
    closed.close()
    stream = {"none": None, "closed": closed, "bad descriptor": _Stream(OSError(9, "Bad file descriptor")),
              "broken pipe": _Stream(BrokenPipeError(32, "Broken pipe"))}[stdout]
    monkeypatch.setattr(sys, "stdout", stream)
    error = BrokenPipeError if stdout == "broken pipe" else WriteError
    with pytest.raises(error, match=None if stdout == "broken pipe" else "standard output is closed"):
        outputs.write_text(Path(outputs.STDOUT), "path,predicted\n")
    if stdout in ("none", "closed"):  # and before the work
        with pytest.raises(WriteError, match="standard output is closed"):
            outputs.check_stdout()


def test_csv_to_a_closed_standard_output_is_exit_2(model_file: Path, demo_folder: Path) -> None:
    image = next(demo_folder.rglob("*.png"))
    proc = subprocess.run(["sh", "-c", 'exec "$0" "$@" >&-', sys.executable, "-m", "fastvlad", "-q", "predict",
                           str(model_file), str(image), "-o", "-"], capture_output=False, stderr=subprocess.PIPE,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: standard output is closed") and len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--json", "same.out", "--confusion", "same.out"], "--json and --confusion both write same.out"),
    (["--json", "same.out", "--confusion", "{tmp}/sub/../same.out"], "--json and --confusion both write {tmp}/sub/.."),
    (["--json", "rep/report.json", "--report", "rep"], "--json and --report both write rep/report.json"),
    (["--confusion", "rep/examples/0.png", "--report", "./rep"], "--confusion and --report both write rep/examples"),
    (["--json", "rep", "--report", "rep"], "--json and --report both write rep "),
], ids=["one name", "one file by two names", "the report's json", "a thumbnail", "the report folder"])
def test_evaluate_refuses_two_outputs_to_one_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  args: list[str], message: str) -> None:
    """One would silently replace the other (the report's own report.json the user's): refused
    before the data is read, nothing written."""
    from fastvlad import datasets

    def no_work(*a: object, **k: object) -> None:
        raise AssertionError("the data should not have been touched")

    monkeypatch.setattr(datasets, "load", no_work)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    res = _invoke("-q", "evaluate", "data", *(a.format(tmp=tmp_path) for a in args))
    assert isinstance(res.exception, WriteError), res.output
    assert message.format(tmp=tmp_path) in str(res.exception) and "give each output its own path" in str(res.exception)
    assert [p.name for p in tmp_path.iterdir()] == ["sub"]


def test_refusal_is_exit_2_with_one_line(model_file: Path, demo_folder: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.fvl"
    shutil.copy(model_file, model)
    proc = subprocess.run([sys.executable, "-m", "fastvlad", "-q", "predict", str(model), str(demo_folder), "-o",
                           str(model)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: refusing to write") and "Traceback" not in proc.stderr
    assert model.read_bytes() == model_file.read_bytes()


def test_train_refuses_to_write_over_its_manifest(demo_folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(demo_folder, data)
    res = _invoke("-q", "train", str(data / "manifest.csv"), "-o", str(data / "manifest.csv"))
    assert isinstance(res.exception, WriteError) and "refusing to write" in str(res.exception)


def test_verbose_shows_fastvlad_debug_not_pillow(model_file: Path, demo_folder: Path, tmp_path: Path) -> None:
    image = next(demo_folder.rglob("*.png"))
    proc = subprocess.run([sys.executable, "-m", "fastvlad", "-v", "--no-progress", "predict", str(model_file),
                           str(image), "-o", str(tmp_path / "p.csv")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"fastvlad: {model_file}: classes" in proc.stderr  # fastvlad's own debug line
    assert "STREAM" not in proc.stderr and "PIL" not in proc.stderr  # Pillow's chunk-by-chunk PNG parsing


def test_progress_lines_when_not_a_terminal(model_file: Path, demo_folder: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "p.csv")
    res = _invoke("predict", str(model_file), str(demo_folder), "-o", out)  # CliRunner's stderr is no terminal
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("encoding: ")]
    assert lines and lines[-1].startswith("encoding: 16/16 img (") and "\r" not in res.stderr and "\x1b" not in res.stderr
    # the mirror averaged at predict is a second pass: its bar says so, not a second "encoding"
    assert any(line.startswith("encoding, mirrored: 16/16 img (") for line in res.stderr.splitlines())
    quiet = _invoke("--no-progress", "predict", str(model_file), str(demo_folder), "-o", out)
    assert quiet.exit_code == 0 and "encoding: " not in quiet.stderr
    forced = _invoke("-q", "--progress", "predict", str(model_file), str(demo_folder), "-o", out)
    assert forced.exit_code == 0 and "encoding: 16/16" in forced.stderr


def test_device_notice_in_plain_words(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fastvlad"):
        backends._notice_cpu_fallback.__wrapped__("CuPy is not installed")
    assert "no GPU found: running on the CPU (CuPy is not installed)" in caplog.text


def test_help_shows_choices_and_extras() -> None:
    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert res.exit_code == 0
    for choice in ("[auto|cpu|cuda]", "[raise|skip]", "N|HxW|native", "fastvlad[dask]", "PX|auto", "[raise|ignore]"):
        assert choice in res.stdout, choice


def test_confusion_matrix_has_column_headers() -> None:
    text = confusion_text(np.array([[3, 1], [0, 4]]), ["Defective", "NonDefective"])
    lines = text.splitlines()
    assert lines[1].split() == ["true", "/", "predicted", "Defective", "NonDefective"]
    assert lines[2].split() == ["Defective", "3", "1"] and lines[3].split() == ["NonDefective", "0", "4"]
    many = confusion_text(np.eye(8, dtype=int), [f"c{i}" for i in range(8)]).splitlines()
    assert many[1].split()[3:] == [f"({i})" for i in range(1, 9)] and many[2].split()[:2] == ["(1)", "c0"]


def test_one_image_prints_its_answer(model_file: Path, demo_folder: Path, tmp_path: Path) -> None:
    image = next(demo_folder.rglob("*.png"))
    res = _invoke("-q", "predict", str(model_file), str(image), "-o", str(tmp_path / "p.csv"))
    assert res.exit_code == 0, res.output
    (row,) = csv.DictReader((tmp_path / "p.csv").open())
    assert f"{image.name}: {row['predicted']} (p = {float(row['p_' + row['predicted']]):.3f})" in res.stdout


def _main(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``fastvlad`` as the shell runs it: (exit code, standard error)."""
    from fastvlad.cli import main

    monkeypatch.setattr(sys, "argv", ["fastvlad", "-q", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0), capsys.readouterr().err


def test_a_name_too_long_is_bad_input_and_leaves_no_folder(model_file: Path, demo_folder: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A path component over 255 bytes was "[Errno 36] File name too long", exit 1, and -o x/LONG/y.csv
    left an empty x/ behind."""
    long = "n" * 300
    for argv in (["predict", str(model_file), str(demo_folder), "-o", str(tmp_path / "x" / long / "y.csv")],
                 ["predict", str(model_file), str(tmp_path / f"{long}.png"), "-o", "-"],
                 ["explain", str(model_file), str(demo_folder), "-o", str(tmp_path / long)]):
        code, err = _main(argv, monkeypatch, capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert re.search("longer than the file system allows|do not exist|no such|not a folder, a CSV", err), err
    assert list(tmp_path.iterdir()) == []


def test_error_messages_escape_control_characters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A CSV path holding a newline (quoted) printed the error over two lines; an escape sequence in
    a name would restyle the terminal."""
    (tmp_path / "m.csv").write_text('path,label\n"a/\nb.png",x\n"c\x1b[31m.png",y\n')
    code, err = _main(["train", str(tmp_path / "m.csv"), "-o", str(tmp_path / "m.fvl")], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "\x1b" not in err, err
    assert "a/\\nb.png" in err and "c\\x1b[31m.png" in err
    code, err = _main(["predict", str(tmp_path / "m\x1b[31m.fvl"), str(tmp_path / "m.csv")], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "m\\x1b[31m.fvl" in err, err


def test_progress_lines_also_come_by_the_minute(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Off a terminal a line came only every tenth of the total: a 100,000-image predict printed one
    line in 90 s and the next about six minutes later. Now one comes at least every minute too."""
    from fastvlad import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(progress, "ENABLED", True)
    monkeypatch.setattr(progress, "MODE", "bar")
    with progress.bar(1000, "predicting") as bar:
        for _ in range(30):  # 3 % of the total, 30 s apart: a line when each minute has passed
            clock[0] += 30.0
            bar.advance()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"predicting: {n}/1000 img" for n in range(1, 30, 2)], lines


def test_evaluate_warns_of_options_it_does_not_use(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """--folds with --split, and --shift-images without --shift, were ignored without a word; the
    warning goes through the logger (it had bypassed it, so nothing could filter it) and -q keeps it."""
    _invoke("-q", "evaluate", str(tmp_path / "missing"), "--split", "series", "--folds", "3", "--shift-images", "50")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "fastvlad"]
    assert warned == ["--folds 3: not used with --split (one fold per value of series)",
                      "--shift-images 50: not used without --shift or --shift-magnification"], caplog.text
    caplog.clear()
    _invoke("-q", "evaluate", str(tmp_path / "missing"), "--split", "series", "--shift", "--shift-images", "50")
    assert "not used" not in caplog.text, caplog.text


@pytest.mark.parametrize("argv, named", [
    (["train", "", "-o", "m.fvl"], "argument 3 is empty"),  # after -q
    (["models", "quantize", "--calibrate", ""], "the value of --calibrate is empty"),
    (["predict", "m.fvl", "data", "--output="], "the value of --output is empty"),
])
def test_an_empty_argument_is_refused(argv: list[str], named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Click reads an empty path as the current folder: ``train "$DATA"`` with DATA unset had trained
    on the folder it ran in, and ``--calibrate ''`` calibrated on it (one run scanned 100,000 files)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    for name in ("x.png", "y.png"):  # a folder that would read as a one-class dataset
        (tmp_path / "a" / name).write_bytes(b"")
    code, err = _main(argv, monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and named in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "x.png", "y.png"]


def test_an_empty_path_is_refused_in_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Path("")`` is the current folder: an empty path read whatever was there."""
    monkeypatch.chdir(tmp_path)
    from fastvlad import backbone, datasets, load, quantize
    from fastvlad.errors import FastVLADError

    for call in (lambda: datasets.load(""), lambda: load(""), lambda: quantize.calibration_set(""),
                 lambda: backbone.resolve_model("")):
        with pytest.raises(FastVLADError, match="empty"):
            call()


def test_the_skip_hint_only_where_the_command_offers_it(model_file: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``models quantize --calibrate`` with an unreadable image had ended "(… --on-error skip)", an
    option that command does not have."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"not a png")
    code, err = _main(["models", "quantize", "--calibrate", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "x.png" in err and "--on-error" not in err, err
    code, err = _main(["predict", str(model_file), str(tmp_path), "-o", "-"], monkeypatch, capsys)
    assert code == 2 and "x.png" in err and "--on-error skip" in err, err
