"""Atomic file writes: readers (and a crash) never see half a file at the target path."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import FastVLADError


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], None], mode: int = 0o644) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync, then rename it over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        os.fchmod(fd, mode)  # mkstemp's 0600 would lock others out of shared folders
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FastVLADError(f"{target}: no space left on the device while writing; free some space") from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """``write_atomic`` for a bytes payload."""
    return write_atomic(path, lambda f: f.write(data) and None)
