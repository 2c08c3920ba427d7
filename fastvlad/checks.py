"""Input checks with fix-it messages, run before any heavy work."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backends import DEVICES
from .errors import InvalidDatasetError, ParameterError
from .hypercolumn import INTERPOLATION_MODES
from .images import MIN_SIDE, RESAMPLE, ImageSource

ON_ERROR = ("raise", "skip")


def image_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``224`` → (224, 224); ``(H, W)`` as is; ``None`` → native size."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    if len(size) != 2 or min(size) < MIN_SIDE:
        raise ParameterError(f"image_size={size!r}: give one side or (height, width), each ≥ {MIN_SIDE}, or None")
    return (int(size[0]), int(size[1]))


def parameters(est: Any) -> None:
    """Validate an estimator's parameters (ranges, names) before it touches any image."""
    if not 0 < float(est.density) <= 100:
        raise ParameterError(f"density={est.density}: must be in (0, 100] percent (the paper used 10)")
    if int(est.k) < 2:
        raise ParameterError(f"k={est.k}: a codebook needs at least 2 centres (the paper used 100)")
    if est.device not in DEVICES:
        raise ParameterError(f"device={est.device!r} is unknown; use one of {DEVICES}")
    if est.on_error not in ON_ERROR:
        raise ParameterError(f"on_error={est.on_error!r}: use 'raise' or 'skip'")
    if est.interpolation not in INTERPOLATION_MODES:
        raise ParameterError(f"interpolation={est.interpolation!r}: use one of {INTERPOLATION_MODES}")
    if est.resample not in RESAMPLE:
        raise ParameterError(f"resample={est.resample!r}: use one of {RESAMPLE}")
    if int(est.codebook_images) < 1:
        raise ParameterError(f"codebook_images={est.codebook_images}: must be ≥ 1")
    for name in ("n_estimators", "max_depth"):
        if int(getattr(est, name)) < 1:
            raise ParameterError(f"{name}={getattr(est, name)}: must be ≥ 1")
    image_size(est.image_size)
    points = min(int(round(500 * float(est.density))), _pixels(est.image_size))
    if int(est.k) > points * int(est.codebook_images):
        raise ParameterError(f"k={est.k} exceeds the {points * int(est.codebook_images)} points the codebook is "
                             "fitted on; lower k or raise density or codebook_images")


def _pixels(size: int | Sequence[int] | None) -> int:
    s = image_size(size)
    return s[0] * s[1] if s else 1 << 62


def sources(X: Any) -> list[ImageSource]:
    """A list of paths or image arrays; a 3-D/4-D array is a stack of images."""
    if isinstance(X, (str, Path)):
        raise ParameterError(f"X={str(X)!r}: pass a list of images (e.g. [path]), not a single path")
    if isinstance(X, np.ndarray):
        if X.ndim not in (3, 4):
            raise ParameterError(f"X has shape {X.shape}; an array of images must be (n, H, W) or (n, H, W, C)")
        return list(X)
    try:
        items = list(X)
    except TypeError:
        raise ParameterError(f"X of type {type(X).__name__} is not a sequence of images") from None
    if not items:
        raise InvalidDatasetError("X is empty: no images to process")
    for i, item in enumerate(items):
        if not isinstance(item, (str, Path, np.ndarray)):
            raise ParameterError(f"X[{i}] is a {type(item).__name__}; each image must be a path or a NumPy array")
    return items


def sources_and_labels(X: Any, y: Any) -> tuple[list[ImageSource], np.ndarray]:
    """Images and their labels, same length, at least two classes."""
    items = sources(X)
    labels = np.asarray(y)
    if labels.ndim != 1 or len(labels) != len(items):
        raise ParameterError(f"y has shape {labels.shape}; it must be one label per image ({len(items)})")
    enough_classes(np.unique(labels))
    return items, labels


def enough_classes(classes: np.ndarray) -> None:
    if len(classes) < 2:
        raise InvalidDatasetError(f"only one class ({list(classes)}) in the training labels; need at least two")
