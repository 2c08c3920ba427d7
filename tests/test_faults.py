"""Faults: a process killed or interrupted while saving, a full disk, GPU out-of-memory
(simulated), unexpected errors in the CLI, and several threads predicting with one model.

The corrupt-cache → rebuild and two-processes-pulling cases are in tests/test_weights.py.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import fastvlad
from fastvlad import _files
from fastvlad.backends.cpu import CpuBackend
from fastvlad.cli import app
from fastvlad.encoder import Encoder, EncoderSettings
from fastvlad.errors import (
    BackboneError,
    ModelFormatError,
    WriteError,
    is_gpu_out_of_memory,
)

from . import tiny_model

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--density", "0.1", "-k", "8", "--image-size", "64"]

# Runs the library's save or the CLI with every zip member write stalled for a minute, after
# printing SAVING: the test signals the process while the model file is half written.
HELPER = """
import signal, sys, time, zipfile

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
real = zipfile.ZipFile.writestr

def stalled(self, *args, **kwargs):
    real(self, *args, **kwargs)
    print("SAVING", flush=True)
    time.sleep(60)

zipfile.ZipFile.writestr = stalled
if sys.argv[1] == "save":
    import fastvlad
    fastvlad.load(sys.argv[2]).save(sys.argv[3])
else:
    from fastvlad.cli import main
    sys.argv = ["fastvlad", *sys.argv[2:]]
    main()
"""


def _start_stalled(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    script = tmp_path / "stall.py"
    script.write_text(HELPER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the save has started (or the process died)
    if line.strip() != "SAVING":
        proc.kill()
        pytest.fail(f"the helper did not reach the save: {line!r} {proc.communicate(timeout=30)}")
    return proc


def _parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


@pytest.fixture(scope="module")
def saved_model(vgg16_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model.fitted().save(tmp_path_factory.mktemp("saved") / "tiny.fvl")


# -- killed, interrupted, terminated while saving ----------------------------------------------
def test_sigkill_mid_save_leaves_no_model(saved_model: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "model.fvl"
    target.parent.mkdir()
    proc = _start_stalled(tmp_path, "save", str(saved_model), str(target))
    assert _parts(target.parent), "the temp file should exist while saving"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()  # nothing at the target path, ever
    stale = _parts(target.parent)
    assert len(stale) == 1 and stale[0].startswith(f".model.fvl.{socket.gethostname().replace('.', '_')}.{proc.pid}.")
    with pytest.raises(ModelFormatError, match="no such model file"):
        fastvlad.load(target)
    fastvlad.load(saved_model).save(target)  # the next save of that path removes the dead writer's leftover
    assert _parts(target.parent) == []
    fastvlad.load(target)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130),
                                         pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])
def test_interrupted_train_save_exits_cleanly_and_writes_nothing(vgg16_path: Path, demo_folder: Path, tmp_path: Path,
                                                                  sig: int, code: int) -> None:
    """Ctrl-C (SIGINT) or SIGTERM while ``fastvlad train`` writes the model: no traceback, the
    conventional exit code, nothing at the target path and no temp file left."""
    target = tmp_path / "model.fvl"
    proc = _start_stalled(tmp_path, "cli", "-q", "train", str(demo_folder), "-o", str(target), *SMALL)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    # one line says so (the log had ended at the last progress line, as if the job had just stopped)
    assert f"{'interrupted' if sig == signal.SIGINT else 'terminated'}: stopped; nothing more is written" in err, err
    assert not target.exists() and _parts(tmp_path) == []


def test_stale_parts_of_live_writers_are_kept(tmp_path: Path) -> None:
    prefix = f".m.bin.{socket.gethostname().replace('.', '_')}."
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f"{prefix}{dead.stdout.strip()}.abc.part").write_bytes(b"x")
    (tmp_path / f"{prefix}{os.getpid()}.def.part").write_bytes(b"x")  # a save in progress in this process
    (tmp_path / ".m.bin.otherhost.1.ghi.part").write_bytes(b"x")  # not ours to judge
    _files.write_bytes_atomic(tmp_path / "m.bin", b"data")
    assert _parts(tmp_path) == sorted([f"{prefix}{os.getpid()}.def.part", ".m.bin.otherhost.1.ghi.part"])


# -- full disk and other write failures -------------------------------------------------------
def _no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_full_disk_is_a_clear_error_and_keeps_the_old_model(saved_model: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    model = fastvlad.load(saved_model)
    target = model.save(tmp_path / "m.fvl")
    before = target.read_bytes()
    if where == "fsync":
        monkeypatch.setattr(os, "fsync", _no_space)
    else:
        monkeypatch.setattr(zipfile.ZipFile, "writestr", _no_space)
    with pytest.raises(WriteError, match=r"m.fvl: no space left on the device.*free some space"):
        model.save(target)
    monkeypatch.undo()
    assert target.read_bytes() == before and _parts(tmp_path) == []
    fastvlad.load(target)


def test_full_disk_in_the_cli(saved_model: Path, demo_folder: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", _no_space)
    res = CliRunner().invoke(app, ["-q", "predict", str(saved_model), str(demo_folder), "-o", str(tmp_path / "p.csv")])
    assert isinstance(res.exception, WriteError) and "no space left" in str(res.exception)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("case", "match"), [("folder", "is a folder; give a file name"),
                                             ("denied", "cannot write .*Permission denied")])
def test_unwritable_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, match: str) -> None:
    target = tmp_path / "out"
    if case == "folder":
        target.mkdir()
    else:  # root may write anywhere, so the OS's answer is simulated
        def deny(*args: object, **kwargs: object) -> None:
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(_files.tempfile, "mkstemp", deny)
    with pytest.raises(WriteError, match=match):
        _files.write_bytes_atomic(target, b"x")


@pytest.mark.parametrize("command", ["train", "predict", "encode"])
def test_cli_checks_the_output_before_the_work(saved_model: Path, demo_folder: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    from fastvlad import datasets

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data should not have been touched")

    monkeypatch.setattr(datasets, "load", no_work)
    args = {"train": ["train", str(demo_folder), *SMALL], "predict": ["predict", str(saved_model), str(demo_folder)],
            "encode": ["encode", str(demo_folder), "--model", str(saved_model)]}[command]
    res = CliRunner().invoke(app, ["-q", *args, "-o", str(tmp_path)])  # a folder
    assert isinstance(res.exception, WriteError) and "is a folder; give a file name" in str(res.exception)


def _special_file(path: Path, kind: str) -> Path:
    """A FIFO, a Unix socket or (as root) a null device of our own at ``path``; skips the test
    where it cannot be made. Never the real /dev/null: a regression would replace it."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(path))
        except OSError as exc:  # a path over the 108 bytes a socket address holds
            pytest.skip(f"cannot bind a Unix socket at {path}: {exc}")
        finally:
            sock.close()
    else:
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs root")
    return path


