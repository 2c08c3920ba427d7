"""CUDA C sources of fastvlad's GPU kernels, shipped in the wheel as ``fastvlad.kernels``."""

from __future__ import annotations

from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent


def source(name: str) -> str:
    """Text of ``kernels/<name>.cu``."""
    return (KERNEL_DIR / f"{name}.cu").read_text()
