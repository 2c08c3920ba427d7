"""``fastvlad train``, ``predict`` and ``encode``: a model from labelled images, its predictions,
and the VLAD codes of images (with a saved model's codebook or a new one)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from .._files import check_writable
from .options import (
    BACKBONE,
    CALIBRATE,
    DENSITY,
    DEVICE,
    FAITHFUL,
    FP16,
    IMAGE_SIZE,
    K,
    ON_ERROR,
    PCA,
    PRECISION,
    SCHEDULER,
    SEED,
    TAPS,
    WORKERS,
    estimator,
    load,
    loaded,
    precision_of,
    report_skipped,
)


def train(data: Path = typer.Argument(..., help="Folder of class sub-folders, or a CSV manifest path,label[,group]."),
          output: Path = typer.Option(..., "-o", "--output", help="Model file to write."),
          density: float = DENSITY, k: int = K, image_size: str = IMAGE_SIZE, device: str = DEVICE,
          backbone: str = BACKBONE, taps: Optional[str] = TAPS, seed: int = SEED, on_error: str = ON_ERROR,
          scheduler: Optional[str] = SCHEDULER, workers: int = WORKERS, faithful: bool = FAITHFUL,
          pca: Optional[str] = PCA, fp16: Optional[bool] = FP16, precision: Optional[str] = PRECISION,
          calibrate: Optional[Path] = CALIBRATE) -> None:
    """Train a model on labelled images and save it as one file."""
    from .. import distributed

    check_writable(output)  # an unwritable -o fails before the work, not after it
    ds = load(data, on_error)
    model = estimator(density, k, image_size, device, backbone, taps, seed, on_error, faithful, pca,
                      calibration=str(calibrate) if calibrate else None, **precision_of(precision, fp16))
    with distributed.connect(scheduler, workers, device) as client:
        distributed.fit(client, [str(p) for p in ds.paths], ds.y, model)
    model.save(output)
    report_skipped(model.skipped_)
    typer.echo(f"trained on {model.train_info_['n_images']} images, classes {', '.join(map(str, model.classes_))}; "
               f"saved {output} ({model.timings_['total']:.1f} s)")


def predict(model_path: Path = typer.Argument(..., metavar="MODEL"),
            data: Path = typer.Argument(..., help="Folder, CSV manifest or image file."),
            output: Path = typer.Option(Path("predictions.csv"), "--output", "-o"),
            device: str = DEVICE, on_error: str = ON_ERROR, scheduler: Optional[str] = SCHEDULER,
            workers: int = WORKERS, fp16: Optional[bool] = FP16, precision: Optional[str] = PRECISION) -> None:
    """Write predictions: CSV with path, predicted and one p_<class> column per class."""
    from .. import distributed
    from .._files import write_atomic

    model = loaded(model_path, device, on_error, fp16, precision)
    check_writable(output)  # an unwritable -o fails before the work, not after it
    ds = load(data, on_error, require_labels=False)
    paths = [str(p) for p in ds.paths]
    with distributed.connect(scheduler, workers, device) as client:
        proba, skipped = distributed.predict_proba(client, paths, model)
    failed = dict(skipped)

    def write(f) -> None:  # type: ignore[no-untyped-def]
        import io

        text = io.StringIO()
        w = csv.writer(text)
        w.writerow(["path", "predicted", *[f"p_{c}" for c in model.classes_], "error"])
        for p, row in zip(ds.paths, proba):
            rel = p.relative_to(ds.root) if p.is_relative_to(ds.root) else p
            if np.isnan(row).any():
                w.writerow([rel, "", *[""] * len(row), failed.get(str(p), "unreadable")])
            else:
                w.writerow([rel, model.classes_[row.argmax()], *[f"{v:.6f}" for v in row], ""])
        f.write(text.getvalue().encode())

    write_atomic(output, write)
    report_skipped(list(failed.items()))
    typer.echo(f"wrote {len(paths)} predictions to {output}")


def encode(data: Path = typer.Argument(...), output: Path = typer.Option(..., "-o", "--output", help=".npy file"),
           model_path: Optional[Path] = typer.Option(None, "--model", help="Use this model's codebook (else fit one)."),
           density: float = DENSITY, k: int = K, image_size: str = IMAGE_SIZE, device: str = DEVICE,
           backbone: str = BACKBONE, taps: Optional[str] = TAPS, seed: int = SEED, on_error: str = ON_ERROR,
           scheduler: Optional[str] = SCHEDULER, workers: int = WORKERS, faithful: bool = FAITHFUL,
           pca: Optional[str] = PCA, fp16: Optional[bool] = FP16, precision: Optional[str] = PRECISION,
           calibrate: Optional[Path] = CALIBRATE) -> None:
    """Write the VLAD codes (n, k·dim) float32 as .npy (NaN rows for skipped images), paths beside it
    (and, when images were skipped, <output>.errors.csv with why)."""
    from .. import distributed
    from .._files import write_atomic, write_bytes_atomic

    check_writable(output)  # an unwritable -o fails before the work, not after it
    ds = load(data, on_error, require_labels=False)
    paths = [str(p) for p in ds.paths]
    if model_path:
        model = loaded(model_path, device, on_error, fp16, precision)
    else:
        model = estimator(density, k, image_size, device, backbone, taps, seed, on_error, faithful, pca,
                          calibration=str(calibrate) if calibrate else None, **precision_of(precision, fp16))
    with distributed.connect(scheduler, workers, device) as client:
        if not model_path:
            distributed.fit_codebook(client, paths, model)
        encoded = distributed.encode(client, paths, model)
    codes = np.full((len(paths), model.codebook_.size), np.nan, dtype=np.float32)
    codes[encoded.indices] = encoded.codes
    write_atomic(output, lambda f: np.save(f, codes, allow_pickle=False))
    write_atomic(output.with_suffix(".paths.txt"), lambda f: f.write("\n".join(paths).encode() + b"\n"))
    skipped = model.describe_failures(paths, encoded)
    if skipped:  # the NaN rows' reasons, beside the codes
        write_bytes_atomic(output.with_suffix(".errors.csv"), _csv_bytes([("path", "error"), *skipped]))
    report_skipped(skipped)
    typer.echo(f"wrote codes {codes.shape} to {output}")


def _csv_bytes(rows: list[tuple[str, str]]) -> bytes:
    import io

    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue().encode()
