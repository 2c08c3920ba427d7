"""What the napari layers show, computed without napari: a micrograph's per-tile class map and the
codeword of every sampled pixel, in the micrograph file's own pixels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import images, tiling
from ..encoder import Encoder
from ..errors import ImageReadError

if TYPE_CHECKING:
    import napari


@dataclass
class MicrographLayers:
    """One micrograph through a model, for display over the image as stored."""

    classes: list[str]
    class_map: np.ndarray  # (H, W) int32: 1 + class index of the tile covering each pixel, 0 where none
    tile_proba: np.ndarray  # (n_tiles, C) float32
    boxes: np.ndarray  # (n_tiles, 4) float64 (top, left, height, width) in the file's pixels
    points: np.ndarray  # (N, 2) float32 (row, col) of every sampled pixel, in the file's pixels
    codewords: np.ndarray  # (N,) int32: the codeword (k-means centre) each point went to
    proba: np.ndarray  # (C,) float32 the micrograph's answer: the mean of its tiles' probabilities
    pixel_size_nm: float | None  # the file's (or the given) pixel size

    @property
    def predicted(self) -> str:
        return self.classes[int(np.nanargmax(self.proba))]


def classify(model: Any, source: str | Path | np.ndarray, pixel_size_nm: float | None = None) -> MicrographLayers:
    """Run a fitted ``FastVLAD`` on one micrograph (a path or an array (H, W[, C])) and map its tiles
    and sampled points back onto the micrograph's pixels (one CNN pass per tile, and one per flip of
    each tile with ``tta``: the tiles' probabilities are ``predict_proba``'s)."""
    micrograph = tiling.Micrograph(source, pixel_size_nm)
    settings = tiling.Settings.of(model)
    raw, px = tiling.read_micrograph(micrograph)
    height, width = raw.shape[:2]
    plan = tiling.plan([micrograph], settings) if settings.active else tiling.Plan([micrograph], np.zeros(1, np.int64), 1)
    classes = [str(c) for c in model.classes_]
    class_map = np.zeros((height, width), np.int32)
    tile_proba = np.full((len(plan.sources), len(classes)), np.nan, np.float32)
    boxes = np.zeros((len(plan.sources), 4))
    points: list[np.ndarray] = []
    codewords: list[np.ndarray] = []
    for enc in Encoder.of(model).encode_batches(plan.sources, keep=True):
        if enc.batch.failed:
            raise enc.batch.failed[0][1]
        proba = model.predict_proba_codes(enc.codes)
        grid_h, grid_w = enc.batch.pixels.shape[2:]
        for j, i in enumerate(enc.batch.indices):
            top, left, h, w = _box(plan.sources[i], height, width)
            boxes[i] = top, left, h, w
            tile_proba[i] = proba[j]
            grid = enc.batch.points[j].astype(np.float64)  # type: ignore[index]  # (S, 2) in the network input
            # network input pixel → tile (its centre) → the file's pixels
            rows = top + (grid[:, 0] + 0.5) * h / grid_h - 0.5
            cols = left + (grid[:, 1] + 0.5) * w / grid_w - 0.5
            points.append(np.stack([rows, cols], axis=1).astype(np.float32))
            codewords.append(enc.labels[j].astype(np.int32))  # type: ignore[index]
    tile_proba = model.mean_over_views(plan.sources, tile_proba)  # as predict does: each tile's mean over its views
    if np.isnan(tile_proba).any():
        raise ImageReadError(micrograph.name, "some of its tiles could not be encoded")
    for (top, left, h, w), p in zip(boxes, tile_proba):
        r0, c0 = int(round(top)), int(round(left))
        class_map[r0:r0 + int(round(h)), c0:c0 + int(round(w))] = int(p.argmax()) + 1
    return MicrographLayers(classes, class_map, tile_proba, boxes,
                            np.concatenate(points) if points else np.zeros((0, 2), np.float32),
                            np.concatenate(codewords) if codewords else np.zeros(0, np.int32),
                            tile_proba.mean(axis=0), px)


def _box(source: images.ImageSource, height: int, width: int) -> tuple[float, float, float, float]:
    """A source's region of the file: (top, left, height, width) in the file's pixels."""
    if isinstance(source, tiling.Tile):
        if source.box is not None:
            return source.file_box()
        p = tiling.prepared(source.micrograph, source.settings)  # rescaled or cropped, not tiled
        return 0.0, 0.0, p.values.shape[0] / p.factor, p.values.shape[1] / p.factor
    return 0.0, 0.0, float(height), float(width)


def layer_data(result: MicrographLayers, image: Any, model_file: Path,
               codewords: bool = True) -> list[napari.types.LayerDataTuple]:
    """The result as napari layer tuples, aligned with ``image`` (same scale and translation): the
    class map, and with ``codewords`` the sampled points coloured by their codeword."""
    place = {"scale": tuple(image.scale)[-2:], "translate": tuple(image.translate)[-2:]}
    answer = ", ".join(f"{c} {p:.2f}" for c, p in zip(result.classes, result.proba))
    classes = {"label": list(range(len(result.classes) + 1)), "class": ["(no tile)", *result.classes]}
    layers: list[napari.types.LayerDataTuple] = [
        (result.class_map, {"name": f"fastvlad classes ({Path(model_file).name})", "opacity": 0.4,
                            "features": classes, "metadata": {"classes": result.classes, "answer": answer,
                                                               "tile_proba": result.tile_proba}, **place}, "labels")]
    if codewords and len(result.points):
        layers.append((result.points, {"name": "fastvlad codewords", "size": 3, "border_width": 0,
                                       "features": {"codeword": result.codewords}, "face_color": "codeword",
                                       "face_colormap": "turbo", **place}, "points"))
    return layers
