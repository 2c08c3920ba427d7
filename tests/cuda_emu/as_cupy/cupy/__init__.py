"""The emulator's CuPy stand-in, importable as ``cupy``: with this folder on PYTHONPATH the tests
marked ``gpu`` (which otherwise run only on a GPU) run against the host emulator. Set
FASTVLAD_EMULATOR_LIB to a built ``libcudaemu.so`` to skip the build (tests/cuda_emu/build.py)."""

import os
import sys
import tempfile
from pathlib import Path

from tests.cuda_emu import build, fakecupy

_lib = os.environ.get("FASTVLAD_EMULATOR_LIB") or build.build(Path(tempfile.mkdtemp(prefix="cuda_emu")))
sys.modules[__name__] = fakecupy.load(Path(_lib))
