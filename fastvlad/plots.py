"""Figures written as PNG: matplotlib (headless Agg) for charts, NumPy + Pillow for pixel-exact overlays."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._files import write_atomic, write_bytes_atomic


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))
    _pyplot().close(fig)
    return Path(path)


#: Longest slug: a file name may hold 255 bytes, and the slug sits between a number and a suffix.
SLUG_CHARS = 64


def slug(name: str) -> str:
    """A file-name-safe version of a class name, at most ``SLUG_CHARS`` long (callers number their
    files, so two long names cut to the same slug still give two files)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:SLUG_CHARS] or "class"


def png_bytes(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 → PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write (H, W, 3) uint8 as a PNG of exactly that size, atomically."""
    return write_bytes_atomic(path, png_bytes(rgb))


def thumbnail(rgb: np.ndarray, side: int = 128) -> np.ndarray:
    """(H, W, 3) uint8 → at most ``side`` × ``side``, aspect kept."""
    from PIL import Image

    im = Image.fromarray(rgb)
    im.thumbnail((side, side), Image.Resampling.BILINEAR)
    return np.asarray(im)


def confusion_matrix_png(matrix: np.ndarray, classes: list[str], path: str | Path) -> Path:
    """A confusion-matrix heat map with counts; rows true, columns predicted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.1 * len(classes) + 2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    fig.tight_layout()
    return _save(fig, path)


def fold_accuracy_png(fold_accuracy: Sequence[float], path: str | Path, names: Sequence[str] | None = None,
                      xlabel: str = "fold") -> Path:
    """Bar per fold with the mean ± std band; ``names`` label the bars (the held-out groups)."""
    plt = _pyplot()
    acc = np.asarray(fold_accuracy, dtype=float)
    fig, ax = plt.subplots(figsize=(max(3.5, 0.7 * len(acc) + 1.5), 2.8 + (0.6 if names else 0.0)))
    ax.axhspan(acc.mean() - acc.std(), acc.mean() + acc.std(), color="#e0a030", alpha=0.3, label="mean ± std", zorder=1)
    ax.bar(np.arange(1, len(acc) + 1), acc, color="#4a78b0", alpha=0.85, zorder=2)
    ax.axhline(acc.mean(), color="#c07010", zorder=3)
    if names:
        ax.set_xticks(np.arange(1, len(acc) + 1), list(names), rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def codeword_colours(k: int) -> np.ndarray:
    """k distinct-ish colours ``(k, 3)`` uint8: hues spaced by the golden ratio, so neighbours differ."""
    import matplotlib

    hues = (np.arange(k) * 0.6180339887) % 1.0
    hsv = np.stack([hues, np.full(k, 0.85), np.where(np.arange(k) % 2, 0.95, 0.75)], axis=1)
    return (matplotlib.colors.hsv_to_rgb(hsv) * 255).astype(np.uint8)


def _grid_to_image(grid: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Nearest grid row of every image row, and column of every image column (pixel centres)."""
    (h, w), (height, width) = grid, size
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return rows, cols


def _gray(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → luminance as (H, W, 3) float32, so colours on top stand out."""
    lum = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(lum[..., None], 3, axis=2)


def codeword_panel(image: np.ndarray, grid: tuple[int, int], points: np.ndarray, codewords: np.ndarray,
                   k: int) -> np.ndarray:
    """The image (dimmed gray) with every sampled pixel in its codeword's colour; (H, W, 3) uint8, image size.

    points: ``(S, 2)`` [row, col] in the ``grid`` (network input) pixel grid; a grid pixel covers
    ``H/h × W/w`` image pixels."""
    label = np.full(grid, -1, dtype=np.int64)
    label[points[:, 0], points[:, 1]] = codewords
    rows, cols = _grid_to_image(grid, image.shape[:2])
    up = label[np.ix_(rows, cols)]
    out = _gray(image) * 0.6
    out[up >= 0] = codeword_colours(k)[up[up >= 0]]
    return out.astype(np.uint8)


def support_panel(image: np.ndarray, grid: tuple[int, int], points: np.ndarray, values: np.ndarray,
                  cmap: str = "RdBu_r", alpha: float = 0.55) -> np.ndarray:
    """Each pixel shaded by the value of its nearest sampled point (a Voronoi map), over the gray image.

    values: ``(S,)`` per point (e.g. its codeword's contribution); the colour scale is symmetric
    around 0 (red > 0, blue < 0). Returns (H, W, 3) uint8 of the image's size."""
    import matplotlib
    from scipy.spatial import cKDTree

    h, w = grid
    yy, xx = np.mgrid[0:h, 0:w]
    _, nearest = cKDTree(points).query(np.stack([yy.ravel(), xx.ravel()], axis=1))
    field = values[nearest].reshape(h, w)
    rows, cols = _grid_to_image(grid, image.shape[:2])
    vmax = float(np.abs(values).max()) or 1.0
    colours = matplotlib.colormaps[cmap](0.5 + 0.5 * field[np.ix_(rows, cols)] / vmax)[..., :3] * 255
    return ((1 - alpha) * _gray(image) + alpha * colours).astype(np.uint8)


def patch_grid_png(patches: np.ndarray, valid: np.ndarray, row_labels: Sequence[str], title: str,
                   path: str | Path) -> Path:
    """A grid of image patches: ``patches`` (rows, M, P, P, 3) uint8, ``valid`` (rows, M) bool."""
    plt = _pyplot()
    n_rows, n_cols = patches.shape[:2]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.1 * n_cols + 2.6, 1.1 * n_rows + 0.5), squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if valid[r, c]:
                ax.imshow(patches[r, c], interpolation="nearest")
            else:
                ax.set_axis_off()
        axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
