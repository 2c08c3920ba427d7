"""The exceptions fastvlad raises on bad input, each naming the culprit and the fix.

Every error the library raises on purpose is a ``FastVLADError``; the CLI prints its
message (no traceback unless ``--verbose``) and exits with ``exit_code``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sklearn.exceptions import NotFittedError as SklearnNotFittedError

_SKIP_OFFERED: ContextVar[bool] = ContextVar("fastvlad_skip_offered", default=True)


class FastVLADError(Exception):
    """Base class: something the user can fix. The message names what and how."""

    exit_code = 2


class ParameterError(FastVLADError, ValueError):
    """A parameter is out of range or of the wrong kind (checked before heavy work)."""


def skip_advice(text: str) -> str:
    """``text``, advice to skip unreadable images with ``on_error='skip'``, or "" inside
    ``without_skip_advice`` (work that has no such option, a calibration set or a benchmark, or that
    is skipping them already)."""
    return text if _SKIP_OFFERED.get() else ""


@contextmanager
def without_skip_advice() -> Iterator[None]:
    """Errors raised inside leave out ``skip_advice``."""
    token = _SKIP_OFFERED.set(False)
    try:
        yield
    finally:
        _SKIP_OFFERED.reset(token)


def drop_skip_advice() -> None:
    """``without_skip_advice`` for the rest of the current context (run it in a copy:
    ``contextvars.copy_context().run(drop_skip_advice)``)."""
    _SKIP_OFFERED.set(False)


def printable(text: str, keep: str = "") -> str:
    """``text`` with its control characters but those in ``keep`` escapes (``\\n``, ``\\x1b``): a
    newline in a CSV's path cannot break a message's line, nor an escape sequence restyle the terminal."""
    return "".join(c if c in keep or unicodedata.category(c) != "Cc" else repr(c)[1:-1] for c in text)


class ImageReadError(FastVLADError):
    """An image file (or array) cannot be decoded or used."""

    def __init__(self, source: object, problem: str, fix: str = "") -> None:
        self.source = str(source)
        self.problem = problem
        msg = f"{printable(self.source)}: {problem}"
        super().__init__(f"{msg}. {fix}" if fix else msg)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # The default would call ImageReadError(message) and lose the fields (pickled by
        # worker processes and by copy).
        return (_rebuild_image_error, (self.source, self.problem, str(self)))


def _rebuild_image_error(source: str, problem: str, message: str) -> ImageReadError:
    err = ImageReadError(source, problem)
    err.args = (message,)
    return err


class InvalidDatasetError(FastVLADError, ValueError):
    """A dataset folder or manifest is empty, inconsistent or unreadable (a ``ValueError``, as
    scikit-learn raises for an empty X or a single class)."""


class ModelFormatError(FastVLADError):
    """A saved model file is missing, corrupt, tampered with or of another version."""


class BackboneError(FastVLADError):
    """The CNN backbone cannot be obtained, verified or run."""


class DeviceUnavailableError(FastVLADError):
    """``device="cuda"`` was asked for but CuPy, the CUDA provider or a GPU is missing."""


class NotFittedError(FastVLADError, SklearnNotFittedError):
    """An estimator method that needs ``fit`` was called before it: scikit-learn's ``NotFittedError``
    too (a ``ValueError`` and ``AttributeError``), so code written for scikit-learn catches it."""


class DistributedError(FastVLADError):
    """A Dask cluster cannot be reached or used, or returned an image missing or twice."""


class WriteError(FastVLADError):
    """An output file (model, predictions, codes, cache) cannot be written."""


class MissingDependencyError(FastVLADError, ImportError):
    """A package fastvlad needs for what was asked is not installed (the message says which and how)."""


def in_one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (ONNX Runtime's span several), or its type's name when it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__


# Type names and message fragments of out-of-memory errors from CuPy (allocator, cuBLAS,
# runtime) and ONNX Runtime's CUDA provider (BFC arena, CUDA calls). Matched as text
# because ONNX Runtime reports them as generic exceptions, and BackboneError wraps them.
_OOM_TYPES = ("OutOfMemoryError",)
_OOM_TEXT = ("out of memory", "cudaErrorMemoryAllocation", "CUDA_ERROR_OUT_OF_MEMORY",
             "CUBLAS_STATUS_ALLOC_FAILED", "Failed to allocate memory", "cudnn_status_alloc_failed")


def is_gpu_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a GPU allocation failure."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ in _OOM_TYPES or any(t.lower() in str(e).lower() for t in _OOM_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False