@pytest.mark.parametrize("kind", ["fifo", "socket", "null device", "link to a fifo"])
def test_a_device_pipe_or_socket_is_never_replaced(tmp_path: Path, kind: str) -> None:
    """The check before the work and the write itself refuse it: renaming a file over /dev/null
    (as root) would destroy it."""
    if kind == "link to a fifo":
        target = tmp_path / "link"
        target.symlink_to(_special_file(tmp_path / "fifo", "fifo"))
    else:
        target = _special_file(tmp_path / "out", kind)
    mode = os.lstat(target).st_mode
    with pytest.raises(WriteError, match=r"is not a regular file \(a device, pipe or socket\).*-o -"):
        _files.check_writable(target)
    with pytest.raises(WriteError, match="is not a regular file"):
        _files.write_bytes_atomic(target, b"x")
    assert os.lstat(target).st_mode == mode and _parts(tmp_path) == []


def test_the_cli_refuses_a_fifo_output_before_the_work(saved_model: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from fastvlad import datasets

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data should not have been touched")

    monkeypatch.setattr(datasets, "load", no_work)
    fifo = _special_file(tmp_path / "p.csv", "fifo")
    res = CliRunner().invoke(app, ["-q", "predict", str(saved_model), str(tmp_path), "-o", str(fifo)])
    assert isinstance(res.exception, WriteError) and f"{fifo} is not a regular file" in str(res.exception)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_report_folder_keeps_a_fifo_in_it(tmp_path: Path) -> None:
    """Moving a staged folder's files in is refused before the first move, so nothing is replaced."""
    folder = tmp_path / "report"
    folder.mkdir()
    fifo = _special_file(folder / "index.html", "fifo")
    with pytest.raises(WriteError, match="is not a regular file"), _files.folder_atomic(folder) as staging:
        (staging / "a.json").write_text("new")
        (staging / "index.html").write_text("new")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not (folder / "a.json").exists()
    from fastvlad import report

    with pytest.raises(WriteError, match=r"index\.html is not a regular file"):  # and before the work
        report.check_folder(folder)


@pytest.mark.parametrize("kind", ["folder", "socket", "null device"])
def test_a_model_path_that_is_not_a_file(tmp_path: Path, kind: str) -> None:
    """It exists, so not "no such model file": what it is instead."""
    path = tmp_path / "m.fvl"
    if kind == "folder":
        path.mkdir()
    else:
        _special_file(path, kind)
    with pytest.raises(ModelFormatError, match=r"m.fvl is not a regular file \((a folder|a device, pipe or socket)\)"):
        fastvlad.load(path)


def test_a_fifo_model_is_refused_without_blocking(tmp_path: Path) -> None:
    """A subprocess, so that a regression that opens the FIFO (which blocks) fails by its timeout."""
    fifo = _special_file(tmp_path / "m.fvl", "fifo")
    proc = subprocess.run([sys.executable, "-m", "fastvlad", "-q", "predict", str(fifo), str(tmp_path), "-o",
                           str(tmp_path / "p.csv")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: {fifo} is not a regular file (a device, pipe or socket); give the path of a " \
                          ".fvl model file\n"


def test_checks_and_failed_writes_leave_no_new_folder(tmp_path: Path) -> None:
    """The folders a check before the work makes for its probe, or a write or staged folder that
    failed, are gone after it; a write that succeeds keeps them."""
    _files.check_writable(tmp_path / "a" / "b" / "out.csv")
    _files.check_stageable(tmp_path / "c" / "report")
    assert list(tmp_path.iterdir()) == []

    def fail(f: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(WriteError):
        _files.write_atomic(tmp_path / "d" / "e" / "out.csv", fail)
    with pytest.raises(RuntimeError), _files.folder_atomic(tmp_path / "f" / "report") as staging:
        (staging / "index.html").write_text("half")
        raise RuntimeError("the report failed")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "g").mkdir()
    _files.write_bytes_atomic(tmp_path / "g" / "h" / "out.csv", b"x")
    with _files.folder_atomic(tmp_path / "i" / "report") as staging:
        (staging / "index.html").write_text("whole")
    assert (tmp_path / "g" / "h" / "out.csv").read_bytes() == b"x"
    assert (tmp_path / "i" / "report" / "index.html").read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g", "i"]


def test_a_predict_that_fails_after_its_check_leaves_no_folder(saved_model: Path, tmp_path: Path) -> None:
    """``-o new/folder/out.csv`` is checked before the work; the work then fails (no image reads):
    nothing is left at ``new``."""
    empty = tmp_path / "images"
    empty.mkdir()
    (empty / "a.png").write_bytes(b"not an image")
    res = CliRunner().invoke(app, ["-q", "predict", str(saved_model), str(empty), "-o",
                                   str(tmp_path / "new" / "folder" / "out.csv")])
    assert res.exit_code != 0
    assert not (tmp_path / "new").exists()


# -- GPU out of memory: halve the batch and retry ----------------------------------------------
class OutOfMemoryError(MemoryError):
    """Named like ``cupy.cuda.memory.OutOfMemoryError``."""


class FakeBackbone:
    """Two cheap taps from the pixels themselves (NHWC, like ``Backbone``); fails with a GPU
    out-of-memory error on more than ``limit`` images at once. Records the batch sizes."""

    def __init__(self, limit: int = 1 << 30, error: Exception | None = None) -> None:
        self.limit, self.error, self.calls = limit, error, []  # type: ignore[var-annotated]

    def __call__(self, pixels: np.ndarray) -> list[np.ndarray]:
        self.calls.append(len(pixels))
        if len(pixels) > self.limit:
            raise self.error or OutOfMemoryError(f"Out of memory allocating {len(pixels) << 20} bytes")
        nhwc = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
        n, h, w, c = nhwc.shape
        pooled = nhwc.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4), dtype=np.float32)
        return [nhwc, np.ascontiguousarray(pooled)]


SETTINGS = EncoderSettings(density=0.1, image_size=(32, 32))
BACKEND = CpuBackend(batch_size=8)


def _encode(images: list[np.ndarray], cnn: FakeBackbone, centres: np.ndarray):  # type: ignore[no-untyped-def]
    return Encoder(SETTINGS, BACKEND, cnn, centres=centres).encode(images)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return list(np.random.default_rng(0).integers(0, 256, (19, 32, 32), dtype=np.uint8))


def test_gpu_oom_halves_the_batch_and_gives_the_same_codes(images: list[np.ndarray],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    centres = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32) * 50
    expected = _encode(images, FakeBackbone(), centres)
    fake = FakeBackbone(limit=3)
    with caplog.at_level(logging.WARNING, logger="fastvlad"):
        got = _encode(images, fake, centres)
    np.testing.assert_array_equal(got.codes, expected.codes)
    np.testing.assert_array_equal(got.indices, expected.indices)
    # 8 fails, 4 fails, then 2 at a time from there on (the last batch of 3: 2 + 1).
    assert fake.calls[:4] == [8, 4, 2, 2] and max(fake.calls[4:]) == 2 and sum(c for c in fake.calls if c <= 3) == 19
    assert "out of GPU memory with 8 images at once; retrying with 4" in caplog.text
    assert "retrying with 2" in caplog.text


def test_gpu_oom_in_the_codebook_sample(images: list[np.ndarray]) -> None:
    expected = Encoder(SETTINGS, BACKEND, FakeBackbone()).codebook_sample(images, n_images=15)
    got = Encoder(SETTINGS, BACKEND, FakeBackbone(limit=2)).codebook_sample(images, n_images=15)
    np.testing.assert_array_equal(got, expected)


def test_onnxruntime_style_oom_is_recognised(images: list[np.ndarray]) -> None:
    # ONNX Runtime's CUDA provider reports a failed allocation as a generic error, wrapped by Backbone.
    ort = RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : BFCArena::AllocateRawInternal Failed to "
                       "allocate memory for requested buffer of size 822083584")
    wrapped = BackboneError(f"vgg16.onnx: inference failed on a batch of shape (8, 3, 224, 224) ({ort})")
    assert is_gpu_out_of_memory(wrapped) and is_gpu_out_of_memory(OutOfMemoryError("x"))
    assert not is_gpu_out_of_memory(ValueError("shapes do not match")) and not is_gpu_out_of_memory(MemoryError())
    centres = np.zeros((4, 6), np.float32)
    fake = FakeBackbone(limit=4, error=wrapped)
    _encode(images[:8], fake, centres)
    assert fake.calls == [8, 4, 4]


