"""Matplotlib figures written as PNG (headless backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._files import write_atomic


def confusion_matrix_png(matrix: np.ndarray, classes: list[str], path: str | Path) -> Path:
    """A confusion-matrix heat map with counts; rows true, columns predicted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.1 * len(classes) + 2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return Path(path)
