"""fastvlad: VLAD codes of CNN hypercolumns for microscopy image classification.

Luo, Holm & Wang, "A transfer learning approach for improved classification of carbon
nanomaterials from TEM images", Nanoscale Adv. 2021, 3, 206–213 — as a fast library.
"""

import os as _os

# ONNX Runtime, OpenBLAS and Numba's OpenMP pool take turns on the same cores; idle OpenMP
# threads that spin steal them from the others (measured: assignment 2× slower). Must be set
# before libgomp is loaded, so it happens on import.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._version import __version__  # noqa: E402
from .errors import (  # noqa: E402
    BackboneError,
    DeviceUnavailableError,
    FastVLADError,
    ImageReadError,
    InvalidDatasetError,
    MissingDependencyError,
    ModelFormatError,
    NotFittedError,
    ParameterError,
    WriteError,
)
from .estimator import FastVLAD, load  # noqa: E402

__all__ = [
    "FastVLAD",
    "load",
    "BackboneError",
    "DeviceUnavailableError",
    "FastVLADError",
    "ImageReadError",
    "InvalidDatasetError",
    "MissingDependencyError",
    "ModelFormatError",
    "NotFittedError",
    "ParameterError",
    "WriteError",
    "__version__",
]