@pytest.mark.parametrize(("error", "limit"), [(ValueError("not a memory problem"), 3),
                                              (OutOfMemoryError("even one image is too many"), 0)])
def test_other_errors_and_oom_at_one_image_pass_through(images: list[np.ndarray], error: Exception,
                                                        limit: int) -> None:
    fake = FakeBackbone(limit=limit, error=error)
    with pytest.raises(type(error), match=str(error)):
        _encode(images[:8], fake, np.zeros((4, 6), np.float32))
    assert fake.calls == ([8] if limit else [8, 4, 2, 1])


# -- the CLI on failures that are not ours ----------------------------------------------------
@pytest.mark.parametrize("command", ["train", "predict"])
def test_cli_bad_file_message_without_traceback(saved_model: Path, demo_folder: Path, tmp_path: Path,
                                                command: str) -> None:
    """A real subprocess: one line naming the file, a hint, exit code 2, nothing written."""
    folder = tmp_path / "data"
    for src in demo_folder.rglob("*.png"):
        (folder / src.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / src.parent.name / src.name).write_bytes(src.read_bytes())
    (folder / "CNT-fiber" / "notes.png").write_text("not an image")
    target = tmp_path / "out"
    args = ["train", str(folder), "-o", str(target), *SMALL] if command == "train" else \
        ["predict", str(saved_model), str(folder), "-o", str(target)]
    proc = subprocess.run([sys.executable, "-m", "fastvlad", "-q", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {folder / 'CNT-fiber' / 'notes.png'}: cannot decode")
    assert "--on-error skip" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not target.exists()


def test_cli_unexpected_error_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from fastvlad import cli

    def boom() -> None:
        raise RuntimeError("something broke")

    monkeypatch.setattr(cli, "app", boom)
    monkeypatch.setattr(cli, "_VERBOSE", False)
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err == "error: unexpected RuntimeError: something broke (run with -v for the traceback, and please " \
                  "report it)\n"
    monkeypatch.setattr(cli, "_VERBOSE", True)
    with pytest.raises(RuntimeError):
        cli.main()


# -- threads --------------------------------------------------------------------------------
def test_one_model_predicts_from_four_threads(vgg16_path: Path) -> None:
    import numba

    model = tiny_model.fitted()
    images, _ = tiny_model.demo_images()
    X = list(images[:12])
    serial = model.predict_proba(X)
    assert numba.threading_layer() != "workqueue"  # thread-safe layers only (else the estimator serialises)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = model.predict_proba(X[i:] + X[:i])  # each thread its own order
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for i in range(4):
        np.testing.assert_array_equal(np.roll(results[i], i, axis=0), serial)
