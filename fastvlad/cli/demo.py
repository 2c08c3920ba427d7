"""``fastvlad demo``: generated TEM-like images of the paper's four classes, a model trained on
them, and its held-out accuracy and time per stage."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

from .. import datasets
from .options import DENSITY, DEVICE, FAITHFUL, PCA, SEED, K, parse_pca


def demo(n_train: int = typer.Option(30, help="Training images per class."),
         n_test: int = typer.Option(10, help="Held-out images per class."),
         size: int = typer.Option(224, help="Side of the generated images."),
         density: float = DENSITY, k: int = K, device: str = DEVICE, seed: int = SEED,
         keep: Optional[Path] = typer.Option(None, help="Write the demo images and model into this folder."),
         faithful: bool = FAITHFUL, pca: Optional[str] = PCA) -> None:
    """Generate TEM-like demo images of the paper's four classes, train, and score held-out images."""
    from .. import demo as demo_data
    from ..estimator import FastVLAD

    folder = keep or Path(tempfile.mkdtemp(prefix="fastvlad-demo-"))
    t = time.perf_counter()
    train_ds = datasets.load(demo_data.write_dataset(folder / "train", n_train, size, random_state=seed))
    test_ds = datasets.load(demo_data.write_dataset(folder / "test", n_test, size, random_state=seed + 1))
    typer.echo(f"demo data: {len(train_ds)} training, {len(test_ds)} held-out images ({size}×{size}) in {folder}"
               f" ({time.perf_counter() - t:.1f} s)")
    model = (FastVLAD.faithful if faithful else FastVLAD)(density=density, k=k, device=device, random_state=seed,
                                                          **parse_pca(pca))
    model.fit([str(p) for p in train_ds.paths], train_ds.y)
    t = time.perf_counter()
    acc = model.score([str(p) for p in test_ds.paths], test_ds.labels)
    predict_s = time.perf_counter() - t
    model.save(folder / "model.fvl")
    typer.echo(f"held-out accuracy: {acc:.3f} on {len(test_ds)} images")
    n = model.train_info_["n_images"]
    typer.echo("training time per stage (s):")
    for stage, sec in model.timings_.items():
        typer.echo(f"  {stage:<14}{sec:8.2f}")
    typer.echo(f"prediction: {len(test_ds) / predict_s:.1f} images/s; model saved to {folder / 'model.fvl'}; "
               f"{n} training images")

