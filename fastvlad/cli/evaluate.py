"""``fastvlad evaluate``: cross-validation, printed as a table, and optionally as JSON, a
confusion-matrix PNG and an HTML report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .options import (
    BACKBONE,
    DENSITY,
    DEVICE,
    FAITHFUL,
    IMAGE_SIZE,
    K,
    ON_ERROR,
    PCA,
    PRECISION,
    SEED,
    TAPS,
    estimator,
    load,
    precision_of,
    report_skipped,
)


def evaluate(data: Path = typer.Argument(...), folds: int = typer.Option(5, help="Number of folds."),
             report: Optional[Path] = typer.Option(None, help="Write an HTML report (and PNG/JSON) into this folder."),
             confusion_png: Optional[Path] = typer.Option(None, "--confusion", help="Confusion-matrix PNG path."),
             json_out: Optional[Path] = typer.Option(None, "--json", help="Write the numbers as JSON."),
             density: float = DENSITY, k: int = K, image_size: str = IMAGE_SIZE, device: str = DEVICE,
             backbone: str = BACKBONE, taps: Optional[str] = TAPS, seed: int = SEED,
             on_error: str = ON_ERROR, faithful: bool = FAITHFUL, pca: Optional[str] = PCA,
             precision: Optional[str] = PRECISION) -> None:
    """Cross-validate (grouped by the 'group' column when present): accuracy, per-class P/R, confusion."""
    from ..evaluate import cross_validate

    ds = load(data, on_error)
    est = estimator(density, k, image_size, device, backbone, taps, seed, on_error, faithful, pca,
                    **precision_of(precision, None))
    res = cross_validate(est, [str(p) for p in ds.paths], ds.y, ds.groups, folds)
    _print_cv(res)
    if json_out:
        from .._files import write_bytes_atomic

        write_bytes_atomic(json_out, json.dumps(res.to_dict(), indent=2).encode())
    if confusion_png:
        from ..plots import confusion_matrix_png

        confusion_matrix_png(res.confusion(), res.classes, confusion_png)
    if report:
        from ..report import write_report

        path = write_report(report, res, est, ds)
        typer.echo(f"report: {path}")
    report_skipped(res.skipped)


def _print_cv(res) -> None:  # type: ignore[no-untyped-def]
    kind = "grouped" if res.grouped else "stratified"
    typer.echo(f"{len(res.fold_accuracy)}-fold {kind} CV accuracy: {res.accuracy:.3f} ± {res.accuracy_std:.3f} "
               f"(folds: {', '.join(f'{a:.3f}' for a in res.fold_accuracy)}) on {len(res.y_true)} images, "
               f"{res.seconds['total']:.0f} s")
    typer.echo(f"{'class':<22}{'precision':>10}{'recall':>10}{'f1':>8}{'n':>6}")
    for c, m in res.per_class().items():
        typer.echo(f"{c:<22}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>8.3f}{m['support']:>6}")
    typer.echo("confusion (rows true, columns predicted):")
    for c, row in zip(res.classes, res.confusion()):
        typer.echo(f"  {c:<22}" + " ".join(f"{v:>5}" for v in row))

