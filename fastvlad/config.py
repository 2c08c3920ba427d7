"""Tunables and paths in one place (block sizes, batch sizes, cache folder). Each is read when it is
used, so setting one (``fastvlad.config.CPU_BATCH_SIZE = 4``) takes effect from the next call."""

from __future__ import annotations

import os
from pathlib import Path

#: Images per backbone call on the CPU; 8 keeps the five taps of a 224² batch near 200 MB.
CPU_BATCH_SIZE = 8
#: Images per backbone call on the GPU (halved automatically on out-of-memory).
GPU_BATCH_SIZE = 64
#: Threads decoding images ahead of the GPU. One thread decodes and resizes about 400 demo images
#: per second (Pillow and NumPy release the GIL: 2 threads gave 1.5-1.7x on 2 cores), far below
#: what a GPU runs VGG16 at; on the CPU one thread keeps ahead of the CNN.
GPU_DECODE_THREADS = 8
#: Rows of the point matrix per GEMM block in assignment; 2048×1472 float32 = 12 MB.
ASSIGN_BLOCK_ROWS = 2048
#: Points kept in memory for fitting the codebook (50 000 × 1472 float32 ≈ 294 MB).
CODEBOOK_MAX_POINTS = 50_000
#: Rows of the codebook sample the hypercolumn PCA's covariance is computed from (1472² GEMM: ~1 s).
PCA_MAX_POINTS = 20_000
#: Cost of one bilinearly gathered value in multiply-adds, for choosing project-first vs gather-first per tap.
GATHER_COST = 8
#: How far beyond the training images' ``input_scale`` range (either way) an image may reach the
#: network before ``predict`` says it is seen at another scale: the zoomed training copies cover 1.2×.
SCALE_TOLERANCE = 1.25
#: Largest image, in pixels, that the decoder accepts (decompression-bomb guard).
MAX_IMAGE_PIXELS = 1 << 28
#: Largest network input, in pixels (image_size, or an image at native size): VGG16's five taps
#: alone are 122 floats = 488 bytes per input pixel, so one 4096² image needs over 8 GB.
MAX_INPUT_PIXELS = 4096 * 4096
#: Most augmented copies per training image (``augment``): each is one more CNN pass per image, and
#: their list is built before the first pass, so an absurd count would fill the memory first.
MAX_AUGMENT = 100
#: Most classes a model holds: fit refuses more, and a model file naming more is refused as edited
#: (a bound for a hostile config.json; XGBoost has none).
MAX_CLASSES = 100_000
#: Most example patches per codeword that ``explain`` draws (``--patches``): a (k, n, 32, 32, 3) grid.
MAX_PATCHES = 100
#: Largest seed (``random_state``, ``--seed``): scikit-learn's splitters and NumPy's legacy
#: ``RandomState`` take 0 to 2**32 - 1, and XGBoost's seed no more than a signed 64-bit int.
MAX_SEED = 2**32 - 1


def usable_cores() -> int:
    """Cores this process may run on (its affinity), not the machine's total."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cache_dir() -> Path:
    """Folder for converted backbones: ``$FASTVLAD_HOME`` or the user cache dir.

    ``ParameterError`` when it is a file or below one: checked here, the one way every caller gets the
    folder, so the message names the setting instead of mkdir's ``[Errno 17] File exists``. A folder
    that is not writable passes: a read-only shared cache that already holds the graphs serves."""
    problem = cache_problem()
    if problem is not None:
        from .errors import ParameterError

        raise ParameterError(problem)
    return cache_location()


def cache_location() -> Path:
    """Where the cache folder is set to be (``$FASTVLAD_HOME`` or the user cache dir), unchecked."""
    env = os.environ.get("FASTVLAD_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("fastvlad"))


def cache_problem(writable: bool = False) -> str | None:
    """Why the cache folder cannot be used, in one line naming its setting and the fix; None when it
    can. ``writable``: also when no file can be made in it (or in the folder it would be made in)."""
    path = cache_location()
    problem = folder_problem(path) or (write_problem(path) if writable else None)
    if problem is None:
        return None
    if os.environ.get("FASTVLAD_HOME"):
        return f"FASTVLAD_HOME={path}: {problem}; point it at a folder (or unset it for the user cache folder)"
    return f"the user cache folder {path}: {problem}; set FASTVLAD_HOME to a folder to use instead"


def folder_problem(path: Path) -> str | None:
    """Why ``path`` can neither be a folder nor be made one (it, or a folder above it, is a file), or None."""
    import stat

    for at in (path, *path.parents):
        try:
            mode = at.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue  # missing: mkdir makes it, if what is above it is a folder
        except OSError:
            return None  # not readable (permissions): creating or reading the folder says why
        if stat.S_ISDIR(mode):
            return None
        kind = "a file" if stat.S_ISREG(mode) else "a device, pipe or socket"
        return f"is {kind}, not a folder" if at == path else f"is below {at}, which is {kind}, not a folder"
    return None


def write_problem(path: Path) -> str | None:
    """Why no file can be made in the folder ``path`` (or, while it is missing, in the nearest folder
    above it that exists, where it would be made), or None."""
    at = next((p for p in (path, *path.parents) if os.path.isdir(p)), None)  # isdir: False, not raised, on EACCES
    if at is None or os.access(at, os.W_OK | os.X_OK):
        return None
    return "is not writable" if at == path else f"cannot be made: {at} is not writable"
