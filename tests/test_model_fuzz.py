"""Fuzzing the model file: damaged members with the manifest re-hashed (a file someone edited),
each loaded in a child process. Every case must end in a ``ModelFormatError`` naming the file or
in a correct load (the model predicts finite probabilities), never in a signal, a hang or
another exception. Before the booster was checked in Python, about one flipped byte in ten of
``booster.ubj`` killed the process with SIGSEGV inside XGBoost's parser.

The default run takes a seeded sample (about 30 s on 2 cores); ``-m slow`` runs 480 cases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from . import model_files

# The booster gets a third of the cases: its parser is the one that crashed.
TARGETS = ("booster.ubj", "booster.ubj", "booster.ubj", "config.json", "codebook.npy", "projection.npy",
           "manifest.json", "format.json", "(zip)")
OPS = ("flip", "truncate", "insert", "delete")

# Loads every case listed in argv[1] from index argv[3] on, in this one process, writing
# "start i" before and the outcome after each case to argv[2]; the parent restarts it after the
# case that killed it. Outcomes: ok / error (a FastVLADError; "named" when its message names the
# file) / other (any other exception: a failure too).
CHILD = r"""
import json, sys
import numpy as np
import fastvlad
from fastvlad.errors import FastVLADError

paths = json.load(open(sys.argv[1]))
with open(sys.argv[2], "a") as log:
    for i in range(int(sys.argv[3]), len(paths)):
        log.write(f"start {i}\n"); log.flush()
        try:
            model = fastvlad.load(paths[i])
            codes = np.random.default_rng(0).standard_normal((3, model.codebook_.size)).astype(np.float32)
            proba = model.predict_proba_codes(codes / np.linalg.norm(codes, axis=1, keepdims=True))
            good = proba.shape == (3, len(model.classes_)) and np.isfinite(proba).all()
            outcome = "ok" if good else f"other bad probabilities {proba!r}"
        except FastVLADError as exc:
            outcome = f"error {'named' if paths[i] in str(exc) else 'unnamed'} {exc.exit_code} {str(exc)[:300]!r}"
        except BaseException as exc:
            outcome = f"other {type(exc).__name__}: {str(exc)[:300]!r}"
        log.write(f"result {i} {outcome}\n"); log.flush()
"""


def _mutate(data: bytes, op: str, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    if op == "flip":
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(len(b)))] ^= int(rng.integers(1, 256))
    elif op == "truncate":
        b = b[: int(rng.integers(0, len(b)))]
    elif op == "insert":
        pos = int(rng.integers(len(b) + 1))
        b[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
    else:
        pos = int(rng.integers(len(b)))
        del b[pos : pos + int(rng.integers(1, 17))]
    return bytes(b)


def cases(model: bytes, folder: Path, seed: int, n: int) -> list[tuple[str, Path]]:
    """``n`` damaged copies of the model file ``model`` written into ``folder``: (what, path)."""
    rng = np.random.default_rng(seed)
    original = folder / "original.fvl"
    original.write_bytes(model)
    members = model_files.members_of(original)
    out = []
    for i in range(n):
        target, op = TARGETS[i % len(TARGETS)], OPS[i // len(TARGETS) % len(OPS)]
        path = folder / f"case{i:04d}.fvl"
        if target == "(zip)":
            path.write_bytes(_mutate(model, op, rng))
        else:
            changed = {**members, target: _mutate(members[target], op, rng)}
            model_files.write_members(path, changed, rehash=target != "manifest.json")
        out.append((f"{op} {target}", path))
    return out


def load_in_children(paths: list[Path], folder: Path, timeout: float = 300) -> list[str]:
    """The outcome of loading each path, in child processes; a case that killed or hung its child
    is "crash <returncode>" / "hang", and the next child goes on after it."""
    listing = folder / "paths.json"
    listing.write_text(json.dumps([str(p) for p in paths]))
    progress = folder / "progress.log"
    outcomes: dict[int, str] = {}
    start = 0
    while start < len(paths):
        try:
            proc = subprocess.run([sys.executable, "-c", CHILD, str(listing), str(progress), str(start)],
                                  capture_output=True, text=True, timeout=timeout)
            died = f"crash {proc.returncode}" if proc.returncode else None
        except subprocess.TimeoutExpired:
            died = "hang"
        started = None
        for line in progress.read_text().splitlines():
            word, index, *rest = line.split(" ", 2)
            if word == "start":
                started = int(index)
            else:
                outcomes[int(index)] = rest[0]
        if died is None:
            break
        assert started is not None and started not in outcomes, f"the child died before any case: {died}"
        outcomes[started] = died
        start = started + 1
    return [outcomes.get(i, "never run") for i in range(len(paths))]


def _check(outcomes: list[str], what: list[str]) -> dict[str, int]:
    bad = [f"{w}: {o}" for w, o in zip(what, outcomes) if not (o == "ok" or o.startswith("error named 2 "))]
    assert not bad, f"{len(bad)} of {len(outcomes)} cases neither loaded nor raised ModelFormatError:\n" + \
        "\n".join(bad[:20])
    tally = {"ok": sum(o == "ok" for o in outcomes), "error": sum(o.startswith("error") for o in outcomes)}
    assert tally["error"] > len(outcomes) // 2  # the damage was noticed, mostly (the hashes do not give it away)
    return tally


def _fuzz(tmp_path: Path, vgg16_path: Path, seed: int, n: int) -> None:
    made = cases(model_files.tiny_model_bytes(), tmp_path, seed, n)
    outcomes = load_in_children([p for _, p in made], tmp_path)
    print(_check(outcomes, [w for w, _ in made]))


def test_fuzz_sample(tmp_path: Path, vgg16_path: Path) -> None:
    _fuzz(tmp_path, vgg16_path, seed=17, n=144)


@pytest.mark.slow
def test_fuzz_many(tmp_path: Path, vgg16_path: Path) -> None:
    _fuzz(tmp_path, vgg16_path, seed=1017, n=480)


def test_a_crashing_child_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness itself: a case that kills its process is reported as a crash, and the cases after
    it still run (so the fuzz tests above can fail on a signal)."""
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"c{i}.fvl")
        paths[-1].write_bytes(b"not a model")
    bomb = tmp_path / "sitecustomize.py"  # makes fastvlad.load(c1) die by SIGSEGV in the child
    bomb.write_text("import os, signal, fastvlad\n_load = fastvlad.load\n"
                    "def load(p):\n    if p.endswith('c1.fvl'):\n        os.kill(os.getpid(), signal.SIGSEGV)\n"
                    "    return _load(p)\nfastvlad.load = load\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    outcomes = load_in_children(paths, tmp_path)
    assert outcomes[0].startswith("error named 2") and outcomes[2].startswith("error named 2")
    assert outcomes[1] == "crash -11"
