"""``FastVLAD``: the scikit-learn-style estimator — codebook + VLAD encoder + XGBoost classifier."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from . import backends, checks, classifier, model_file, quantize
from ._version import __version__
from .backbone import DEFAULT_BACKBONE
from .encoder import Encoded, Encoder, Timings
from .errors import InvalidDatasetError, ModelFormatError, NotFittedError
from .images import ImageSource
from .projection import Projection


#: The paper's settings (Luo, Holm & Wang 2021): full 1472-d hypercolumns, 147,200-d codes for k = 100,
#: and the classifier of scikit-learn's ``GradientBoostingClassifier()`` (XGBoost hist, 256 bins).
FAITHFUL_PARAMS: dict[str, Any] = {
    "density": 10.0, "k": 100, "image_size": 224, "intra": True, "power": False, "pca": None, "whiten": False,
    "n_estimators": 100, "max_depth": 3, "learning_rate": 0.1, "max_bin": 256, "colsample_bynode": 1.0,
}

#: Parameters added after model files were first written, with the values those files' models
#: were trained with (a file without them means these, whatever today's defaults are).
LEGACY_PARAMS: dict[str, Any] = {"precision": "fp32", "calibration": None}


class FastVLAD(ClassifierMixin, BaseEstimator):
    """Classify micrographs from VLAD codes of CNN hypercolumns (Luo, Holm & Wang 2021).

    Defaults are the paper's — 224×224 input, VGG16 taps block1_conv2 … block5_conv3
    (1472 dims), density 10 % (5,000 random pixels per image), k = 100, intra + global L2,
    100 boosting rounds of depth 3 at learning rate 0.1 — with two exceptions that make CPU
    training several times faster at the same grouped-CV accuracy (BENCHMARKS.md, issue #8):
    hypercolumns are projected on their first ``pca=64`` principal axes (fitted on the codebook
    sample, applied to each tap before interpolation: exact) and XGBoost uses ``max_bin=32``.
    ``FastVLAD.faithful()`` gives the paper's settings exactly (``FAITHFUL_PARAMS``).

    ``precision``: the CNN's arithmetic (``quantize.py``). "fp32" (default); "fp16", a float16 copy
    of the graph for a GPU's tensor cores (float16 taps, widened exactly by every kernel); "int8",
    an int8 copy for the CPU, calibrated on ``calibration`` (None: a fixed set of demo micrographs;
    or a dataset path), built once and cached; "auto", int8 on a CPU with VNNI, else fp32. Codes move
    by the rounding (see README). ``fp16=True`` is the deprecated spelling of ``precision="fp16"``.

    ``X`` is a sequence of image paths or arrays ((H, W) or (H, W, 3)); ``y`` the labels.
    ``fit`` runs the CNN once per image, plus once for each of the ``codebook_images``
    images the codebook is fitted on.
    """

    def __init__(self, density: float = 10.0, k: int = 100, *, image_size: int | tuple[int, int] | None = 224,
                 resample: str = "bilinear", interpolation: str = "half_pixel", intra: bool = True,
                 power: bool = False, pca: int | None = 64, whiten: bool = False,
                 codebook_images: int = 100, backbone: str = DEFAULT_BACKBONE,
                 taps: Sequence[str] | None = None, n_estimators: int = 100, max_depth: int = 3,
                 learning_rate: float = 0.1, max_bin: int = 32, colsample_bynode: float = 1.0,
                 device: str = "auto", batch_size: int | None = None, fp16: bool = False,
                 precision: str = "fp32", calibration: str | None = None,
                 on_error: str = "raise", random_state: int = 0) -> None:
        self.density = density
        self.k = k
        self.image_size = image_size
        self.resample = resample
        self.interpolation = interpolation
        self.intra = intra
        self.power = power
        self.pca = pca
        self.whiten = whiten
        self.codebook_images = codebook_images
        self.backbone = backbone
        self.taps = taps
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.max_bin = max_bin
        self.colsample_bynode = colsample_bynode
        self.device = device
        self.batch_size = batch_size
        self.fp16 = fp16
        self.precision = precision
        self.calibration = calibration
        self.on_error = on_error
        self.random_state = random_state

    @classmethod
    def faithful(cls, **overrides: Any) -> FastVLAD:
        """An estimator with the paper's settings (``FAITHFUL_PARAMS``), then ``overrides``."""
        return cls(**{**FAITHFUL_PARAMS, **overrides})

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, X: Sequence[ImageSource], y: Sequence[Any] | np.ndarray) -> FastVLAD:
        """Fit the codebook on a sample of ``X``, encode every image once, train the booster."""
        X, y_arr = checks.sources_and_labels(X, y)
        t0 = time.perf_counter()
        timings = Timings()
        self.fit_codebook(X, timings)
        codebook_pass = dict(timings.seconds)  # before the encoder adds to the same stages
        encoded = self.encode(X, timings)
        self.skipped_ = self.describe_failures(X, encoded)
        if not len(encoded.indices):
            raise InvalidDatasetError(f"none of the {len(X)} images could be read (e.g. {self.skipped_[0][1]})")
        self.fit_codes(encoded.codes, y_arr[encoded.indices])
        timings.seconds["classifier"] = cast(float, self.train_info_["classifier_seconds"])
        if self.projection_ is not None:
            self.train_info_["pca_explained_variance"] = self.projection_.explained_variance_ratio
        # What the model learnt from, for the model file: the images' own bytes, not only their codes.
        names, counts = np.unique(y_arr[encoded.indices].astype(str), return_counts=True)
        self.train_info_.update(images_sha256=model_file.data_sha256(X, y_arr), n_skipped=len(encoded.failed),
                                class_counts={str(c): int(n) for c, n in zip(names, counts)})
        self.train_info_["skipped"] = [[name, why] for name, why in self.skipped_]
        self.train_info_["codebook_pass_seconds"] = codebook_pass
        timings.seconds["total"] = time.perf_counter() - t0
        self.timings_ = dict(timings.seconds)
        return self

    def fit_codebook(self, X: Sequence[ImageSource], timings: Timings | None = None) -> FastVLAD:
        """Fit only the hypercolumn PCA (with ``pca``) and the k-means codebook, on ``codebook_images``
        random images of ``X``."""
        X = checks.sources(X)
        checks.parameters(self, len(X))
        if self.on_error == "raise":
            checks.readable(X)
        encoder = Encoder.of(self, check_backbone=False)
        with kernel_guard():
            fitted = encoder.fit_codebook(X, int(self.k), int(self.codebook_images), timings=timings)
        self.projection_ = fitted.projection
        self.codebook_: np.ndarray = cast(np.ndarray, fitted.centres)
        self.backbone_sha256_ = encoder.cnn.sha256
        self.taps_ = encoder.cnn.taps
        self.quantized_ = quantize.record_of(encoder.cnn)  # the int8 graph's identity, or None
        return self

    @staticmethod
    def describe_failures(X: Sequence[ImageSource], encoded: Encoded) -> list[tuple[str, str]]:
        """(image name, reason) of every image that could not be read."""
        return [(str(X[i]) if not isinstance(X[i], np.ndarray) else f"array #{i}", str(e)) for i, e in encoded.failed]

    def fit_codes(self, codes: np.ndarray, y: Sequence[Any] | np.ndarray) -> FastVLAD:
        """Train only the booster, on codes from ``transform`` (used by cross-validation)."""
        y_arr = np.asarray(y)
        self.classes_, y_int = np.unique(y_arr, return_inverse=True)
        checks.enough_classes(self.classes_)
        t = time.perf_counter()
        device = backends.resolve(self.device).device
        self.booster_ = classifier.train(codes, y_int, len(self.classes_), classifier.BoosterSettings.of(self),
                                         device, self.random_state)
        self.train_info_ = {"n_images": int(len(codes)), "code_dim": int(codes.shape[1]),
                            "classifier_seconds": time.perf_counter() - t,
                            "data_sha256": hashlib.sha256(codes.tobytes() + y_arr.astype(str).tobytes()).hexdigest()}
        return self

    # -- using a fitted model ---------------------------------------------------------------------
    def encode(self, X: Sequence[ImageSource], timings: Timings | None = None) -> Encoded:
        """Codes of the readable images and the failures (with ``on_error="skip"``)."""
        check_fitted(self)
        X = checks.sources(X)
        checks.runtime(self)
        if self.on_error == "raise":
            checks.readable(X)
        encoder = Encoder.of(self)
        with kernel_guard():
            return encoder.encode(X, timings)

    def transform(self, X: Sequence[ImageSource]) -> np.ndarray:
        """VLAD codes ``(n, k·dim)`` float32; rows of skipped images are NaN."""
        X = checks.sources(X)
        enc = self.encode(X)
        out = np.full((len(X), self.codebook_.size), np.nan, dtype=np.float32)
        out[enc.indices] = enc.codes
        return out

    def predict_proba(self, X: Sequence[ImageSource]) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` float32, columns in ``classes_`` order."""
        if not hasattr(self, "booster_"):
            raise NotFittedError("this FastVLAD has no classifier yet; call fit(X, y) first")
        return self.predict_proba_codes(self.transform(X))

    def predict_proba_codes(self, codes: np.ndarray) -> np.ndarray:
        """Probabilities from precomputed codes (NaN rows give NaN probabilities)."""
        proba = classifier.predict_proba(self.booster_, codes)
        proba[np.isnan(codes).any(axis=1)] = np.nan
        return proba

    def predict(self, X: Sequence[ImageSource]) -> np.ndarray:
        """Predicted class names ``(n,)``; with ``on_error="skip"``, an object array with None
        for the images that could not be read (never a made-up class)."""
        proba = self.predict_proba(X)
        labels = self.classes_[np.nan_to_num(proba, nan=-1).argmax(axis=1)]
        skipped = np.isnan(proba).any(axis=1)
        if skipped.any():
            labels = labels.astype(object)
            labels[skipped] = None
        return labels

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model as one file (see ``model_file``); atomic."""
        if not hasattr(self, "booster_"):
            raise NotFittedError("fit the model before saving it")
        params = self.get_params()
        params["taps"] = list(params["taps"]) if params["taps"] else None
        params["image_size"] = list(params["image_size"]) if isinstance(params["image_size"], tuple) else params["image_size"]
        config = {"params": params, "classes": [str(c) for c in self.classes_],
                  "backbone_sha256": self.backbone_sha256_, "taps": list(self.taps_),
                  "train": {**self.train_info_, "timings": getattr(self, "timings_", {})},
                  "versions": versions()}
        if getattr(self, "quantized_", None):
            config["quantized"] = self.quantized_  # checked at use, as backbone_sha256 is
        if params["calibration"] is not None:
            params["calibration"] = str(params["calibration"])
        proj = getattr(self, "projection_", None)
        return model_file.save(path, model_file.ModelContents(config, self.codebook_, classifier.to_bytes(self.booster_),
                                                              proj.to_array() if proj is not None else None))


def load(path: str | os.PathLike[str]) -> FastVLAD:
    """A fitted ``FastVLAD`` from a model file; raises ``ModelFormatError`` on any damage."""
    contents = model_file.load(path)
    cfg = contents.config
    try:
        params = {**LEGACY_PARAMS, **cfg["params"]}
        if isinstance(params.get("image_size"), list):
            params["image_size"] = tuple(params["image_size"])
        model = FastVLAD(**params)
        model.classes_ = np.array(cfg["classes"])
        model.backbone_sha256_ = cfg["backbone_sha256"]
        model.taps_ = tuple(cfg["taps"])
        model.train_info_ = cfg.get("train", {})
        model.quantized_ = quantize.check_record(path, cfg.get("quantized"))
    except (KeyError, TypeError) as exc:
        raise ModelFormatError(f"{path}: config.json lacks or mistypes a field ({exc})") from None
    model.codebook_ = contents.codebook
    model.projection_ = _loaded_projection(path, model, contents)
    try:
        model.booster_ = classifier.from_bytes(contents.booster)
    except Exception as exc:
        raise ModelFormatError(f"{path}: the XGBoost model cannot be read ({exc})") from None
    return model


def _loaded_projection(path: str | os.PathLike[str], model: FastVLAD,
                       contents: model_file.ModelContents) -> Projection | None:
    """The hypercolumn PCA of a loaded model, checked against its parameters and codebook."""
    if contents.projection is None:
        if model.pca and model.pca < contents.codebook.shape[1]:  # hypercolumns were wider than pca
            raise ModelFormatError(f"{path}: the model was trained with pca={model.pca} but has no projection.npy")
        return None
    proj = Projection.from_array(contents.projection, cast(float, model.train_info_.get("pca_explained_variance", 0.0)))
    if proj.components != contents.codebook.shape[1]:
        raise ModelFormatError(f"{path}: projection.npy gives {proj.components} dims but the codebook has "
                               f"{contents.codebook.shape[1]}; the file is inconsistent, re-save the model")
    return proj


def check_fitted(model: FastVLAD) -> None:
    """Raise ``NotFittedError`` unless ``model`` has a codebook or a classifier."""
    if not hasattr(model, "booster_") and not hasattr(model, "codebook_"):
        raise NotFittedError("this FastVLAD is not fitted yet; call fit(X, y) or fastvlad.load(path)")


_SERIAL = threading.RLock()


def kernel_guard() -> contextlib.AbstractContextManager[Any]:
    """Serialises pipeline runs across threads when Numba's threading layer is not thread-safe.

    Numba's OpenMP and TBB layers accept parallel kernels from several threads at once; its
    fallback "workqueue" layer does not (it aborts the process). Which layer runs is only
    known after the first parallel kernel, so until then runs are serialised too.
    """
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet in this process
        return _SERIAL
    return _SERIAL if layer == "workqueue" else contextlib.nullcontext()


def versions() -> dict[str, str]:
    """Versions of fastvlad and the libraries that decide its results."""
    import numba
    import onnxruntime
    import xgboost

    return {"fastvlad": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "onnxruntime": onnxruntime.__version__, "xgboost": xgboost.__version__}
