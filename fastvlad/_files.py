"""Atomic file writes: readers (and a crash) never see half a file at the target path.

The data goes to a hidden temp file beside the target, ``.<name>.<host>.<pid>.<random>.part``,
is fsynced, then renamed over the target (atomic on POSIX within one folder). An exception,
Ctrl-C or SIGTERM removes the temp file; SIGKILL or a power cut can leave it behind, never a
partial target. Leftovers of dead processes on this host are removed by the next write to
the same target; nothing reads ``.part`` files.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import WriteError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], object], mode: int = 0o644) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync, then rename it over ``path``.

    Raises ``WriteError`` (naming the path, the problem and the fix) on any OS error.
    """
    target = Path(path)
    with kept_if_used(target.parent):
        return _write_atomic(target, write, mode)


def _write_atomic(target: Path, write: Callable[[BinaryIO], object], mode: int) -> Path:
    fd, tmp = _temp_beside(target)
    try:
        os.fchmod(fd, mode)  # mkstemp's 0600 would lock others out of shared folders
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        check_replaceable(target)  # again, just before: the check before the work was minutes ago
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(target, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _remove_stale_parts(target)
    return target


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail now, not after hours of work, if ``path`` cannot be written: ``WriteError``."""
    target = Path(path)
    if os.path.isdir(target):  # os.path: False, not an OSError, for a name too long for the file system
        raise _write_error(target, IsADirectoryError(errno.EISDIR, "is a folder"))
    check_replaceable(target)
    with kept_if_used(target.parent):  # the probe's folders are made again when the file is written
        fd, probe = _temp_beside(target)
        os.close(fd)
        os.unlink(probe)
    return target


def check_replaceable(path: str | os.PathLike[str]) -> None:
    """``WriteError`` when ``path`` exists and is neither a regular file nor a folder.

    A write renames a new file over the target, so a device, pipe or socket there would be
    replaced (as root, /dev/null itself). Links are followed: a link to a device is refused too."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return  # missing (or not statable): the write itself says why it cannot be made
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise WriteError(f"{path} is not a regular file (a device, pipe or socket): fastvlad writes a file by "
                         "replacing it; give a file path (for standard output: -o -)")


@contextmanager
def kept_if_used(folder: Path) -> Iterator[None]:
    """Of the folders missing on the way to ``folder`` now, remove those the block left empty: a
    check before the work, or a write that failed, leaves no empty folder behind."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        yield
    finally:
        for made in missing:  # innermost first; one still holding a file stays, and so do its parents
            try:
                made.rmdir()
            except FileNotFoundError:
                continue  # never made (a mkdir below it failed, e.g. a name too long)
            except OSError as exc:
                if exc.errno != errno.ENAMETOOLONG:
                    break


def _temp_beside(target: Path) -> tuple[int, str]:
    """A new temp file in ``target``'s folder (made if missing), named as ``_remove_stale_parts``
    expects: (fd, path). ``WriteError`` on any OS error."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=target.parent, prefix=f"{_part_prefix(target)}{os.getpid()}.", suffix=".part")
    except OSError as exc:
        raise _write_error(target, exc) from None


def encoded(text: str) -> bytes:
    """``text`` as UTF-8, a file name that is not UTF-8 as its own bytes.

    Python reads such a name (bytes of another system's encoding) with each undecodable byte as
    a lone surrogate (PEP 383), which plain ``encode()`` refuses after all the work is done.
    "surrogateescape" writes the original bytes back, so a CSV's path names the file on disk,
    as ``ls > list.txt`` would; read it back with ``errors="surrogateescape"`` (or as bytes)."""
    return text.encode("utf-8", "surrogateescape")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """``write_atomic`` for a bytes payload."""
    def write(f: BinaryIO) -> None:
        f.write(data)

    return write_atomic(path, write)


def _write_error(target: Path, exc: OSError) -> WriteError:
    if exc.errno in _NO_SPACE:
        return WriteError(f"{target}: no space left on the device while writing; free some space "
                          "or write to another disk (nothing was written at this path)")
    if exc.errno == errno.ENAMETOOLONG:
        return WriteError(f"cannot write {target}: a name in the path is longer than the file system allows; "
                          "choose a shorter one")
    if os.path.isdir(target):
        return WriteError(f"{target} is a folder; give a file name to write to")
    why = exc.strerror or str(exc)
    return WriteError(f"cannot write {target}: {why}; check that its folder exists and is writable, "
                      "or choose another path")


def _part_prefix(target: Path) -> str:
    # The host name keeps a writer on another machine (shared folder) from judging our pids.
    host = socket.gethostname().replace(".", "_") or "host"
    return f".{target.name}.{host}."


def _remove_stale_parts(target: Path) -> None:
    """Delete temp files that killed writers of ``target`` on this host left behind."""
    prefix = _part_prefix(target)
    try:
        leftovers = [p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".part")]
    except OSError:
        return
    for p in leftovers:
        pid = p.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: exists, owned by someone else
        return True
    return True


# -- folders ---------------------------------------------------------------------------------------
def staging_folder(folder: str | os.PathLike[str]) -> Path:
    """A new hidden folder on ``folder``'s file system (inside it when it exists, else beside it,
    made if missing), so that moving its files into ``folder`` is a rename. ``WriteError`` when it
    cannot be made."""
    folder = Path(folder)
    where = folder if folder.is_dir() else folder.parent
    # not tempfile.mkdtemp: its 0700 would become a new folder's and lock others out of it
    staging = where / f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    try:
        where.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        return staging
    except OSError as exc:
        raise WriteError(f"cannot write into {folder}: {exc.strerror or exc}; check that its folder is "
                         "writable, or choose another one") from None


def publish_folder(staging: Path, folder: str | os.PathLike[str], last: str | None = None) -> None:
    """Move the files of ``staging`` into ``folder``: one rename for a new folder; into an existing
    one file by file, the one named ``last`` last (the other files there are kept)."""
    folder = Path(folder)
    try:
        if not folder.exists():
            os.rename(staging, folder)
            return
        moved = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name == last)
        for src in moved:  # all checked before the first move: a refusal leaves ``folder`` as it was
            check_replaceable(folder / src.relative_to(staging))
        for src in moved:
            dst = folder / src.relative_to(staging)
            dst.parent.mkdir(exist_ok=True)
            os.replace(src, dst)
    except OSError as exc:
        raise WriteError(f"cannot move the files into {folder}: {exc.strerror or exc}") from None


@contextmanager
def folder_atomic(folder: str | os.PathLike[str], last: str | None = None) -> Iterator[Path]:
    """Write a folder's files into the staging folder this yields; they are moved into ``folder``
    (``publish_folder``) only when the block ends without an error, so a failure leaves ``folder``
    as it was. The staging folder is always removed."""
    folder = Path(folder)
    with kept_if_used(folder.parent):
        staging = staging_folder(folder)
        try:
            yield staging
            publish_folder(staging, folder, last)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def check_stageable(folder: str | os.PathLike[str]) -> None:
    """``WriteError`` now, before the work, when ``folder_atomic`` could not stage ``folder``; it
    leaves nothing behind."""
    folder = Path(folder)
    with kept_if_used(folder.parent):
        staging_folder(folder).rmdir()
