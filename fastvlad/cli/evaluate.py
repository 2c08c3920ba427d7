"""``fastvlad evaluate``: cross-validation (grouped K-fold, or leave-one-group-out over a manifest
column with ``--split``), the shift check (``--shift``), printed as tables, and optionally as JSON,
a confusion-matrix PNG and an HTML report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import typer

from .. import tiling
from ..errors import ParameterError, WriteError
from . import outputs
from .options import (
    ALPHA,
    ASPECT,
    AUGMENT,
    BACKBONE,
    CLASSIFIER,
    CODE_PCA,
    CROP_BOTTOM,
    DENSITY,
    DEVICE,
    FAITHFUL,
    IMAGE_SIZE,
    MISSING_SCALE,
    NORMALIZE,
    ON_ERROR,
    PCA,
    POINTS,
    POWER,
    PRECISION,
    SCALE,
    SEED,
    SOFTNESS,
    TAPS,
    TILE,
    TILE_STRIDE,
    TTA,
    TTA_ZOOM,
    ZOOM,
    ZOOM_JITTER,
    K,
    estimator,
    load,
    log,
    micrograph_params,
    precision_of,
    report_skipped,
)

if TYPE_CHECKING:
    from ..evaluate import CVResult, ShiftCheck


#: The defaults of --folds and --shift-images (a different value given where it is unused gets a warning).
DEFAULT_FOLDS, DEFAULT_SHIFT_IMAGES = 5, 200


def evaluate(data: Path = typer.Argument(...), folds: int = typer.Option(DEFAULT_FOLDS, help="Number of folds (without --split)."),
             split: Optional[str] = typer.Option(None, "--split", help="Leave one group out over this manifest "
                                                 "column (e.g. series): every value held out once, accuracy per value."),
             shift: bool = typer.Option(False, "--shift", help="Re-predict out-of-fold images under acquisition "
                                        "changes (gain, offset, gamma, blur, noise): share of predictions changed."),
             shift_magnification: bool = typer.Option(False, "--shift-magnification", help="With the shift "
                                                      "check (implied), also re-predict each image's centre at "
                                                      "1.25, 1.5 and 2 times the magnification (shown apart)."),
             shift_images: int = typer.Option(DEFAULT_SHIFT_IMAGES, "--shift-images", help="Images the shift check re-predicts "
                                              "(seeded, stratified by group and class; 0: all). Each change costs "
                                              "one CNN pass per image."),
             report: Optional[Path] = typer.Option(None, help="Write an HTML report (and PNG/JSON) into this folder."),
             confusion_png: Optional[Path] = typer.Option(None, "--confusion", help="Confusion-matrix PNG path."),
             json_out: Optional[Path] = typer.Option(None, "--json", help="Write the numbers as JSON."),
             refit: str = typer.Option("head", "--refit", help="What each fold fits: 'head' (the classifier, on "
                                       "codes of one shared PCA and codebook) or 'all' (a whole fit per fold, the "
                                       "codebook too, as a trained model meets a new sample; one encoding per fold)."),
             density: float = DENSITY, k: int = K, image_size: Optional[str] = IMAGE_SIZE, device: str = DEVICE,
             backbone: str = BACKBONE, taps: Optional[str] = TAPS, seed: int = SEED,
             on_error: str = ON_ERROR, faithful: bool = FAITHFUL, pca: Optional[str] = PCA,
             aspect: Optional[str] = ASPECT, normalize: Optional[str] = NORMALIZE,
             points: Optional[str] = POINTS, softness: Optional[str] = SOFTNESS, power: Optional[bool] = POWER,
             classifier: Optional[str] = CLASSIFIER, augment: Optional[int] = AUGMENT, zoom: Optional[str] = ZOOM,
             alpha: Optional[float] = ALPHA, code_pca: Optional[str] = CODE_PCA,
             zoom_jitter: Optional[bool] = ZOOM_JITTER,
             tta: Optional[int] = TTA, tta_zoom: Optional[str] = TTA_ZOOM,
             scale: Optional[float] = SCALE, missing_scale: Optional[str] = MISSING_SCALE, tile: Optional[str] = TILE,
             tile_stride: Optional[str] = TILE_STRIDE, crop_bottom: Optional[str] = CROP_BOTTOM,
             precision: Optional[str] = PRECISION) -> None:
    """Cross-validate (grouped by the 'group' column when present, the tiles of one micrograph always
    together, or leaving one value of --split out at a time): accuracy (per held-out group), per-class
    P/R, confusion, and with --shift the shift check."""
    from .. import checks
    from ..evaluate import (
        check_folds,
        check_magnification_size,
        cross_validate,
        shift_check,
    )

    if shift_images < 0:
        raise ParameterError(f"--shift-images {shift_images}: give a number of images, or 0 for all")
    _note_unused(folds, split, shift_images, shift or shift_magnification)
    written = _check_outputs(report, confusion_png, json_out)
    outputs.refuse_inside_dataset(report, data, "--report")
    ds = load(data, on_error)
    outputs.refuse_inputs(written, outputs.dataset_files(data, ds.paths))
    split_values = ds.column(split) if split is not None else None
    check_folds(folds, split_values, split.strip().lower() if split is not None else "split", ds.origin)
    est = estimator(density, k, image_size, device, backbone, taps, seed, on_error, faithful, pca, aspect=aspect,
                    normalize=normalize, points=points, softness=softness, power=power, classifier=classifier,
                    augment=augment, zoom=zoom, alpha=alpha, code_pca=code_pca, zoom_jitter=zoom_jitter, tta=tta,
                    tta_zoom=tta_zoom, **precision_of(precision, None),
                    **micrograph_params(scale, missing_scale, tile, tile_stride, crop_bottom))
    if shift_magnification:
        check_magnification_size(checks.image_size(est.image_size))  # before the CV, not after it
    if tiling.Settings.of(est).tile is not None:
        _check_tiled(report, split, shift or shift_magnification, refit)
        from ..micrograph_cv import cross_validate_tiles

        cv = cross_validate_tiles(est, tiling.sources_of(ds.paths, ds.pixel_size_nm), ds.y, ds.groups, folds)
        res = cv.result  # a micrograph's tiles in one fold
        _print_cv(res, "tiles")
        agg, acc = cv.micrographs()
        typer.echo(f"micrograph accuracy (mean of its tiles' probabilities): {acc:.3f} on "
                   f"{int((agg.readable > 0).sum())} micrographs ({len(cv.plan.sources)} tiles)")
    else:
        sources = tiling.sources_of(ds.paths, ds.pixel_size_nm)
        plan = tiling.plan_for(est, sources)  # rescaled or cropped, one input per image
        inputs = plan.sources if plan is not None else sources
        res = cross_validate(est, inputs, ds.y, ds.groups, folds, split=split_values,
                             split_name=split.strip().lower() if split else "split", refit=refit)
        if shift or shift_magnification:
            shift_check(res, inputs, shift_images or None, random_state=seed, magnification=shift_magnification)
        _print_cv(res, "images")
    _write_outputs(res, est, ds, report, json_out, confusion_png)
    report_skipped(res.skipped)


def _check_tiled(report: Optional[Path], split: Optional[str], shifted: bool, refit: str) -> None:
    """What cross-validation by micrograph tiles (``--tile``) cannot do yet, refused before any work."""
    if report:
        raise WriteError("--report with --tile is not supported yet (its thumbnails are per image); "
                         "use --json and --confusion")
    if split is not None or shifted or refit != "head":
        raise ParameterError("--split, --shift and --refit all with --tile are not supported yet; tile the "
                             "micrographs into a manifest with a series column instead (see README, From the "
                             "microscope)")


def _write_outputs(res: CVResult, est: Any, ds: Any, report: Optional[Path], json_out: Optional[Path],
                   confusion_png: Optional[Path]) -> None:
    """The report folder, the JSON and the confusion PNG that were asked for, the report first: of
    the outputs, the one most likely to fail, and then none is written."""
    if report:
        from ..report import write_report

        path = write_report(report, res, est, ds)
        typer.echo(f"report: {path}")
    if json_out:
        from .._files import write_bytes_atomic

        # ensure_ascii: a file name that is not UTF-8 is kept as \udcNN escapes (os.fsencode gives its bytes)
        write_bytes_atomic(json_out, json.dumps(res.to_dict(), indent=2).encode())
    if confusion_png:
        from ..plots import confusion_matrix_png

        confusion_matrix_png(res.confusion(), res.classes, confusion_png)


def _note_unused(folds: int, split: Optional[str], shift_images: int, shifted: bool) -> None:
    """A warning for an option this run has no use for (it was ignored without a word): through the
    logger, as every message on stderr, and kept by ``-q``, which hides notices, not warnings."""
    if split is not None and folds != DEFAULT_FOLDS:
        log.warning(f"--folds {folds}: not used with --split (one fold per value of {split})")
    if not shifted and shift_images != DEFAULT_SHIFT_IMAGES:
        log.warning(f"--shift-images {shift_images}: not used without --shift or --shift-magnification")


def _check_outputs(report: Optional[Path], confusion_png: Optional[Path], json_out: Optional[Path]) -> list[Path]:
    """Before the cross-validation: ``WriteError`` when an output cannot be written. Returns every
    file evaluate may write, to check against its inputs."""
    from .. import report as report_files
    from .._files import check_writable

    _refuse_shared(report, confusion_png, json_out)
    written = []
    for path in (json_out, confusion_png):
        if path is not None:
            written.append(check_writable(path))
    if report is not None:
        report_files.check_folder(report)
        written += report_files.files(report)
    return written


def _refuse_shared(report: Optional[Path], confusion_png: Optional[Path], json_out: Optional[Path]) -> None:
    """``WriteError`` when two outputs would write one file, the later replacing the earlier: the
    paths compared resolved (relative, absolute or through a link). The report claims its folder,
    its files and its ``examples/`` (thumbnail names depend on the results)."""
    from ..report import FILES

    claimed: dict[Path, tuple[str, Path]] = {}
    for option, path in (("--json", json_out), ("--confusion", confusion_png)):
        if path is None:
            continue
        where = path.resolve()
        if where in claimed:
            raise WriteError(f"{claimed[where][0]} and {option} both write {path}; give each output its own path")
        claimed[where] = (option, path)
    if report is None:
        return
    folder = report.resolve()
    for where, (option, path) in claimed.items():
        if where == folder or where in {folder / name for name in FILES} or folder / "examples" in where.parents:
            raise WriteError(f"{option} and --report both write {path} (the report writes {', '.join(FILES)} "
                             "and examples/ in its folder); give each output its own path")


def _print_cv(res: CVResult, unit: str = "images") -> None:
    """The CV's accuracy lines; ``unit`` names what a row is ("tiles" of micrographs with --tile)."""
    if res.leave_one_out:
        _print_per_group(res)
    else:
        kind = "grouped" if res.grouped else "stratified"
        typer.echo(f"{len(res.fold_accuracy)}-fold {kind} CV accuracy: {res.accuracy:.3f} ± {res.accuracy_std:.3f} "
                   f"(folds: {', '.join(f'{a:.3f}' for a in res.fold_accuracy)}) on {len(res.y_true)} {unit}, "
                   f"{res.seconds['total']:.0f} s")
    from ..encoder import describe_views
    from ..evaluate import by_group_text, refit_text

    typer.echo(refit_text(res.refit))
    typer.echo(f"each prediction: the mean over {describe_views(res.views)}")
    for line in res.warnings():
        typer.echo(line)
    line = by_group_text(res.by_group(), len(res.y_true))
    if line:
        typer.echo(line)
    typer.echo(f"{'class':<22}{'precision':>10}{'recall':>10}{'f1':>8}{'n':>6}")
    for c, m in res.per_class().items():
        typer.echo(f"{c:<22}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>8.3f}{m['support']:>6}")
    typer.echo(confusion_text(res.confusion(), res.classes))
    if res.shift is not None:
        _print_shift(res)


