"""One tiny fitted model per test process, shared by the test modules that only use it."""

from __future__ import annotations

import functools

import numpy as np

from fastvlad import demo
from fastvlad.estimator import FastVLAD

from .conftest import small_model_params


@functools.lru_cache(maxsize=1)
def demo_images() -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """24 images (6 per class) at 64×64, and their labels."""
    images, labels = demo.make_dataset(6, size=64, random_state=0)
    return tuple(images), labels


@functools.lru_cache(maxsize=1)
def fitted() -> FastVLAD:
    """``small_model_params`` fitted on ``demo_images`` (seconds). Do not modify it in tests:
    ``set_params`` on a ``sklearn.base.clone`` of it, or copy ``fitted_copy()``."""
    images, labels = demo_images()
    return FastVLAD(**small_model_params()).fit(list(images), labels)


def fitted_copy(**params: object) -> FastVLAD:
    """A shallow copy of ``fitted()`` (sharing its codebook and booster) with other parameters."""
    import copy

    model = copy.copy(fitted())
    return model.set_params(**params)
