"""Tunables and paths in one place (block sizes, batch sizes, cache folder)."""

from __future__ import annotations

import os
from pathlib import Path

#: Images per backbone call on the CPU; 8 keeps the five taps of a 224² batch near 200 MB.
CPU_BATCH_SIZE = 8
#: Images per backbone call on the GPU (halved automatically on out-of-memory).
GPU_BATCH_SIZE = 64
#: Rows of the point matrix per GEMM block in assignment; 2048×1472 float32 = 12 MB.
ASSIGN_BLOCK_ROWS = 2048
#: Points kept in memory for fitting the codebook (50 000 × 1472 float32 ≈ 294 MB).
CODEBOOK_MAX_POINTS = 50_000
#: Largest image, in pixels, that the decoder accepts (decompression-bomb guard).
MAX_IMAGE_PIXELS = 1 << 28


def cache_dir() -> Path:
    """Folder for converted backbones: ``$FASTVLAD_HOME`` or the user cache dir."""
    env = os.environ.get("FASTVLAD_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("fastvlad"))
