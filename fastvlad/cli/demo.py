"""``fastvlad demo``: generated TEM-like images of the paper's four classes, a model trained on
them, and its held-out accuracy and time per stage."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Optional

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
    from .. import checks
    from ..estimator import FastVLAD

    _check_options(n_train, n_test, size, keep)
    model = (FastVLAD.faithful if faithful else FastVLAD)(density=density, k=k, device=device, random_state=seed,
                                                          **parse_pca(pca))
    checks.parameters(model)  # before any image is written
    if keep is not None:
        _run(model, keep, n_train, n_test, size, seed, kept=True)
        return
    with tempfile.TemporaryDirectory(prefix="fastvlad-demo-") as tmp:  # removed afterwards, failed or not
        _run(model, Path(tmp), n_train, n_test, size, seed, kept=False)


#: Most demo images per class (--n-train, --n-test): all are written as PNG files before training.
MAX_PER_CLASS = 25_000
#: Largest side of a demo image (--size): one network input of at most 4096² pixels.
MAX_SIZE = 4096


def _check_options(n_train: int, n_test: int, size: int, keep: Optional[Path]) -> None:
    """The counts and the --keep folder, before any image is written (``ParameterError``, ``WriteError``)."""
    from .. import checks
    from ..errors import WriteError
    from ..images import MIN_SIDE

    checks.integer("--n-train", n_train, 1, hi=MAX_PER_CLASS)
    checks.integer("--n-test", n_test, 1, hi=MAX_PER_CLASS)
    checks.integer("--size", size, MIN_SIDE, hi=MAX_SIZE)
    if keep is None or not keep.exists():
        return
    if not keep.is_dir():
        raise WriteError(f"--keep {keep} is a file; give a new or empty folder for the demo images and model")
    if any(keep.iterdir()):  # its files, or a dataset's class folders, would be replaced or mixed in
        raise WriteError(f"--keep {keep} is not empty; give a new or empty folder (the demo writes train/, test/ "
                         "and model.fvl there)")


def _run(model: Any, folder: Path, n_train: int, n_test: int, size: int, seed: int, kept: bool) -> None:
    """Write the demo data into ``folder``, fit ``model``, score and print (the model saved there when ``kept``)."""
    from .. import demo as demo_data
    from ..encoder import describe_views

    t = time.perf_counter()
    train_ds = datasets.load(demo_data.write_dataset(folder / "train", n_train, size, random_state=seed))
    test_ds = datasets.load(demo_data.write_dataset(folder / "test", n_test, size, random_state=seed + 1))
    typer.echo(f"demo data: {len(train_ds)} training, {len(test_ds)} held-out images ({size}×{size})"
               f"{' in ' + str(folder) if kept else ''} ({time.perf_counter() - t:.1f} s)")
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
