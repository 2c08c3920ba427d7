"""The Numba kernels index no element out of range: run under ``NUMBA_BOUNDSCHECK=1`` (a fresh
process and JIT cache), an out-of-range read raises instead of passing silently."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import numpy as np
    from fastvlad import codebook, hypercolumn, vlad
    rng = np.random.default_rng(0)
    taps = [rng.random((2, 8, 8, 3), dtype=np.float32), rng.random((2, 4, 4, 5), dtype=np.float32)]
    points = rng.integers(0, 8, (2, 30, 2)).astype(np.int32)
    x = hypercolumn.gather(taps, points)
    centres = x.reshape(-1, 8)[:4].copy()
    labels = codebook.nearest_from_taps(taps, points, centres, gathered=x[..., :3]).reshape(2, 30)
    labels[0, :] = 0  # empty centres in image 0
    fused = vlad.encode_from_taps(taps, points, labels, centres, gathered=x[..., :3])
    assert np.array_equal(vlad.encode(x, labels, centres), fused)  # the hypercolumn-only path (no taps)
    print("in bounds")
""")


def test_kernels_stay_in_bounds(tmp_path: Path) -> None:
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "in bounds" in run.stdout, run.stderr[-3000:]
