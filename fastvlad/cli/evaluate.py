"""``fastvlad evaluate``: cross-validation, printed as a table, and optionally as JSON, a
confusion-matrix PNG and an HTML report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from .. import tiling
from ..errors import WriteError
from . import outputs
from .options import (
    BACKBONE,
    CROP_BOTTOM,
    MISSING_SCALE,
    SCALE,
    TILE,
    TILE_STRIDE,
    DENSITY,
    DEVICE,
    FAITHFUL,
    IMAGE_SIZE,
    K,
    ON_ERROR,
    PCA,
    SEED,
    TAPS,
    estimator,
    load,
    micrograph_params,
    report_skipped,
)


def evaluate(data: Path = typer.Argument(...), folds: int = typer.Option(5, help="Number of folds."),
             report: Optional[Path] = typer.Option(None, help="Write an HTML report (and PNG/JSON) into this folder."),
             confusion_png: Optional[Path] = typer.Option(None, "--confusion", help="Confusion-matrix PNG path."),
             json_out: Optional[Path] = typer.Option(None, "--json", help="Write the numbers as JSON."),
             density: float = DENSITY, k: int = K, image_size: str = IMAGE_SIZE, device: str = DEVICE,
             backbone: str = BACKBONE, taps: Optional[str] = TAPS, seed: int = SEED,
             on_error: str = ON_ERROR, faithful: bool = FAITHFUL, pca: Optional[str] = PCA,
             scale: Optional[float] = SCALE, missing_scale: Optional[str] = MISSING_SCALE, tile: Optional[str] = TILE,
             tile_stride: Optional[str] = TILE_STRIDE, crop_bottom: Optional[str] = CROP_BOTTOM) -> None:
    """Cross-validate (grouped by the 'group' column when present, and the tiles of one micrograph
    always together): accuracy, per-class P/R, confusion."""
    from ..evaluate import cross_validate

    ds = load(data, on_error)
    outputs.refuse_inputs([report and report / "index.html", confusion_png, json_out],
                          outputs.dataset_files(data, ds.paths))
    est = estimator(density, k, image_size, device, backbone, taps, seed, on_error, faithful, pca,
                    **micrograph_params(scale, missing_scale, tile, tile_stride, crop_bottom))
    sources = tiling.sources_of(ds.paths, ds.pixel_size_nm)
    tiled = tiling.Settings.of(est).tile is not None
    if tiled:
        if report:
            raise WriteError("--report with --tile is not supported yet (its thumbnails are per image); "
                             "use --json and --confusion")
        from ..micrograph_cv import cross_validate_tiles

        cv = cross_validate_tiles(est, sources, ds.y, ds.groups, folds)  # a micrograph's tiles in one fold
        res = cv.result
    else:
        plan = tiling.plan_for(est, sources)  # rescaled or cropped, one input per image
        res = cross_validate(est, plan.sources if plan is not None else sources, ds.y, ds.groups, folds)
    _print_cv(res)
    if tiled:
        agg, acc = cv.micrographs()
        typer.echo(f"micrograph accuracy (mean of its tiles' probabilities): {acc:.3f} on "
                   f"{int((agg.readable > 0).sum())} micrographs ({len(cv.plan.sources)} tiles)")
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
    typer.echo(confusion_text(res.confusion(), res.classes))


def confusion_text(cm: np.ndarray, classes: list[str]) -> str:
    """The confusion matrix with its column headers: the class names (numbers, with the key in the
    row labels, when more than ``NAMED_COLUMNS`` classes would make the lines too long)."""
    named = len(classes) <= NAMED_COLUMNS
    heads = list(classes) if named else [f"({j + 1})" for j in range(len(classes))]
    widths = [max(5, len(h), *(len(str(v)) for v in cm[:, j])) for j, h in enumerate(heads)]
    labels = list(classes) if named else [f"({j + 1}) {c}" for j, c in enumerate(classes)]
    side = max(20, *(len(c) for c in labels))
    lines = ["confusion (rows true, columns predicted):",
             "  " + "true / predicted".ljust(side) + "".join(f" {h:>{w}}" for h, w in zip(heads, widths))]
    for label, row in zip(labels, cm):
        lines.append("  " + label.ljust(side) + "".join(f" {v:>{w}}" for v, w in zip(row, widths)))
    return "\n".join(lines)


#: Up to this many classes, the confusion matrix's columns carry the class names.
NAMED_COLUMNS = 6
