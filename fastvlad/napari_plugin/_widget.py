"""The napari widget: classify the micrograph of an image layer with a saved model (npe2
autogenerates the form from ``classify_micrograph``'s signature)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari
import numpy as np

from .layers import MicrographLayers, classify


def classify_micrograph(image: napari.layers.Image, model_file: Path = Path("model.fvl"),
                        show_codewords: bool = True) -> list[napari.types.LayerDataTuple]:
    """The per-tile class map and, with ``show_codewords``, every sampled pixel coloured by its codeword."""
    from ..estimator import load

    model = load(model_file)
    source = _source(image)
    result = classify(model, source, image.metadata.get("pixel_size_nm"))
    return layer_data(result, image, model_file)


def _source(image: napari.layers.Image) -> Any:
    """The layer's file when napari knows it (so its pixel size is read from it), else its pixels."""
    path = image.metadata.get("path") or getattr(getattr(image, "source", None), "path", None)
    return path if path else np.asarray(image.data)


def layer_data(result: MicrographLayers, image: Any, model_file: Path) -> list[napari.types.LayerDataTuple]:
    """The result as napari layers, aligned with ``image`` (same scale and translation)."""
    place = {"scale": tuple(image.scale)[-2:], "translate": tuple(image.translate)[-2:]}
    answer = ", ".join(f"{c} {p:.2f}" for c, p in zip(result.classes, result.proba))
    classes = {"label": list(range(len(result.classes) + 1)), "class": ["(no tile)", *result.classes]}
    layers: list[napari.types.LayerDataTuple] = [
        (result.class_map, {"name": f"fastvlad classes ({Path(model_file).name})", "opacity": 0.4,
                            "features": classes, "metadata": {"classes": result.classes, "answer": answer,
                                                               "tile_proba": result.tile_proba}, **place}, "labels")]
    if len(result.points):
        layers.append((result.points, {"name": "fastvlad codewords", "size": 3, "border_width": 0,
                                       "features": {"codeword": result.codewords}, "face_color": "codeword",
                                       "face_colormap": "turbo", **place}, "points"))
    return layers