def _print_per_group(res: CVResult) -> None:
    """Accuracy per held-out group (n, classes in it, classes its training lacked), mean and spread."""
    col = res.group_by or "group"
    acc = np.asarray(res.fold_accuracy)
    typer.echo(f"leave-one-{col}-out CV on {len(res.y_true)} images ({len(acc)} values of {col}, each held out "
               f"once), {res.seconds['total']:.0f} s")
    from ..evaluate import mean_interval_text

    interval = mean_interval_text(res.accuracy_95, acc)
    typer.echo(f"accuracy per held-out {col}: mean {res.accuracy:.3f} (min {acc.min():.3f}, max "
               f"{acc.max():.3f}, std {res.accuracy_std:.3f}){'; ' + interval if interval else ''}; pooled over all "
               f"images {float((res.y_pred == res.y_true).mean()):.3f}")
    width = max(len(col), *(len(str(f["held_out"])) for f in res.per_fold())) + 2
    typer.echo(f"{col:<{width}}{'n':>6}{'accuracy':>10}  classes")
    for f in res.per_fold():
        classes = ", ".join(f"{c} {n}" for c, n in f["classes"].items())
        missing = f"; not in training: {', '.join(f['missing_from_training'])}" if f["missing_from_training"] else ""
        typer.echo(f"{f['held_out']:<{width}}{f['n']:>6}{f['accuracy']:>10.3f}  {classes}{missing}")


