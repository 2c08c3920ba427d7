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
    if keep is not None:
        _run(keep, n_train, n_test, size, density, k, device, seed, faithful, pca, kept=True)
        return
    with tempfile.TemporaryDirectory(prefix="fastvlad-demo-") as tmp:  # removed afterwards, failed or not
        _run(Path(tmp), n_train, n_test, size, density, k, device, seed, faithful, pca, kept=False)


def _run(folder: Path, n_train: int, n_test: int, size: int, density: float, k: int, device: str, seed: int,
         faithful: bool, pca: Optional[str], kept: bool) -> None:
    """Write the demo data into ``folder``, train, score and print (the model saved there when ``kept``)."""
    from .. import demo as demo_data
    from ..encoder import describe_views
    from ..estimator import FastVLAD

    t = time.perf_counter()
    train_ds = datasets.load(demo_data.write_dataset(folder / "train", n_train, size, random_state=seed))
    test_ds = datasets.load(demo_data.write_dataset(folder / "test", n_test, size, random_state=seed + 1))
    typer.echo(f"demo data: {len(train_ds)} training, {len(test_ds)} held-out images ({size}×{size})"
               f"{' in ' + str(folder) if kept else ''} ({time.perf_counter() - t:.1f} s)")
    model = (FastVLAD.faithful if faithful else FastVLAD)(density=density, k=k, device=device, random_state=seed,
                                                          **parse_pca(pca))
    model.fit([str(p) for p in train_ds.paths], train_ds.y)
    t = time.perf_counter()
    acc = model.score([str(p) for p in test_ds.paths], test_ds.y)
    predict_s = time.perf_counter() - t
    typer.echo(f"held-out accuracy: {acc:.3f} on {len(test_ds)} images")
    n = model.train_info_["n_images"]
    typer.echo("training time per stage (s):")
    for stage, sec in model.timings_.items():
        typer.echo(f"  {stage:<14}{sec:8.2f}")
    views = f" (the mean over {describe_views(model.views())})" if len(model.views()) > 1 else ""
    saved = f"model saved to {model.save(folder / 'model.fvl')}" if kept else "--keep DIR keeps the images and model"
    typer.echo(f"trained on {n} images; prediction: {len(test_ds) / predict_s:.1f} images/s{views}")
    typer.echo(saved)
