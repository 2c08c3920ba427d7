"""The napari plugin's layers (``fastvlad.napari_plugin.layers``), computed without napari: in the
default run, so the class map stays the answer ``predict`` gives (tests/test_napari.py runs the
plugin itself in a viewer when napari is installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastvlad import demo
from fastvlad.napari_plugin import classify, layer_data

from .tiny_model import fitted_copy


def mosaic() -> tuple[np.ndarray, list[str]]:
    """A 192 × 192 micrograph of 3 × 3 demo images (64², the tiny model's input), and their classes."""
    images, labels = demo.make_dataset(3, size=64, random_state=5)
    order = np.argsort(np.arange(len(labels)) % 4, kind="stable")[:9]  # mixed classes
    tiles = [np.asarray(images[i], dtype=np.float32) for i in order]
    rows = [np.concatenate(tiles[r * 3:(r + 1) * 3], axis=1) for r in range(3)]
    return np.clip(np.concatenate(rows), 0, 255).astype(np.uint8), [str(labels[i]) for i in order]


def test_layers_map_tiles_and_points_onto_the_micrograph() -> None:
    image, _ = mosaic()
    model = fitted_copy(tile=(64, 64), tile_stride=48, tta=1)  # the tiles' flips too, as predict does
    result = classify(model, image)
    assert result.class_map.shape == image.shape and result.class_map.min() >= 1  # every pixel under a tile
    assert result.tile_proba.shape == (16, 4) and result.boxes[-1].tolist() == [128, 128, 64, 64]
    np.testing.assert_allclose(result.proba, model.predict_proba([image])[0], rtol=1e-6)
    last = int(result.tile_proba[-1].argmax()) + 1  # the last tile painted wins where tiles overlap
    assert (result.class_map[-16:, -16:] == last).all()
    assert len(result.points) == 16 * 50 and result.codewords.max() < 8
    assert result.points.min() >= -0.5 and result.points.max() <= 191.5

    class Layer:  # what layer_data reads of a napari image layer
        scale, translate = (1.0, 2.0, 2.0), (0.0, 5.0, 7.0)

    shown = layer_data(result, Layer(), Path("m.fvl"))
    assert [kind for *_, kind in shown] == ["labels", "points"]
    assert all(kw["scale"] == (2.0, 2.0) and kw["translate"] == (5.0, 7.0) for _, kw, _ in shown)
    hidden = layer_data(result, Layer(), Path("m.fvl"), codewords=False)  # the widget's "show codewords" unticked
    assert [kind for *_, kind in hidden] == ["labels"] and hidden[0][0] is result.class_map