def _print_shift(res: CVResult) -> None:
    from ..evaluate import (
        MAGNIFICATION_NOTE,
        change_kind,
        changed_by_group_text,
        changed_groups_text,
        interval_note,
        share_interval_text,
    )

    check = res.shift
    assert check is not None
    typer.echo(f"shift check: {len(check.rows)} out-of-fold images (seeded, stratified by {check.stratified_by}) "
               "re-predicted "
               f"under {len(check.changes)} changes, {check.seconds:.0f} s")
    typer.echo(f"  {'change':<22}{'changed':>9}{'95 % interval':>16}{'groups':>9}{'right→wrong':>13}{'accuracy':>10}")
    typer.echo(f"  {'(unchanged)':<22}{'':>9}{'':>16}{'':>9}{'':>13}{check.accuracy:>10.3f}")
    for c in check.changes:
        typer.echo(f"  {c['name']:<22}{100 * c['flipped']:>7.1f} %{share_interval_text(c):>16}"
                   f"{changed_groups_text(c):>9}{100 * c['lost']:>11.1f} %{c['accuracy']:>10.3f}")
    typer.echo(f"  (changed: the share of predictions the change changes, and {interval_note(check.to_dict())}; "
               "groups: the groups with a prediction changed, of those re-predicted; right→wrong: the share of the "
               "right ones it makes wrong)")
    if check.group_by is not None:
        typer.echo(f"  {changed_by_group_text(check)}")
    if any(change_kind(c) == "control" for c in check.changes):
        typer.echo("  (the control is no acquisition change: the image all but unchanged, its points drawn anew; "
                   "what it changes, point sampling alone changes)")
    if any(change_kind(c) == "magnification" for c in check.changes):
        typer.echo(f"  ({MAGNIFICATION_NOTE})")
    if check.margins:
        _print_margins(check)


def _print_margins(check: ShiftCheck) -> None:
    """The answers at or above a few margins: how many, how right, how much one change alters."""
    from ..evaluate import shown_margins, steady_margin_text

    typer.echo("  sure answers (margin: the answer's probability minus the runner-up's; predict --min-margin "
               "marks the others):")
    magnified = "max_flipped_magnification" in check.margins[0]
    typer.echo(f"  {'margin ≥':<10}{'answers':>9}{'accuracy':>10}{'most changed':>14}"
               + (f"{'by a magnification':>20}" if magnified else ""))
    for r in shown_margins(check.margins):
        accuracy = f"{r['accuracy']:.3f}" if r["n"] else "–"
        typer.echo(f"  {r['margin']:<10.2f}{100 * r['kept']:>7.1f} %{accuracy:>10}{100 * r['max_flipped']:>12.1f} %"
                   + (f"{100 * r['max_flipped_magnification']:>18.1f} %" if magnified else ""))
    typer.echo(f"  {steady_margin_text(check.margins)}")


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
