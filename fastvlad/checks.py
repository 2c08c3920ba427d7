"""Input checks with fix-it messages, run before any heavy work."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import config, datasets, intensity
from .backends import DEVICES
from .classifier import LINEAR
from .errors import (
    FastVLADError,
    ImageReadError,
    InvalidDatasetError,
    ParameterError,
    skip_advice,
)
from .hypercolumn import INTERPOLATION_MODES, points_for_density
from .images import (
    RESAMPLE,
    Derived,
    ImageSource,
    check_size,
    probe,
    source_name,
    zoomed_size,
)

ON_ERROR = ("raise", "skip")
CLASSIFIERS = ("xgboost", *LINEAR)  # the paper's head, then the linear ones
ASPECTS = ("keep", "squash")
#: How an image's points are drawn: "per_image" seeded by its pixels too, "shared" by its size only.
POINT_DRAWS = ("per_image", "shared")
#: How many unreadable images a fail-fast error lists by name.
LISTED = 10


def image_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``224`` → (224, 224); ``(H, W)`` as is; ``None`` → native size."""
    return check_size(size)


def one_side(size: Any) -> bool:
    """Whether ``image_size`` gives one side (an int), which ``aspect="keep"`` makes the short side."""
    return isinstance(size, (int, np.integer)) and not isinstance(size, (bool, np.bool_))


def parse_image_size(text: str) -> int | tuple[int, int] | None:
    """``--image-size`` text (N, HxW or 'native') as an ``image_size`` parameter (the CLI's and the bench's)."""
    if text.lower() == "native":
        return None
    try:
        parts = [int(p) for p in text.lower().replace("×", "x").split("x")]
    except ValueError:
        raise FastVLADError(f"--image-size {text!r}: use N, HxW or 'native'") from None
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def real(name: str, value: Any, lo: float, hi: float = math.inf, lo_open: bool = False, hint: str = "") -> float:
    """``value`` as a finite float in [lo, hi] ((lo, hi] with ``lo_open``), or a ``ParameterError``."""
    v = as_float(value)
    if not (math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi):
        span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]" if math.isfinite(hi) else f"{'>' if lo_open else '≥'} {lo:g}"
        raise ParameterError(f"{name}={shown(value)}: must be a number {span}{hint}")
    return v


def integer(name: str, value: Any, lo: int, hint: str = "", hi: int | None = None) -> int:
    """``value`` as an int ≥ ``lo`` (and ≤ ``hi``; integral floats accepted), or a ``ParameterError``."""
    v = as_float(value)
    exact = None
    if math.isfinite(v) and v == int(v):
        # An int is compared as it is: as a float, 2**63 - 1 rounds up past a bound of 2**63 - 1.
        exact = int(value) if isinstance(value, (int, np.integer)) else int(v)
    if exact is None or exact < lo or (hi is not None and exact > hi):
        span = f"≥ {lo}" if hi is None else f"from {lo} to {hi}"
        raise ParameterError(f"{name}={shown(value)}: must be an integer {span}{hint}")
    return exact


def as_float(value: Any) -> float:
    """A number (not a bool) as a float; NaN for anything else, and for an int too large for a float
    (10**400 from an edited model file), which ``float()`` would raise ``OverflowError`` on."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, (bool, np.bool_)):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.nan


def shown(value: Any) -> str:
    """``repr(value)``, cut short: an int of thousands of digits is not a message."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}…({len(text)} characters)"


def seed(est: Any) -> int:
    """An estimator's ``random_state`` as the int every seeded draw needs (an integral float such as
    0.0 is accepted, as for every integer parameter, and NumPy's and XGBoost's seeds refuse it)."""
    return integer("random_state", est.random_state, 0, hi=config.MAX_SEED)


#: The estimator parameters that are True or False (the model file's loader checks them too).
FLAGS = ("zoom_jitter", "intra", "power", "whiten")


def flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool (NumPy's too), else a ``ParameterError``: a string such as "no"
    would read as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise ParameterError(f"{name}={value!r}: give True or False")
    return bool(value)


def choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """``value`` when it is one of the strings ``allowed``; else a ``ParameterError`` naming ``name``."""
    if not isinstance(value, str) or value not in allowed:
        raise ParameterError(f"{name}={value!r} is unknown; use one of {tuple(allowed)}")
    return value


def runtime(est: Any) -> None:
    """The parameters a fitted model's ``encode``/``predict`` use (set_params may change them)."""
    choice("device", est.device, DEVICES)
    choice("on_error", est.on_error, ON_ERROR)
    if est.batch_size is not None:
        integer("batch_size", est.batch_size, 1)
    from .quantize import check_precision

    check_precision(est.precision, est.fp16)
    if est.calibration is not None and not isinstance(est.calibration, (str, os.PathLike)):
        raise ParameterError(f"calibration={est.calibration!r}: give the path of images to calibrate the int8 "
                             "CNN on (a dataset folder, CSV manifest or image), or None for the built-in set")
    tiling(est)
    intensity.check(est.normalize)
    if integer("tta", est.tta, 0, " (flipped copies averaged at predict: 0 to 3)") > 3:
        raise ParameterError(f"tta={est.tta!r}: an image has 3 flips (left–right, up–down, both); use 0 to 3")
    zoom(est.tta_zoom, image_size(est.image_size), "tta_zoom")


def parameters(est: Any, n_images: int | None = None) -> None:
    """Validate an estimator's parameters (ranges, names) before it touches any image.

    ``n_images``: how many images the codebook sample can draw from, when known.
    """
    density = real("density", est.density, 0, 100, lo_open=True, hint=" percent (the paper used 10)")
    k = integer("k", est.k, 2, " (a codebook needs at least 2 centres; the paper used 100)")
    runtime(est)
    choice("interpolation", est.interpolation, INTERPOLATION_MODES)
    choice("resample", est.resample, RESAMPLE)
    codebook_images = integer("codebook_images", est.codebook_images, 1)
    integer("n_estimators", est.n_estimators, 1)
    integer("max_depth", est.max_depth, 1)
    integer("max_bin", est.max_bin, 2)
    seed(est)
    if getattr(est, "pca", None) is not None:
        integer("pca", est.pca, 1, " (hypercolumn PCA components, or None for the full hypercolumn)")
    real("learning_rate", est.learning_rate, 0, lo_open=True)
    real("colsample_bynode", est.colsample_bynode, 0, 1, lo_open=True)
    real("subsample", est.subsample, 0, 1, lo_open=True)
    real("min_child_weight", est.min_child_weight, 0)
    integer("augment", est.augment, 0, " (augmented copies of every training image, each one more CNN pass per "
            "image; 0: none)", hi=config.MAX_AUGMENT)
    for name in FLAGS:
        flag(name, getattr(est, name))
    head(est)
    choice("aspect", est.aspect, ASPECTS)
    choice("points", est.points, POINT_DRAWS)
    if est.softness is not None:
        real("softness", est.softness, 0, MAX_SOFTNESS, lo_open=True,
             hint=" (soft assignment's sharpness; None: the nearest centre only)")
    backbone_and_taps(est.backbone, est.taps)
    size = image_size(est.image_size)
    zoom(est.zoom, size)
    _enough_points(k, density, size, min(codebook_images, n_images or codebook_images))


def head(est: Any) -> None:
    """The classifier head's parameters (``FastVLAD.fit_codes`` fits only the head, and checks only
    these): ``classifier``, ``class_weight``, ``C``, ``alpha``, ``code_pca``."""
    choice("classifier", est.classifier, CLASSIFIERS)
    if est.class_weight not in (None, "balanced"):
        raise ParameterError(f"class_weight={est.class_weight!r}: use 'balanced' (every class weighs the same in "
                             "training, whatever its number of images) or None")
    real("C", est.C, 0, lo_open=True, hint=" (the logistic head's inverse L2 strength)")
    if est.alpha is not None:  # None: the strength measured for what the head sees (classifier.ridge_alpha)
        real("alpha", est.alpha, 0, lo_open=True, hint=" (the ridge head's L2 strength, or None)")
    if getattr(est, "code_pca", None) is not None:
        integer("code_pca", est.code_pca, 1, " (principal axes of the codes the linear head sees, or None)")


#: Largest ``softness``: at 1e5 soft assignment already gives the nearest centre's code (tests/test_vlad.py),
#: and far beyond it ``softness / unit`` leaves float32's range.
MAX_SOFTNESS = 1e6

#: A ``zoom`` factor's range (a copy at a quarter to four times the magnification), and how many.
ZOOM_RANGE = (0.25, 4.0)
MAX_ZOOMS = 8


def zoom(value: Any, size: tuple[int, int] | None, name: str = "zoom") -> tuple[float, ...]:
    """``value`` (the ``name`` parameter: ``zoom`` or ``tta_zoom``) as a tuple of factors in
    ``ZOOM_RANGE`` (at most ``MAX_ZOOMS``), each giving a valid input size from ``size`` (the checked
    ``image_size``, which a zoom needs), or a ``ParameterError``."""
    listed = isinstance(value, (tuple, list)) or (isinstance(value, np.ndarray) and value.ndim == 1)
    option = name.replace("_", "-")
    if not listed or len(value) > MAX_ZOOMS:
        raise ParameterError(f"{name}={value!r}: give up to {MAX_ZOOMS} factors on the input size, e.g. (1.4, 0.7) "
                             f"(CLI: --{option} 1.4,0.7), or () for none")
    factors = tuple(real(f"{name}[{i}]", v, *ZOOM_RANGE, hint=" (a factor on the input size)") for i, v in enumerate(value))
    if factors and size is None:
        raise ParameterError(f"{name}={value!r} needs an image_size: at the native size (image_size=None) there is "
                             f"no input size to scale; set {name}=() (CLI: --{option} none) to use the native size")
    for f in factors:
        zoomed = zoomed_size(size, f)  # type: ignore[arg-type]
        try:
            check_size(zoomed)
        except ParameterError as exc:
            raise ParameterError(f"{name}={value!r}: image_size × {f:g} = {zoomed[0]}×{zoomed[1]}, which is not a usable "
                                 f"input size ({exc}); give a larger image_size or set {name}=()") from None
    return factors


def backbone_and_taps(backbone: Any, taps: Any) -> None:
    """A backbone name or ONNX path, and taps None or a list of non-empty tensor names."""
    if not isinstance(backbone, (str, os.PathLike)):
        raise ParameterError(f"backbone={backbone!r}: give 'vgg16' or the path of an ONNX model")
    if taps is not None and (isinstance(taps, str) or not all(isinstance(t, str) and t for t in taps)):
        raise ParameterError(f"taps={taps!r}: give a list of tensor names, e.g. ['conv1', 'conv2'] "
                             "(CLI: --taps conv1,conv2)")


def _enough_points(k: int, density: float, size: tuple[int, int] | None, n_images: int) -> None:
    """k must not exceed the points the codebook is fitted on (as ``Encoder.codebook_sample`` samples them)."""
    per_image = points_for_density(density)
    if size is not None:
        per_image = min(per_image, size[0] * size[1])
    per_image = max(1, min(per_image, config.CODEBOOK_MAX_POINTS // n_images))
    if k > per_image * n_images:
        raise ParameterError(f"k={k} exceeds the {per_image * n_images} points the codebook is fitted on "
                             f"({n_images} image(s) × {per_image} points); lower k, or raise density or the "
                             "number of codebook images")


def sources(X: Any) -> list[ImageSource]:
    """A list of paths or image arrays; a 3-D/4-D array is a stack of images."""
    if isinstance(X, (str, os.PathLike)):
        raise ParameterError(f"X={str(X)!r}: pass a list of images (e.g. [path]), not a single path")
    if isinstance(X, Mapping):  # iterating a dict gives its keys, not the images
        raise ParameterError(f"X is a mapping ({type(X).__name__}): pass a list of images, e.g. list(X.values())")
    if hasattr(X, "columns") and hasattr(X, "iloc"):  # a pandas DataFrame iterates over its column names
        raise ParameterError(f"X is a table with columns {list(X.columns)[:5]}: pass its column of paths, e.g. "
                             "X['path']")
    if isinstance(X, np.ndarray) and X.ndim == 1 and X.dtype.kind in "UO":
        X = X.tolist()  # paths (or images of several sizes) in an array, as train_test_split returns a list's
    if isinstance(X, np.ndarray):
        if X.ndim not in (3, 4):
            raise ParameterError(f"X has shape {X.shape}; an array of images must be (n, H, W) or (n, H, W, C)")
        if len(X) == 0:
            raise InvalidDatasetError("X is empty: no images to process")
        return list(X)
    try:
        items = list(X)
    except TypeError:
        raise ParameterError(f"X of type {type(X).__name__} is not a sequence of images") from None
    if not items:
        raise InvalidDatasetError("X is empty: no images to process")
    for i, item in enumerate(items):
        if isinstance(item, str) and not item.strip():  # Path("") is the current folder
            raise ParameterError(f"X[{i}] is an empty path; give an image file or array")
        if isinstance(item, os.PathLike) and not isinstance(item, Path):
            items[i] = Path(item)
        elif not isinstance(item, (str, Path, np.ndarray, Derived)):
            raise ParameterError(f"X[{i}] is {'None' if item is None else 'a ' + type(item).__name__}; each image "
                                 "must be a path, a NumPy array or a fastvlad.tiling.Micrograph")
    return items


def readable(X: Sequence[ImageSource]) -> None:
    """Fail fast, before the CNN starts: check every image's header (or array shape and dtype).

    All unreadable images are named in one ``ImageReadError`` (the first ``LISTED``), rather
    than the first one stopping a long run hours in. Damage past the header is found later,
    when the image is decoded.
    """
    bad: list[ImageReadError] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's notes on damaged files: the errors say it
        for i, src in enumerate(X):
            try:
                probe(src, source_name(src, i))
            except ImageReadError as exc:
                bad.append(exc)
    if len(bad) == 1:
        raise bad[0]
    if bad:
        listed = "\n  ".join(str(e) for e in bad[:LISTED])
        more = f"\n  … and {len(bad) - LISTED} more" if len(bad) > LISTED else ""
        raise ImageReadError(f"{len(bad)} of {len(X)} images", f"cannot be read:\n  {listed}{more}\n",
                             "fix or remove them" + skip_advice(", or skip them with on_error='skip' (CLI: --on-error skip)"))


def label_array(y: Any, n: int, what: str = "image") -> np.ndarray:
    """``y`` as ``(n,)`` labels, one per ``what``: strings or numbers, no None, NaN or bytes."""
    if isinstance(y, Iterator):  # a generator, as X may be: NumPy would make it one 0-d object
        y = list(y)
    labels = np.asarray(y)
    if labels.ndim != 1 or len(labels) != n:
        raise ParameterError(f"y has shape {labels.shape}; it must be one label per {what} ({n})")
    if not _plain_labels(labels):
        raise ParameterError(f"y of dtype {labels.dtype}: labels must be strings or numbers, with no None or NaN "
                             "(bytes: decode them to str first)")
    if labels.dtype == object or not isinstance(y, np.ndarray):
        _one_kind(labels.tolist() if labels.dtype == object else list(y))
    return labels


def label_kind(value: Any) -> str:
    """"text", "bool", "number" or "other": the kinds of label that must not be mixed."""
    if isinstance(value, (str, np.str_)):
        return "text"
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    return "number" if isinstance(value, (int, float, np.number)) else "other"


def _one_kind(values: list[Any]) -> None:
    """Labels of one kind: NumPy would make 1 and '1' one class "1" (and True and 1 one class), or fail
    to sort a mix of text and numbers; and no text label NumPy would cut short."""
    first: dict[str, Any] = {}
    for v in values:
        first.setdefault(label_kind(v), v)
        if isinstance(v, str) and v.endswith("\0"):  # NumPy's text arrays drop trailing NULs: "a\0" would be "a"
            raise InvalidDatasetError(f"class name {ascii(v)} holds control characters; rename it")
    first.pop("other", None)
    if len(first) > 1:
        shown = " and ".join(f"{kind} ({v!r})" for kind, v in first.items())
        raise ParameterError(f"y mixes {shown}: give every label as text, or every label as a number (1 and '1' "
                             "would become one class)")


def sample_weights(w: Any, n: int) -> np.ndarray:
    """``(n,)`` float64 weights: finite, ≥ 0, not all 0."""
    a = np.asarray(w)
    if a.shape != (n,) or a.dtype.kind not in "biuf" or not np.isfinite(a).all() or (a < 0).any() or not a.any():
        raise ParameterError(f"sample_weight of shape {a.shape} and dtype {a.dtype}: give {n} finite numbers ≥ 0, "
                             "not all 0")
    return a.astype(np.float64)


def codes(codes: Any, codebook: np.ndarray | None) -> np.ndarray:
    """VLAD codes ``(n, D)`` for ``fit_codes``, as given: finite numbers, and D = the codebook's k·p
    when there is one (codes of another encoder would fit a head that ``predict`` cannot feed)."""
    a = np.asarray(codes)
    if a.ndim != 2 or a.dtype.kind not in "iuf" or not len(a):
        raise ParameterError(f"codes of shape {a.shape} and dtype {a.dtype}: give a 2-D array of numbers, one "
                             "row per image (as transform returns)")
    # Checked as float32, the head's type: float64 codes past its range would become infinity there.
    with np.errstate(over="ignore", invalid="ignore"):
        as_float32 = a.astype(np.float32, copy=False)
    if not np.isfinite(as_float32).all():
        raise ParameterError("codes hold NaN or infinity (or numbers past float32's range): give codes as transform "
                             "returns them")
    if codebook is not None and a.shape[1] != codebook.size:
        raise ParameterError(f"codes have {a.shape[1]} columns but this model's codebook makes codes of {codebook.size} "
                             f"({codebook.shape[0]} centres × {codebook.shape[1]}); give codes from this model's transform")
    return a


def sources_and_labels(X: Any, y: Any) -> tuple[list[ImageSource], np.ndarray]:
    """Images and their labels, same length, at least two classes."""
    items = sources(X)
    return items, training_labels(y, len(items))


def training_labels(y: Any, n: int, what: str = "image") -> np.ndarray:
    """``label_array`` of labels a classifier can learn: at least two classes, each a name a model can write."""
    labels = label_array(y, n, what)
    classes = np.unique(labels)
    problem = datasets.class_names_problem([c for c in classes.tolist() if isinstance(c, str)])
    if problem:
        raise InvalidDatasetError(f"{problem}; rename them")
    enough_classes(classes)
    if len(classes) > config.MAX_CLASSES:
        raise InvalidDatasetError(f"{len(classes)} classes: at most {config.MAX_CLASSES} (a model file holds no more)")
    return labels


def _plain_labels(labels: np.ndarray) -> bool:
    if labels.dtype.kind == "f":
        return bool(np.isfinite(labels).all())
    if labels.dtype.kind == "O":
        return all(isinstance(v, (str, int, np.integer)) and not isinstance(v, bool) for v in labels)
    return labels.dtype.kind in "biuU"


def enough_classes(classes: np.ndarray) -> None:
    """At least two distinct training labels ``(n_classes,)``."""
    if len(classes) < 2:
        raise InvalidDatasetError(f"only one class ({[c.item() if hasattr(c, 'item') else c for c in classes]}) in the "
                                  "training labels; need at least two")


# -- micrographs: physical scale and tiling (fastvlad.tiling) ---------------------------------
MISSING_SCALE = ("raise", "ignore")
CROP_AUTO = "auto"


def parse_shape(name: str, value: Any) -> tuple[int, int] | None:
    """``tile``/``tile_stride``: None, N (N×N), (H, W) or the text "HxW" / "N"; sides ≥ 1."""
    if value is None:
        return None
    given = value
    if isinstance(value, str):
        try:
            parts = [int(p) for p in value.lower().replace("×", "x").split("x")]
        except ValueError:
            parts = []
        value = parts[0] if len(parts) == 1 else tuple(parts) if parts else value
    sides: list[Any] = [value] if isinstance(value, (int, np.integer)) else list(value) \
        if isinstance(value, (tuple, list)) else []
    if len(sides) not in (1, 2) or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
                                            for s in sides):
        raise ParameterError(f"{name}={given!r}: give N, (height, width) or 'HxW' in pixels, e.g. '306x448' "
                             "(height × width, as image_size)")
    return int(sides[0]), int(sides[-1])


def tiling(est: Any) -> None:
    """The micrograph parameters: ``scale_nm_per_px``, ``missing_scale``, ``tile``, ``tile_stride``,
    ``crop_bottom`` (absent on estimators that predate them: then unused)."""
    scale = getattr(est, "scale_nm_per_px", None)
    if scale is not None:
        real("scale_nm_per_px", scale, 0, lo_open=True, hint=" nm per pixel (or None: keep every image's own scale)")
    choice("missing_scale", getattr(est, "missing_scale", "raise"), MISSING_SCALE)
    tile = parse_shape("tile", getattr(est, "tile", None))
    if tile is not None and min(tile) < MIN_TILE:
        raise ParameterError(f"tile={est.tile!r}: each side must be at least {MIN_TILE} pixels")
    stride = parse_shape("tile_stride", getattr(est, "tile_stride", None))
    if stride is not None and tile is None:
        raise ParameterError(f"tile_stride={est.tile_stride!r} without tile: set tile too (CLI: --tile HxW)")
    if stride is not None and tile is not None and (stride[0] > tile[0] or stride[1] > tile[1]):
        raise ParameterError(f"tile_stride={est.tile_stride!r} is longer than tile={est.tile!r} on a side: the pixels "
                             "between tiles would never be seen; give a stride at most the tile (the default, the "
                             "tile itself, overlaps nothing), or a larger tile")
    crop = getattr(est, "crop_bottom", None)
    if crop is not None and crop != CROP_AUTO:
        integer("crop_bottom", crop, 0, " pixels, or 'auto' to detect an SEM data bar, or None")


#: Smallest tile side: VGG16's four poolings need 16 pixels (images.MIN_SIDE).
MIN_TILE = 16
