"""CUDA C sources of fastvlad's GPU kernels, shipped in the wheel as ``fastvlad.kernels``."""

from __future__ import annotations

import re
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
_LOCAL_INCLUDE = re.compile(r'^#include "([\w.]+\.cuh)"$', re.MULTILINE)


def source(name: str) -> str:
    """Text of ``kernels/<name>.cu`` with its local ``#include "x.cuh"`` lines inlined, so that
    NVRTC (``cupy.RawModule``) compiles it without an include path."""
    text = (KERNEL_DIR / f"{name}.cu").read_text()
    return _LOCAL_INCLUDE.sub(lambda m: (KERNEL_DIR / m.group(1)).read_text(), text)
