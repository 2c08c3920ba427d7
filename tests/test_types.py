"""The package and the benchmarks type-check (mypy, the settings of pyproject.toml).

The benchmarks are not run by the default tests, so a changed signature in the library rots them
unseen: three did when ``Encoder.codes`` gained its ``grid`` argument (``bench_kernels``,
``bench_precision`` and the GPU check's ``gpu_kernels``), found only when they were next run.
mypy checks every call they make against the library as it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_and_the_benchmarks_type_check(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("*.py"))
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), "fastvlad", *files],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
