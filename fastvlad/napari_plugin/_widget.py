"""The napari widget: classify the micrograph of an image layer with a saved model (npe2
autogenerates the form from ``classify_micrograph``'s signature)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari
import numpy as np

from .layers import classify, layer_data


def classify_micrograph(image: napari.layers.Image, model_file: Path = Path("model.fvl"),
                        show_codewords: bool = True) -> list[napari.types.LayerDataTuple]:
    """The per-tile class map and, with ``show_codewords``, every sampled pixel coloured by its codeword."""
    from ..estimator import load

    model = load(model_file)
    source = _source(image)
    result = classify(model, source, image.metadata.get("pixel_size_nm"))
    return layer_data(result, image, model_file, codewords=show_codewords)


def _source(image: napari.layers.Image) -> Any:
    """The layer's file when napari knows it (so its pixel size is read from it), else its pixels."""
    path = image.metadata.get("path") or getattr(getattr(image, "source", None), "path", None)
    return path if path else np.asarray(image.data)
