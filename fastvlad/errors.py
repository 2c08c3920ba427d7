"""The exceptions fastvlad raises on bad input, each naming the culprit and the fix.

Every error the library raises on purpose is a ``FastVLADError``; the CLI prints its
message (no traceback unless ``--verbose``) and exits with ``exit_code``.
"""

from __future__ import annotations


class FastVLADError(Exception):
    """Base class: something the user can fix. The message names what and how."""

    exit_code = 2


class ParameterError(FastVLADError, ValueError):
    """A parameter is out of range or of the wrong kind (checked before heavy work)."""


class ImageReadError(FastVLADError):
    """An image file (or array) cannot be decoded or used."""

    def __init__(self, source: object, problem: str, fix: str = "") -> None:
        self.source = str(source)
        self.problem = problem
        msg = f"{self.source}: {problem}"
        super().__init__(f"{msg}. {fix}" if fix else msg)


class InvalidDatasetError(FastVLADError):
    """A dataset folder or manifest is empty, inconsistent or unreadable."""


class ModelFormatError(FastVLADError):
    """A saved model file is missing, corrupt, tampered with or of another version."""


class BackboneError(FastVLADError):
    """The CNN backbone cannot be obtained, verified or run."""


class DeviceUnavailableError(FastVLADError):
    """``device="cuda"`` was asked for but CuPy, the CUDA provider or a GPU is missing."""


class NotFittedError(FastVLADError, AttributeError):
    """An estimator method that needs ``fit`` was called before it."""
