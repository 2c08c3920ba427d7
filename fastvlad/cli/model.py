"""``fastvlad train``, ``predict`` and ``encode``: a model from labelled images, its predictions,
and the VLAD codes of images (with a saved model's codebook or a new one)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from .. import tiling
from .._files import check_writable
from ..errors import InvalidDatasetError, WriteError
from . import outputs
from .options import (
    ALPHA,
    ASPECT,
    AUGMENT,
    BACKBONE,
    CALIBRATE,
    CLASSIFIER,
    CODE_PCA,
    CROP_BOTTOM,
    DENSITY,
    DEVICE,
    FAITHFUL,
    FP16,
    IMAGE_SIZE,
    MISSING_SCALE,
    NORMALIZE,
    ON_ERROR,
    PCA,
    POINTS,
    POWER,
    PRECISION,
    SCALE,
    SCHEDULER,
    SEED,
    SOFTNESS,
    TAPS,
    TILE,
    TILE_STRIDE,
    TTA,
    TTA_ZOOM,
    WORKERS,
    ZOOM,
    ZOOM_JITTER,
    K,
    check_saved_model_options,
    estimator,
    load,
    loaded,
    micrograph_params,
    precision_of,
    report_skipped,
)


def train(data: Path = typer.Argument(..., help="Folder of class sub-folders, or a CSV manifest path,label[,group]."),
          output: Path = typer.Option(..., "-o", "--output", help="Model file to write."),
          density: float = DENSITY, k: int = K, image_size: Optional[str] = IMAGE_SIZE, device: str = DEVICE,
          backbone: str = BACKBONE, taps: Optional[str] = TAPS, seed: int = SEED, on_error: str = ON_ERROR,
          scheduler: Optional[str] = SCHEDULER, workers: int = WORKERS, faithful: bool = FAITHFUL,
          pca: Optional[str] = PCA, aspect: Optional[str] = ASPECT, normalize: Optional[str] = NORMALIZE,
          points: Optional[str] = POINTS, softness: Optional[str] = SOFTNESS, power: Optional[bool] = POWER,
          classifier: Optional[str] = CLASSIFIER, augment: Optional[int] = AUGMENT, zoom: Optional[str] = ZOOM,
          alpha: Optional[float] = ALPHA, code_pca: Optional[str] = CODE_PCA,
          zoom_jitter: Optional[bool] = ZOOM_JITTER,
          tta: Optional[int] = TTA, tta_zoom: Optional[str] = TTA_ZOOM,
          fp16: Optional[bool] = FP16, precision: Optional[str] = PRECISION,
          calibrate: Optional[Path] = CALIBRATE, scale: Optional[float] = SCALE,
          missing_scale: Optional[str] = MISSING_SCALE, tile: Optional[str] = TILE,
          tile_stride: Optional[str] = TILE_STRIDE, crop_bottom: Optional[str] = CROP_BOTTOM) -> None:
    """Train a model on labelled images and save it as one file."""
    from .. import distributed

    if outputs.is_stdout(output):
        raise WriteError("-o -: a model is a binary file; give a file name")
    check_writable(output)  # an unwritable -o fails before the work, not after it
    ds = load(data, on_error)
    outputs.refuse_inputs([output], outputs.dataset_files(data, ds.paths))
    model = estimator(density, k, image_size, device, backbone, taps, seed, on_error, faithful, pca, aspect=aspect,
                      normalize=normalize, points=points, softness=softness, power=power, classifier=classifier, augment=augment, zoom=zoom, alpha=alpha,
                      code_pca=code_pca,
                      zoom_jitter=zoom_jitter, tta=tta, tta_zoom=tta_zoom,
                      calibration=str(calibrate) if calibrate else None, **precision_of(precision, fp16),
                      **micrograph_params(scale, missing_scale, tile, tile_stride, crop_bottom))
    sources = tiling.sources_of(ds.paths, ds.pixel_size_nm)
    plan = tiling.plan_for(model, sources)  # micrographs → tiles (None: images used as they are)
    X, y = (plan.sources, ds.y[plan.owner]) if plan is not None else (sources, ds.y)
    if not X:
        raise InvalidDatasetError(f"{data}: none of the {len(ds)} images could be read "
                                          f"(e.g. {plan.failures()[0][1] if plan else ''})")
    with distributed.connect(scheduler, workers, device) as client:
        distributed.fit(client, X, y, model)
    if plan is not None and plan.failed:  # micrographs that gave no tile belong in the model's record too
        model.skipped_ = plan.failures() + model.skipped_
        model.train_info_["skipped"] = [[name, why] for name, why in model.skipped_]
        model.train_info_["n_skipped"] = len(model.skipped_)
    model.save(output)
    report_skipped(model.skipped_)
    tiles = f" ({len(X)} tiles of {len(ds) - len(plan.failed)} micrographs)" if plan is not None and model.tile else ""
    copies = model.train_info_.get("n_copies", 0)
    extra = f" (the head also on {copies} augmented or zoomed copies)" if copies else ""
    typer.echo(f"trained on {model.train_info_['n_images']} images{tiles}{extra}, classes "
               f"{', '.join(map(str, model.classes_))}; saved {output} ({model.timings_['total']:.1f} s)")


def predict(model_path: Path = typer.Argument(..., metavar="MODEL"),
            data: Path = typer.Argument(..., help="Folder, CSV manifest or image file."),
            output: Path = typer.Option(Path("predictions.csv"), "--output", "-o", help="CSV to write; - for "
                                        "standard output."),
            per_image: bool = typer.Option(False, "--per-image", help="With a tiling model: one row per micrograph "
                                           "(mean of its tiles' probabilities, share of tiles per class), not per tile."),
            min_margin: Optional[float] = typer.Option(
                None, "--min-margin", metavar="M", help="Also write margin (the answer's probability minus the "
                "runner-up's) and sure (yes when the margin is at least M) columns. evaluate --shift shows, on "
                "your data, from which margin on no acquisition change altered 5 % of the answers."),
            device: str = DEVICE, on_error: str = ON_ERROR, scheduler: Optional[str] = SCHEDULER,
            workers: int = WORKERS, fp16: Optional[bool] = FP16, precision: Optional[str] = PRECISION,
            missing_scale: Optional[str] = MISSING_SCALE,
            tile_stride: Optional[str] = TILE_STRIDE, crop_bottom: Optional[str] = CROP_BOTTOM) -> None:
    """Write predictions: CSV with path, (true,) predicted, one p_<class> column per class, (margin, sure,)
    and error."""
    from .. import checks, distributed

    if min_margin is not None:
        checks.real("--min-margin", min_margin, 0.0, 1.0)
    model = loaded(model_path, device, on_error, fp16, precision)
    check_saved_model_options(model, model_path, tile_stride=tile_stride)
    model.set_params(**micrograph_params(None, missing_scale, None, tile_stride, crop_bottom))
    if outputs.is_stdout(output):
        outputs.check_stdout()
    else:
        check_writable(output)  # an unwritable -o fails before the work, not after it
    ds = load(data, on_error, require_labels=False)
    outputs.refuse_inputs([output], [model_path], "the model")
    outputs.refuse_inputs([output], outputs.dataset_files(data, ds.paths))
    sources = tiling.sources_of(ds.paths, ds.pixel_size_nm)
    plan = tiling.plan_for(model, sources)
    X = plan.sources if plan is not None else sources
    with distributed.connect(scheduler, workers, device) as client:
        proba, skipped = distributed.predict_proba(client, X, model) if X else (np.zeros((0, len(model.classes_))), [])
    rows = _prediction_rows(ds, model.classes_, proba, dict(skipped), plan, per_image, bool(model.tile), min_margin)
    outputs.write_text(output, _csv_text(rows))
    unreadable = (plan.failures() if plan is not None else []) + list(skipped)
    report_skipped(unreadable)
    if len(ds) == 1 and not outputs.is_stdout(output):  # one image: its answer, not only a file name
        typer.echo(_answer(rows[1:], rows[0], per_image or plan is None or not model.tile))
    unit = "tile predictions" if plan is not None and model.tile and not per_image else "predictions"
    # the count says the run was not clean: the exit code is 0 with --on-error skip, as asked
    without = (f" ({len(unreadable)} of the images could not be read: their rows' error column says why)"
               if unreadable else "")
    outputs.message(f"wrote {len(rows) - 1} {unit} to {'standard output' if outputs.is_stdout(output) else output}"
                    f"{without}", output)


def _prediction_rows(ds, classes: np.ndarray, proba: np.ndarray, failed: dict[str, str],  # type: ignore[no-untyped-def]
                     plan: Optional[tiling.Plan], per_image: bool, tiled: bool,
                     min_margin: Optional[float] = None) -> list[list[object]]:
    """The CSV rows (header first): one per image, per tile, or per micrograph (``per_image``).

    Tile boxes are in the file's pixels; ``true`` is there when the data has labels; ``margin`` and
    ``sure`` with ``min_margin``."""
    from ..evaluate import answer_margin

    names = [str(p.relative_to(ds.root)) if p.is_relative_to(ds.root) else str(p) for p in ds.paths]
    labels = ds.labels
    answer_cols = [f"p_{c}" for c in classes] + (["margin", "sure"] if min_margin is not None else [])
    head: list[object] = ["path", *(["true"] if labels is not None else [])]

    def prob_cells(row: np.ndarray) -> list[object]:
        if np.isnan(row).any():
            return [""] * (1 + len(answer_cols))
        sure: list[object] = []
        if min_margin is not None:
            margin = float(answer_margin(row[None, :])[0])
            sure = [f"{margin:.6f}", "yes" if margin >= min_margin else "no"]
        return [classes[row.argmax()], *[f"{v:.6f}" for v in row], *sure]

    def true(i: int) -> list[object]:
        return [labels[i]] if labels is not None else []

    if plan is None:
        rows = [[*head, "predicted", *answer_cols, "error"]]
        for i, row in enumerate(proba):
            error = "" if not np.isnan(row).any() else failed.get(str(ds.paths[i]), "unreadable")
            rows.append([names[i], *true(i), *prob_cells(row), error])
        return rows
    errors = {i: str(e) for i, e in plan.failed}
    for t, src in enumerate(plan.sources):  # a tile's failure, reported once per micrograph
        why = failed.get(src.name if isinstance(src, tiling.Tile) else str(src))
        if why is not None:
            errors.setdefault(int(plan.owner[t]), why)
    if per_image or not tiled:
        agg = plan.aggregate(proba)
        share_cols = [f"share_{c}" for c in classes] if tiled else []
        rows = [[*head, *(["tiles"] if tiled else []), "predicted", *answer_cols, *share_cols, "error"]]
        for i in range(len(ds)):
            shares = [] if not tiled else [""] * len(classes) if np.isnan(agg.share[i]).any() else \
                [f"{v:.4f}" for v in agg.share[i]]
            error = errors.get(i, "") if np.isnan(agg.proba[i]).any() else ""
            rows.append([names[i], *true(i), *([int(agg.tiles[i])] if tiled else []), *prob_cells(agg.proba[i]),
                         *shares, error])
        return rows
    rows = [[*head, "tile", "top", "left", "height", "width", "predicted", *answer_cols, "error"]]
    for t, (src, row) in enumerate(zip(plan.sources, proba)):
        i = int(plan.owner[t])
        top, left, h, w = (round(v) for v in src.file_box()) if isinstance(src, tiling.Tile) else (0, 0, 0, 0)
        error = "" if not np.isnan(row).any() else failed.get(src.name, errors.get(i, "unreadable"))  # type: ignore[union-attr]
        rows.append([names[i], *true(i), src.index, top, left, h, w, *prob_cells(row), error])  # type: ignore[union-attr]
    for i, e in plan.failed:  # a micrograph with no tile still gets its row, with the reason
        rows.append([names[i], *true(i), "", "", "", "", "", *[""] * (1 + len(answer_cols)), str(e)])
    return rows


def _answer(rows: list[list[object]], header: list[object], whole: bool) -> str:
    """One image's answer in words: its class and probability (per micrograph: over its tiles)."""
    cols = {name: j for j, name in enumerate(header)}
    if not whole:  # tiles of one micrograph: say how they voted
        won = [r[cols["predicted"]] for r in rows if r[cols["predicted"]] != ""]
        counts = {c: won.count(c) for c in dict.fromkeys(won)}
        return f"{rows[0][0]}: {len(rows)} tiles; " + ", ".join(f"{c} {n}" for c, n in counts.items())
    row = rows[0]
    if row[cols["predicted"]] == "":
        return f"{row[0]}: unreadable ({row[cols['error']]})"
    tiles = f" over {row[cols['tiles']]} tiles" if "tiles" in cols else ""
    sure = "" if "sure" not in cols else f"; margin {float(str(row[cols['margin']])):.3f}" + (
        "" if row[cols["sure"]] == "yes" else ", not sure")
    return (f"{row[0]}: {row[cols['predicted']]} (p = {float(str(row[cols['p_' + str(row[cols['predicted']])]])):.3f}"
            f"{tiles}{sure})")


