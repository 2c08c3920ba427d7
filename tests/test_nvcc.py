"""Every CUDA kernel compiles with nvcc, so syntax and type errors fail without a GPU.

NVRTC (what ``cupy.RawModule`` uses at run time) and nvcc share the front end; the text
compiled here is what NVRTC gets (``fastvlad.kernels.source``: local headers inlined, no CUDA
headers), so a clean nvcc build with all warnings as errors is a good proxy.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

KERNELS = sorted((Path(__file__).resolve().parents[1] / "kernels").glob("*.cu"))
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) is not on PATH")


def test_kernels_exist() -> None:
    assert {p.stem for p in KERNELS} >= {"gather", "assign", "vlad"}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("kernel", KERNELS, ids=lambda p: p.stem)
def test_compiles(kernel: Path, arch: str, tmp_path: Path) -> None:
    """The text NVRTC gets at run time (local headers inlined, no include path) compiles cleanly."""
    from fastvlad.kernels import source

    inlined = tmp_path / kernel.name
    inlined.write_text(source(kernel.stem))
    assert "#include" not in inlined.read_text()
    ptx = tmp_path / f"{kernel.stem}.ptx"
    cmd = [str(NVCC), "--ptx", f"-arch={arch}", "-std=c++17", "-Werror", "all-warnings", str(inlined), "-o", str(ptx)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    text = ptx.read_text()
    # The extern "C" entry points the launchers in fastvlad/_cuda.py look up by name.
    for suffix in ("f32", "f16"):
        name = {"gather": "gather", "assign": "argmin_rows", "vlad": "residual_sums"}.get(kernel.stem)
        if name:
            assert f".entry {name}_{suffix}(" in text


def test_gather_has_no_fma(tmp_path: Path) -> None:
    """The gather must round like the CPU kernels: no contraction of its products into FMAs."""
    kernel = next(p for p in KERNELS if p.stem == "gather")
    ptx = tmp_path / "gather.ptx"
    subprocess.run([str(NVCC), "--ptx", "-arch=sm_90", str(kernel), "-o", str(ptx)], check=True, timeout=300)
    assert "fma." not in ptx.read_text()
