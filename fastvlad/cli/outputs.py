"""Where the commands write: ``-o -`` for standard output, and never over what they read.

``fastvlad predict model.fvl DATA -o model.fvl`` used to replace the model with a CSV; every
command that writes ``-o`` now checks it against its inputs first (``WriteError``, exit 2).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from .._files import encoded
from ..errors import WriteError

#: ``-o -``: write to standard output (CSV outputs only).
STDOUT = "-"
_CLOSED = "standard output is closed, so -o - has nowhere to write; run with it open, or give a file path with -o"


def is_stdout(path: Path | str | None) -> bool:
    return path is not None and str(path) == STDOUT


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file, or None: the same file under any name or link."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def refuse_inputs(outputs: Iterable[Path | None], inputs: Iterable[Path], what: str = "data") -> None:
    """``WriteError`` when an output file is one of the ``inputs`` (the model or the data being read).

    Compared by file identity, so a relative path, an absolute one or a link to the same file
    are all caught. Outputs that do not exist yet cannot be an input and cost one stat each."""
    targets = {}
    for out in outputs:
        if out is None or is_stdout(out):
            continue
        ident = _identity(Path(out))
        if ident is not None:
            targets[ident] = Path(out)
    if not targets:
        return
    for src in inputs:
        ident = _identity(Path(src))
        if ident in targets:
            raise WriteError(f"refusing to write {targets[ident]}: it is {what} this command reads ({src}); "
                             "choose another output path")


def refuse_inside_dataset(folder: Path | None, data: Path, option: str) -> None:
    """``WriteError`` when an output ``folder`` is a dataset folder ``data`` or lies inside it: the
    images written there would be read as the dataset's (a new class) the next time it is used."""
    if folder is None or not data.is_dir():
        return  # a CSV manifest lists its images: files written beside them are not read
    root, target = data.resolve(), folder.resolve()
    if target == root or root in target.parents:
        raise WriteError(f"{option} {folder} is inside the dataset folder {data}: its PNG files would be read as "
                         "images of the dataset next time; choose a folder outside it")


def dataset_files(data: Path, paths: Iterable[Path]) -> list[Path]:
    """The files a dataset argument reads: the CSV manifest (given or inside the folder) and every image."""
    files = [data] if data.is_file() else [data / "manifest.csv"]
    return [*files, *paths]


def write_text(output: Path, text: str) -> None:
    """``text`` to standard output for ``-o -``, else atomically to ``output`` (both ``encoded``)."""
    if is_stdout(output):
        _write_stdout(text)
        return
    from .._files import write_bytes_atomic

    write_bytes_atomic(output, encoded(text))


def check_stdout() -> None:
    """``WriteError`` now, before the work, when standard output is closed (``-o -`` could not be written)."""
    stream = sys.stdout
    if stream is None or stream.closed:  # None: started with standard output closed (``>&-``)
        raise WriteError(_CLOSED)


def _write_stdout(text: str) -> None:
    """``text`` on standard output; ``WriteError`` when it is closed or refuses the data."""
    check_stdout()
    stream = sys.stdout
    try:
        _write_stream(stream, text)
    except BrokenPipeError:
        raise  # the reader left (``| head``): Click exits quietly, as a pipeline expects
    except ValueError:
        if not stream.closed:
            raise
        raise WriteError(_CLOSED) from None
    except OSError as exc:
        if exc.errno == errno.EBADF:  # descriptor 1 closed after the start
            raise WriteError(_CLOSED) from None
        raise WriteError(f"cannot write to standard output (-o -): {exc.strerror or exc}; give a file path "
                         "with -o") from None


def _write_stream(stream: TextIO, text: str) -> None:
    """``text`` on ``stream``, ``encoded`` like a file (a text stream's own encoding may refuse a
    file name that is not UTF-8)."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None:  # a text-only stream (io.StringIO): it takes any str
        stream.write(text)
    else:
        stream.flush()  # what was written as text comes first
        buffer.write(encoded(text))
        buffer.flush()
    stream.flush()


def message(text: str, output: Path | None) -> None:
    """A status line: on standard error when standard output carries the data (``-o -``)."""
    stream = sys.stderr if is_stdout(output) else sys.stdout
    stream.write(text + "\n")
    stream.flush()


__all__ = ["STDOUT", "check_stdout", "dataset_files", "encoded", "is_stdout", "message", "refuse_inputs", "refuse_inside_dataset",
           "write_text"]
