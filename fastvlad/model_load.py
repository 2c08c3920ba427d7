"""What a model file must hold to become a model: ``estimator.load``'s checks of every member of a
``model_file.ModelContents`` and its assembly into a fitted ``FastVLAD``, and ``save``'s check that
``load`` will take what it writes. Any problem is a ``ModelFormatError`` naming the file and the
member; nothing is parsed by a library (XGBoost) before it is checked here."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from . import (
    booster_check,
    checks,
    classifier,
    config,
    datasets,
    model_file,
    quantize,
    weights,
)
from .backbone import DEFAULT_BACKBONE
from .errors import FastVLADError, ModelFormatError, ParameterError
from .projection import Projection

if TYPE_CHECKING:
    from .estimator import FastVLAD

#: Parameters added after model files were first written, with the values those files' models
#: were trained with (a file without them means these, whatever today's defaults are).
LEGACY_PARAMS: dict[str, Any] = {"aspect": "squash", "classifier": "xgboost", "C": 100.0, "class_weight": None,
                                 "normalize": "none", "augment": 0, "tta": 0, "precision": "fp32",
                                 "calibration": None, "points": "per_image", "zoom": (), "tta_zoom": (),
                                 "zoom_jitter": False, "softness": None, "code_pca": None}


def model_from_contents(path: str | os.PathLike[str], contents: model_file.ModelContents,
                        cls: type[FastVLAD]) -> FastVLAD:
    """``estimator.load``'s checks and assembly of a model file's members into a ``cls`` (``path``
    names the file in errors)."""
    model = _model_from_config(path, contents.config, contents.codebook, cls)
    model.quantized_ = quantize.check_record(path, contents.config.get("quantized"))
    model.codebook_ = contents.codebook
    model.projection_ = _loaded_projection(path, model, contents)
    _check_taps(path, model, contents.codebook)
    model.head_ = _loaded_head(path, model, contents)
    return model


def check_loadable(path: str | os.PathLike[str], contents: model_file.ModelContents, cls: type[FastVLAD]) -> None:
    """``ParameterError`` when ``load`` would refuse what ``save`` is about to write: a parameter tied
    to the fitted arrays (``k``, ``pca``, ``classifier``, ``code_pca``, ``taps``) set after the fit had
    made a file that ``load`` called damaged. Checked on the members as ``load`` would read them."""
    as_read = dataclasses.replace(contents, config=json.loads(json.dumps(contents.config)))
    try:
        model_from_contents(path, as_read, cls)
    except ModelFormatError as exc:
        detail = str(exc).removeprefix(f"{path}: ").removeprefix("config.json: ")
        detail = detail.removesuffix("; the file is damaged or edited")
        raise ParameterError(f"{path}: not saved: this model's parameters no longer match what it fitted ({detail}); "
                             "set them back, or fit again") from None


def _check_taps(path: str | os.PathLike[str], model: FastVLAD, codebook: np.ndarray) -> None:
    """The taps of a loaded model: distinct, those its ``taps`` parameter names (or the embedded
    VGG16's five), and, on the embedded VGG16, tensors of it whose channels sum to the width its
    projection or codebook ``(k, p or dim)`` takes. Otherwise the first encode would fail with an
    error about arrays or ONNX Runtime's, naming no model file. A backbone of the user's own is only
    opened at the first encode (its SHA-256 checked then), so its widths are checked there."""
    taps = model.taps_
    if len(set(taps)) != len(taps):
        raise ModelFormatError(f"{path}: config.json names a tap more than once ({list(taps)}); the file is damaged "
                               "or edited")
    default = str(model.backbone) == DEFAULT_BACKBONE
    named = tuple(model.taps) if model.taps else weights.VGG16_TAPS if default else taps
    if taps != named:
        raise ModelFormatError(f"{path}: config.json's taps {list(taps)} are not those of its taps parameter "
                               f"({list(named)}); the file is damaged or edited")
    if not default:
        return
    channels = weights.vgg16_channels()
    unknown = [t for t in taps if t not in channels]
    if unknown:
        raise ModelFormatError(f"{path}: taps {unknown} are not tensors of the embedded VGG16; the file is damaged "
                               "or edited")
    dim = sum(channels[t] for t in taps)
    member, width = (("projection.npy", model.projection_.dim) if model.projection_ is not None else
                     ("codebook.npy", int(codebook.shape[1])))
    if width != dim:
        raise ModelFormatError(f"{path}: its taps give {dim}-dim hypercolumns but {member} takes {width}; the file is "
                               "damaged or edited")


def _loaded_head(path: str | os.PathLike[str], model: FastVLAD, contents: model_file.ModelContents) -> Any:
    """The classifier head: ``linear.npy`` (checked against the classes and the code width), or
    ``booster.ubj``, checked in Python before XGBoost parses it."""
    expected = "linear.npy" if model.classifier in classifier.LINEAR else "booster.ubj"
    if expected == "linear.npy" and contents.linear is None:  # named before the axes a linear head would take
        raise ModelFormatError(f"{path}: classifier={model.classifier!r} needs linear.npy, which is missing")
    axes = _loaded_axes(path, model, contents)
    if contents.linear is not None:
        dims = axes.axes.shape[1] if axes is not None else contents.codebook.size
        width = (len(model.classes_), dims + 1)
        if expected != "linear.npy" or contents.linear.shape != width:
            raise ModelFormatError(f"{path}: linear.npy has shape {contents.linear.shape}, but classifier="
                                   f"{model.classifier!r} with {width[0]} classes and {width[1] - 1} "
                                   f"{'code axes' if axes is not None else 'code dims'} needs {expected}"
                                   f"{' of shape ' + str(width) if expected == 'linear.npy' else ''}; "
                                   "the file is damaged or edited")
        return classifier.LinearHead.from_array(contents.linear, axes)
    if expected != "booster.ubj" or contents.booster is None:
        raise ModelFormatError(f"{path}: classifier={model.classifier!r} needs {expected}, which is missing")
    try:
        booster = booster_check.checked(contents.booster, len(model.classes_), contents.codebook.size)
    except booster_check.BoosterError as exc:
        raise ModelFormatError(f"{path}: booster.ubj: {exc}; the file is damaged or edited") from None
    try:
        return classifier.from_bytes(booster)
    except Exception as exc:  # XGBoost refusing a checked model: still the file's fault
        raise ModelFormatError(f"{path}: the XGBoost model cannot be read ({exc})") from None


def _loaded_axes(path: str | os.PathLike[str], model: FastVLAD,
                 contents: model_file.ModelContents) -> classifier.CodeAxes | None:
    """The linear head's ``CodeAxes`` (``code_axes.npy``), there exactly when the head uses them
    (``classifier.uses_code_axes``): ``(d + 1, code width)`` with 1 ≤ d ≤ code_pca."""
    a, dims = contents.code_axes, model.code_pca
    if dims is None or not classifier.uses_code_axes(model):
        if a is not None:
            raise ModelFormatError(f"{path}: code_axes.npy is there but config.json says code_pca={model.code_pca} "
                                   f"with classifier={model.classifier!r}, which uses none; the file is damaged or "
                                   "edited")
        return None
    if a is None:
        raise ModelFormatError(f"{path}: the model was trained with code_pca={dims} but has no code_axes.npy")
    if a.shape[1] != contents.codebook.size or not 2 <= a.shape[0] <= int(dims) + 1:
        raise ModelFormatError(f"{path}: code_axes.npy has shape {a.shape}; code_pca={dims} and "
                               f"{contents.codebook.size}-dim codes need (1 to {dims} + 1, "
                               f"{contents.codebook.size}); the file is damaged or edited")
    return classifier.CodeAxes.from_array(a)


def _class_values(classes: list[Any]) -> bool:
    """Whether ``classes`` is a list of distinct labels as ``save`` writes them: names, numbers or
    booleans, one kind (a label keeps its type through save and load)."""
    kinds = {checks.label_kind(c) for c in classes}
    if len(kinds) != 1 or "other" in kinds or len(set(classes)) != len(classes):
        return False
    return all(datasets.class_name(c) for c in classes) if kinds == {"text"} else True


_CONFIG_KEYS = {"params", "classes", "backbone_sha256", "taps"}
_CONFIG_OPTIONAL = {"train", "versions", "quantized"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _model_from_config(path: str | os.PathLike[str], cfg: dict[str, Any], codebook: np.ndarray,
                       cls: type[FastVLAD]) -> FastVLAD:
    """An unfitted ``FastVLAD`` with the parameters and fitted names of ``config.json``, every field
    checked: known keys only, the types ``save`` writes, parameters within ``checks.parameters``'
    ranges, ``k`` equal to the codebook's centres. Any problem is a ``ModelFormatError``."""
    def bad(problem: str) -> ModelFormatError:
        return ModelFormatError(f"{path}: config.json: {problem}; the file is damaged or edited")

    missing, unknown = sorted(_CONFIG_KEYS - set(cfg)), sorted(set(cfg) - _CONFIG_KEYS - _CONFIG_OPTIONAL)
    if missing or unknown:
        raise bad(f"missing field(s) {missing}" if missing else f"unknown field(s) {unknown}")
    params = cfg["params"]
    if not isinstance(params, dict):
        raise bad("params must be an object")
    unknown = sorted(set(params) - set(cls().get_params()))
    if unknown:
        raise bad(f"unknown parameter(s) {unknown}")
    params = {**LEGACY_PARAMS, **params}
    for key in ("image_size", "tile", "tile_stride", "zoom", "tta_zoom"):  # JSON lists; a file without tile/scale: untiled
        if isinstance(params.get(key), list):
            params[key] = tuple(params[key])
    if params.get("taps") is not None and not isinstance(params["taps"], list):
        raise bad(f"taps={params['taps']!r} must be a list of names")
    flags = [name for name in (*checks.FLAGS, "fp16") if not isinstance(params.get(name, False), bool)]
    if flags:
        raise bad(f"parameter(s) {flags} must be true or false")
    model = cls(**params)
    try:
        checks.parameters(model)
    except FastVLADError as exc:
        raise bad(str(exc)) from None
    if model.k != codebook.shape[0]:
        raise bad(f"k={model.k} but codebook.npy has {codebook.shape[0]} centres")
    classes, taps, sha = cfg["classes"], cfg["taps"], cfg["backbone_sha256"]
    if not (isinstance(classes, list) and 2 <= len(classes) <= config.MAX_CLASSES and _class_values(classes)):
        raise bad(f"classes must be a list of 2 to {config.MAX_CLASSES} distinct labels, all names (non-empty, "
                  "without control characters), all numbers or all true/false")
    if not (isinstance(taps, list) and taps and all(isinstance(t, str) and t for t in taps)):
        raise bad("taps must be a non-empty list of tensor names")
    if not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        raise bad("backbone_sha256 must be 64 lowercase hex digits")
    train = cfg.get("train", {})
    if not isinstance(train, dict) or not isinstance(cfg.get("versions", {}), dict):
        raise bad("train and versions must be objects")
    ratio = train.get("pca_explained_variance", 0.0)
    if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0.0 <= ratio <= 1.0):
        raise bad(f"train.pca_explained_variance={ratio!r} must be a number in [0, 1]")
    scales = train.get("input_scale", [1.0, 1.0, 1.0])
    values = [checks.as_float(v) for v in scales] if isinstance(scales, list) and len(scales) == 3 else [math.nan]
    if not (all(0.0 < v < math.inf for v in values) and values == sorted(values)):
        raise bad(f"train.input_scale={checks.shown(scales)} must be [min, median, max]: three positive numbers "
                  "in order")
    skipped, timings = train.get("skipped", []), train.get("timings", {})
    if not (isinstance(skipped, list) and all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
                                              for p in skipped)):
        raise bad("train.skipped must be a list of [image, reason] pairs")
    if not (isinstance(timings, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v) for v in timings.values())):
        raise bad("train.timings must map stage names to seconds")
    model.classes_ = np.array(classes)
    model.backbone_sha256_ = sha
    model.taps_ = tuple(taps)
    model.train_info_ = train
    # the fitted attributes a model has after fit, from the fit's record
    model.skipped_ = [(name, why) for name, why in skipped]
    model.timings_ = {str(stage): float(seconds) for stage, seconds in timings.items()}
    return model


def _loaded_projection(path: str | os.PathLike[str], model: FastVLAD,
                       contents: model_file.ModelContents) -> Projection | None:
    """The hypercolumn PCA of a loaded model, checked against its parameters and codebook."""
    if contents.projection is None:
        if model.pca and model.pca < contents.codebook.shape[1]:  # hypercolumns were wider than pca
            raise ModelFormatError(f"{path}: the model was trained with pca={model.pca} but has no projection.npy")
        return None
    proj = Projection.from_array(contents.projection, cast(float, model.train_info_.get("pca_explained_variance", 0.0)))
    if model.pca != proj.components:
        raise ModelFormatError(f"{path}: projection.npy gives {proj.components} dims but config.json says "
                               f"pca={model.pca}; the file is inconsistent, re-save the model")
    if proj.components != contents.codebook.shape[1]:
        raise ModelFormatError(f"{path}: projection.npy gives {proj.components} dims but the codebook has "
                               f"{contents.codebook.shape[1]}; the file is inconsistent, re-save the model")
    return proj