def _csv_text(rows: Sequence[Sequence[object]]) -> str:
    import io

    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue()


def encode(data: Path = typer.Argument(...), output: Path = typer.Option(..., "-o", "--output", help=".npy file"),
           model_path: Optional[Path] = typer.Option(None, "--model", help="Use this model's codebook (else fit one)."),
           density: float = DENSITY, k: int = K, image_size: Optional[str] = IMAGE_SIZE, device: str = DEVICE,
           backbone: str = BACKBONE, taps: Optional[str] = TAPS, seed: int = SEED, on_error: str = ON_ERROR,
           scheduler: Optional[str] = SCHEDULER, workers: int = WORKERS, faithful: bool = FAITHFUL,
           pca: Optional[str] = PCA, aspect: Optional[str] = ASPECT, normalize: Optional[str] = NORMALIZE,
           points: Optional[str] = POINTS, softness: Optional[str] = SOFTNESS, power: Optional[bool] = POWER,
           classifier: Optional[str] = CLASSIFIER, augment: Optional[int] = AUGMENT, zoom: Optional[str] = ZOOM,
           tta: Optional[int] = TTA, tta_zoom: Optional[str] = TTA_ZOOM,
           fp16: Optional[bool] = FP16, precision: Optional[str] = PRECISION,
           calibrate: Optional[Path] = CALIBRATE, scale: Optional[float] = SCALE,
           missing_scale: Optional[str] = MISSING_SCALE, tile: Optional[str] = TILE,
           tile_stride: Optional[str] = TILE_STRIDE, crop_bottom: Optional[str] = CROP_BOTTOM) -> None:
    """Write the VLAD codes (n, k·dim) float32 as .npy (NaN rows for skipped images), paths beside it
    (and, when images were skipped, <output>.errors.csv with why). With tiles: one row per tile,
    listed in <output>.tiles.csv. Once the new files are written, an <output>.errors.csv or
    <output>.tiles.csv of an earlier run that this run did not write is removed: it described other data."""
    from .. import distributed
    from .._files import write_atomic, write_bytes_atomic

    if outputs.is_stdout(output):
        raise WriteError("-o -: codes are a binary .npy file; give a file name")
    check_writable(output)  # an unwritable -o fails before the work, not after it
    ds = load(data, on_error, require_labels=False)
    errors_csv, tiles_csv = output.with_suffix(".errors.csv"), output.with_suffix(".tiles.csv")
    written = [output, output.with_suffix(".paths.txt"), errors_csv, tiles_csv]
    if model_path:
        outputs.refuse_inputs(written, [model_path], "the model")
    outputs.refuse_inputs(written, outputs.dataset_files(data, ds.paths))
    micro = micrograph_params(scale, missing_scale, tile, tile_stride, crop_bottom)
    if model_path:
        model = loaded(model_path, device, on_error, fp16, precision)
        check_saved_model_options(model, model_path, scale, tile, tile_stride)
        model.set_params(**{k: v for k, v in micro.items() if k in ("missing_scale", "tile_stride", "crop_bottom")})
    else:
        model = estimator(density, k, image_size, device, backbone, taps, seed, on_error, faithful, pca,
                          aspect=aspect, normalize=normalize, points=points, softness=softness, power=power, classifier=classifier, augment=augment,
                          zoom=zoom, tta=tta, tta_zoom=tta_zoom,
                          calibration=str(calibrate) if calibrate else None, **precision_of(precision, fp16),
                          **micro)
    sources = tiling.sources_of(ds.paths, ds.pixel_size_nm)
    plan = tiling.plan_for(model, sources)
    X = plan.sources if plan is not None else sources
    paths = [str(ds.paths[i]) for i in plan.owner] if plan is not None else [str(p) for p in ds.paths]
    with distributed.connect(scheduler, workers, device) as client:
        if not model_path:
            distributed.fit_codebook(client, X, model)
        encoded = distributed.encode(client, X, model)
    codes = np.full((len(X), model.codebook_.size), np.nan, dtype=np.float32)
    codes[encoded.indices] = encoded.codes
    write_atomic(output, lambda f: np.save(f, codes, allow_pickle=False))
    write_atomic(output.with_suffix(".paths.txt"), lambda f: f.write(outputs.encoded("\n".join(paths) + "\n")))
    tiled = plan is not None and bool(model.tile)
    if tiled:
        boxes = [[paths[t], src.index, *(round(v) for v in src.file_box())]  # type: ignore[union-attr]
                 for t, src in enumerate(X)]
        write_bytes_atomic(tiles_csv,
                           _csv_bytes([("path", "tile", "top", "left", "height", "width"), *boxes]))  # type: ignore[list-item]
    skipped = (plan.failures() if plan is not None else []) + model.describe_failures(X, encoded)
    if skipped:  # the NaN rows' reasons, beside the codes
        write_bytes_atomic(errors_csv, _csv_bytes([("path", "error"), *skipped]))
    # Only once the new codes and paths are written: a run that fails before then leaves the old set as it was.
    _remove_stale([f for f, wrote in ((tiles_csv, tiled), (errors_csv, bool(skipped))) if not wrote])
    report_skipped(skipped)
    typer.echo(f"wrote codes {codes.shape} to {output}")


def _remove_stale(side_files: list[Path]) -> None:
    """Remove these side files of an earlier ``encode`` (files or links only: a folder of that name is
    not one); ``WriteError`` when one cannot be, since it would pass for this run's."""
    for path in side_files:
        if not (path.is_file() or path.is_symlink()):
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise WriteError(f"{path} is left from an earlier run and describes other data, but cannot be removed "
                             f"({exc.strerror or exc}); the new codes are written: delete it by hand") from None


def _csv_bytes(rows: list[tuple[str, str]]) -> bytes:
    return outputs.encoded(_csv_text(rows))
