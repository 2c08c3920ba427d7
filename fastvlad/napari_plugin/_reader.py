"""The napari reader: a micrograph in an instrument's format, scaled in nanometres."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import microscopy, tiling

LayerData = list[tuple[Any, dict[str, Any], str]]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], LayerData] | None:
    """napari's reader hook: a reader for DM3/DM4/SER/EMD files, None for anything else."""
    if isinstance(path, list) or not microscopy.is_instrument_file(path):
        return None
    return read_micrograph


def read_micrograph(path: str | list[str]) -> LayerData:
    """One image layer: the micrograph as stored, ``scale`` its pixel size in nm when known, and
    ``metadata`` with ``path`` and ``pixel_size_nm`` (the widget reads both)."""
    paths = path if isinstance(path, list) else [path]
    out: LayerData = []
    for p in paths:
        pixels, px = tiling.read_micrograph(tiling.Micrograph(p))
        meta = {"path": str(Path(p).absolute()), "pixel_size_nm": px}
        kwargs: dict[str, Any] = {"name": Path(p).name, "metadata": meta, "rgb": pixels.ndim == 3}
        if px is not None:
            kwargs.update(scale=(px, px), units=("nm", "nm"))
        out.append((pixels, kwargs, "image"))
    return out
