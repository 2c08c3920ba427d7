"""``FastVLAD``: the scikit-learn-style estimator — codebook + VLAD encoder + XGBoost classifier."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from . import (
    backends,
    checks,
    classifier,
    config,
    datasets,
    model_file,
    model_load,
    quantize,
    tiling,
)
from ._version import __version__
from .backbone import DEFAULT_BACKBONE
from .encoder import (
    Encoded,
    Encoder,
    Reduce,
    Timings,
    View,
    predict_views,
    training_copies,
)
from .errors import (
    InvalidDatasetError,
    NotFittedError,
    ParameterError,
)
from .images import ImageSource, source_name
from .projection import Projection

#: The paper's settings (Luo, Holm & Wang 2021): full 1472-d hypercolumns, 147,200-d codes for k = 100,
#: and the classifier of scikit-learn's ``GradientBoostingClassifier()`` (XGBoost hist, 256 bins).
FAITHFUL_PARAMS: dict[str, Any] = {
    "density": 10.0, "k": 100, "image_size": 224, "aspect": "squash", "intra": True, "power": False, "pca": None, "whiten": False,
    "n_estimators": 100, "max_depth": 3, "learning_rate": 0.1, "max_bin": 256, "colsample_bynode": 1.0,
    "subsample": 1.0, "min_child_weight": 1.0,
    "classifier": "xgboost", "class_weight": None, "normalize": "none", "augment": 0, "zoom": (), "zoom_jitter": False,
    "tta": 0, "tta_zoom": (), "points": "per_image", "softness": None, "code_pca": None,
}


log = logging.getLogger(__name__)


def scale_range(scales: np.ndarray) -> list[float]:
    """[min, median, max] of the training images' ``images.input_scale`` ``(n,)``, for ``train_info_``."""
    return [float(scales.min()), float(np.median(scales)), float(scales.max())]


def off_scale(trained: Any, scales: np.ndarray | None) -> np.ndarray:
    """Which of ``scales`` ``(n,)`` lie beyond the training images' range ``trained`` ([min, median,
    max], ``scale_range``) by more than ``config.SCALE_TOLERANCE`` either way: ``(n,)`` bool (all False
    when either is unknown, as for a model saved before it was recorded)."""
    if trained is None or scales is None:
        return np.zeros(0 if scales is None else len(scales), dtype=bool)
    lo, hi = trained[0] / config.SCALE_TOLERANCE, trained[2] * config.SCALE_TOLERANCE
    return (scales < lo) | (scales > hi)


@contextlib.contextmanager
def unchanged_on_failure(model: FastVLAD) -> Iterator[FastVLAD]:
    """Leave ``model`` as it was if the block fails part-way: a fit sets the new codebook before it
    finds, say, a class left without images, and the old head had then predicted from the new codes
    (other answers, no error), or failed on another ``k`` with a NumPy error."""
    before = dict(model.__dict__)
    try:
        yield model
    except BaseException:
        model.__dict__.clear()
        model.__dict__.update(before)
        raise


def all_or_nothing(fit: Callable[..., FastVLAD]) -> Callable[..., FastVLAD]:
    """A fit method that leaves the model as it was when it fails part-way (``unchanged_on_failure``)."""
    @functools.wraps(fit)
    def whole(self: FastVLAD, *args: Any, **kwargs: Any) -> FastVLAD:
        with unchanged_on_failure(self):
            return fit(self, *args, **kwargs)
    return whole


@dataclasses.dataclass(frozen=True)
class CNNIdentity:
    """What a model records of the CNN its codebook was fitted with, and checks at every use: the
    float graph's SHA-256, its taps, and the int8 graph's record (``quantize.record_of``; None for a
    float graph)."""

    sha256: str
    taps: tuple[str, ...]
    quantized: dict[str, Any] | None

    @classmethod
    def of(cls, cnn: Any) -> CNNIdentity:
        """The identity of an open backbone (``backbone.open_shared``'s)."""
        return cls(cnn.sha256, tuple(cnn.taps), quantize.record_of(cnn))


class FastVLAD(ClassifierMixin, BaseEstimator):
    """Classify micrographs from VLAD codes of CNN hypercolumns (Luo, Holm & Wang 2021).

    The method is the paper's — VGG16 taps block1_conv2 … block5_conv3 (1472 dims) at density 10 %
    (5,000 random pixels per image), k = 100 centres, VLAD with intra + global L2 — and
    ``FastVLAD.faithful()`` gives the paper's settings exactly (``FAITHFUL_PARAMS``: 224×224
    squashed input, no PCA, XGBoost with 100 rounds of depth 3). The defaults differ where a
    leave-series-out measurement said they should (ACCURACY.md; README, "Defaults"): a model
    trained on some material series must label micrographs of the next one.

    - ``normalize="stretch"``: every image's 1st–99th gray-level percentiles → 0..255 before the
      CNN, so a series' brightness and contrast are not what the codes learn
      (``intensity.NORMALIZATIONS``: none, stretch, equalize, clahe);
    - ``image_size=112, aspect="keep"``: the short side at 112 pixels, the long side in proportion
      (a 306×448 tile → 112×164; 37 % of the CNN time of 224²); ``aspect="squash"`` makes N×N,
      and an (H, W) pair is used as it is;
    - ``pca=64``: hypercolumns projected on their first 64 principal axes (fitted on the codebook
      sample, applied to each tap before interpolation: exact);
    - ``classifier="ridge"`` (``class_weight="balanced"``): a ridge classifier (least squares onto
      ±1 targets per class; ``predict_proba`` is a softmax of its scores, which orders the classes
      but is not calibrated) on the codes' first ``code_pca=64`` principal axes, each divided by the
      square root of its standard deviation, every code unit length there (``classifier.CodeAxes``,
      fitted on the training codes and saved with the head; ``code_pca=None``: on the codes
      themselves, the default before ACCURACY.md's run 94). ``alpha``, the ridge's L2 strength:
      None for the one measured for what it sees (``classifier.RIDGE_ALPHA``: 80 on the axes, 20 on
      the codes). ``"logistic"`` (``C=100``) a multinomial logistic regression, the default before
      run 31; ``"xgboost"`` the paper's kind of head (``n_estimators``, ``max_depth``,
      ``learning_rate``, ``max_bin``, ``colsample_bynode``, ``subsample``, ``min_child_weight``;
      it ignores ``code_pca``);
    - ``softness=10``: every point counts for every centre, weighted by its squared distance (soft
      assignment, ``vlad.encode_soft``), so a point near a border between centres does not jump from
      one to the other when the image changes a little (the paper: the nearest centre only, ``None``);
    - ``zoom=(1.2,)``, ``zoom_jitter=True``: the head also learns from every training image
      encoded at 1.2 times the input size, as if taken at a higher magnification, and flipped and
      re-exposed (gain, offset, gamma) as an ``augment`` copy is (the codebook and ``predict`` stay
      at ``image_size``; the copy costs 1.44× the image's CNN pixels at fit). On the codes
      themselves (``code_pca=None``) more rows wanted a stronger ``alpha``: with ``zoom=()`` use
      ``alpha=10``, with ``zoom=(1.4, 0.7)`` ``alpha=40`` (ACCURACY.md, runs 31, 37–51).

    ``augment=n`` gives the classifier n randomly flipped and re-exposed copies of every training
    image (gain, offset, gamma; the codebook stays on the originals); ``zoom=(z, ...)`` gives it
    every training image also encoded at z times the input size (``()``: none), made with
    ``zoom_jitter`` from the image's first augmented copy (the same flip and acquisition, seeded);
    ``tta=n`` averages the probabilities of the image and its first n flips (left–right, up–down,
    both) at predict. The default ``tta=1`` (the image and its left–right mirror: two CNN passes
    per image at predict) raised the leave-series-out mean and its worst series in ACCURACY.md.
    ``tta_zoom=(z, ...)`` adds to that mean the image at z times the input size (one CNN pass each;
    no cost at fit).

    ``points``: how an image's ``density`` pixels are drawn. "per_image" (default, the paper's):
    seeded by the seed and the image's pixels, so any change of the image draws them anew;
    "shared": one draw for every image of a size, so a change of gray levels keeps them.

    ``softness``: None (the paper's) gives each point to its nearest centre; a number b (default 10) gives it to
    every centre j with weight ∝ exp(−b·(d²_j − d²_nearest)/u), u the codebook's median squared
    distance between neighbouring centres (``vlad.encode_soft``), so a point near a border moves the
    code a little instead of jumping between centres.

    ``precision``: the CNN's arithmetic (``quantize.py``). "fp32" (default); "fp16", a float16 copy
    of the graph for a GPU's tensor cores (float16 taps, widened exactly by every kernel); "int8",
    an int8 copy for the CPU, calibrated on ``calibration`` (None: a fixed set of demo micrographs;
    or a dataset path), built once and cached; "auto", int8 on a CPU with VNNI, else fp32. Codes move
    by the rounding (see README). ``fp16=True`` is the deprecated spelling of ``precision="fp16"``.

    ``X`` is a sequence of image paths or arrays ((H, W) or (H, W, 3)); ``y`` the labels.
    ``fit`` runs the CNN once per image, plus once for each of the ``codebook_images``
    images the codebook is fitted on.

    Micrographs (``fastvlad.tiling``): ``scale_nm_per_px`` resamples every image to that many nm
    per pixel first (the pixel size from the file's metadata, or a ``tiling.Micrograph``'s; a file
    without one is an error unless ``missing_scale="ignore"``), ``crop_bottom`` cuts an SEM data
    bar (N rows, or ``"auto"``), and ``tile`` (height, width) cuts each image into tiles every
    ``tile_stride`` pixels. Then every tile is a training sample with its micrograph's label;
    ``predict_proba`` gives each micrograph the mean of its tiles' probabilities, and
    ``transform`` the codes of every tile (``tiling.plan`` says which micrograph each came from).
    """

    def __init__(self, density: float = 10.0, k: int = 100, *, image_size: int | tuple[int, int] | None = 112,
                 aspect: str = "keep", resample: str = "bilinear", interpolation: str = "half_pixel", intra: bool = True,
                 power: bool = False, pca: int | None = 64, whiten: bool = False,
                 codebook_images: int = 100, backbone: str = DEFAULT_BACKBONE,
                 taps: Sequence[str] | None = None, n_estimators: int = 100, max_depth: int = 3,
                 learning_rate: float = 0.1, max_bin: int = 32, colsample_bynode: float = 1.0,
                 subsample: float = 1.0, min_child_weight: float = 1.0,
                 classifier: str = "ridge", C: float = 100.0, alpha: float | None = None,
                 class_weight: str | None = "balanced", code_pca: int | None = 64,
                 normalize: str = "stretch", augment: int = 0, zoom: Sequence[float] = (1.2,),
                 zoom_jitter: bool = True, tta: int = 1, tta_zoom: Sequence[float] = (),
                 points: str = "per_image", softness: float | None = 10.0,
                 device: str = "auto", batch_size: int | None = None, fp16: bool = False,
                 precision: str = "fp32", calibration: str | None = None,
                 on_error: str = "raise", random_state: int = 0, scale_nm_per_px: float | None = None,
                 missing_scale: str = "raise", tile: int | tuple[int, int] | str | None = None,
                 tile_stride: int | tuple[int, int] | str | None = None, crop_bottom: int | str | None = None) -> None:
        self.density = density
        self.k = k
        self.image_size = image_size
        self.aspect = aspect
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
        self.subsample = subsample
        self.min_child_weight = min_child_weight
        self.classifier = classifier
        self.C = C
        self.alpha = alpha
        self.class_weight = class_weight
        self.code_pca = code_pca
        self.normalize = normalize
        self.augment = augment
        self.zoom = zoom
        self.zoom_jitter = zoom_jitter
        self.tta = tta
        self.tta_zoom = tta_zoom
        self.points = points
        self.softness = softness
        self.device = device
        self.batch_size = batch_size
        self.fp16 = fp16
        self.precision = precision
        self.calibration = calibration
        self.on_error = on_error
        self.random_state = random_state
        self.scale_nm_per_px = scale_nm_per_px
        self.missing_scale = missing_scale
        self.tile = tile
        self.tile_stride = tile_stride
        self.crop_bottom = crop_bottom

    @classmethod
    def faithful(cls, **overrides: Any) -> FastVLAD:
        """An estimator with the paper's settings (``FAITHFUL_PARAMS``), then ``overrides``."""
        return cls(**{**FAITHFUL_PARAMS, **overrides})

    # -- fitting ------------------------------------------------------------------------------
    @all_or_nothing
    def fit(self, X: Sequence[ImageSource], y: Sequence[Any] | np.ndarray) -> FastVLAD:
        """Fit the codebook on a sample of ``X``, encode every image once, train the booster."""
        X, y_arr = checks.sources_and_labels(X, y)
        t0 = time.perf_counter()
        given, y_given = X, y_arr
        plan, X, y_arr = tiling.training_set(self, X, y_arr)  # micrographs → tiles, with their micrograph's label
        timings = Timings()
        self.fit_codebook(X, timings)
        codebook_pass = dict(timings.seconds)  # before the encoder adds to the same stages
        encoded = self.encode(X, timings)
        self.skipped_ = (plan.failures() if plan is not None else []) + self.describe_failures(X, encoded)
        if not len(encoded.indices):
            raise InvalidDatasetError(f"none of the {len(X)} images could be read (e.g. {self.skipped_[0][1]})")
        y_ok = y_arr[encoded.indices]
        datasets.classes_left(y_given, y_ok)  # a class all of whose images were skipped
        codes, labels = self._with_augmented(X, encoded, y_ok, timings)
        self.fit_codes(codes, labels)
        # fit_codes counted rows; a user trained on the images, the copies are the head's alone
        self.train_info_.update(self.fit_record(y_ok, len(codes) - len(y_ok), encoded.scales, codebook_pass))
        # What the model learnt from, for the model file: the images' own bytes, not only their codes.
        self.train_info_["images_sha256"] = model_file.data_sha256(given, y_given)
        timings.seconds["classifier"] = cast(float, self.train_info_["classifier_seconds"])
        timings.seconds["total"] = time.perf_counter() - t0
        self.timings_ = dict(timings.seconds)
        return self

    def fit_record(self, labels: np.ndarray, n_copies: int, scales: np.ndarray | None,
                   codebook_pass: dict[str, float]) -> dict[str, Any]:
        """What a fit's record (``train_info_``, kept in the model file) says of the data, by ``fit`` and
        ``distributed.fit`` alike: the readable images' ``labels`` ``(n_images,)``, how many training
        copies the head also learnt from, the images' input scales ``(n_images,)`` (or None), the
        codebook pass's stage seconds, and ``skipped_``."""
        names, counts = np.unique(labels.astype(str), return_counts=True)
        record: dict[str, Any] = {
            "n_images": len(labels), "n_copies": int(n_copies), "n_skipped": len(self.skipped_),
            "class_counts": {str(c): int(n) for c, n in zip(names, counts)},
            "skipped": [[name, why] for name, why in self.skipped_], "codebook_pass_seconds": codebook_pass}
        if self.projection_ is not None:
            record["pca_explained_variance"] = self.projection_.explained_variance_ratio
        if scales is not None:
            record["input_scale"] = scale_range(scales)
        return record

    @all_or_nothing
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
        return self.adopt_codebook(fitted.projection, cast(np.ndarray, fitted.centres), CNNIdentity.of(encoder.cnn))

    def adopt_codebook(self, projection: Projection | None, centres: np.ndarray, cnn: CNNIdentity) -> FastVLAD:
        """Take a fitted hypercolumn PCA and codebook ``(k, p or dim)`` float32, and the identity of the
        CNN they were fitted with: ``fit_codebook`` fits them here, ``distributed.fit_codebook`` from
        the workers' hypercolumns."""
        self.projection_ = projection
        self.codebook_: np.ndarray = centres
        self.backbone_sha256_ = cnn.sha256
        self.taps_ = cnn.taps
        self.quantized_ = cnn.quantized  # the int8 graph's identity, or None
        return self

    def _with_augmented(self, X: Sequence[ImageSource], encoded: Encoded, y: np.ndarray,
                        timings: Timings) -> tuple[np.ndarray, np.ndarray]:
        """The codes and labels the classifier learns from: the readable images' and, with ``augment``
        or ``zoom``, their copies' (``encoder.training_copies``; their CNN passes timed apart)."""
        if not self.augment and not self.zoom:
            return encoded.codes, y
        with kernel_guard():
            codes, rows = training_copies(Encoder.of(self), X, encoded.indices, int(self.augment),
                                          tuple(self.zoom), checks.seed(self), timings, bool(self.zoom_jitter))
        return np.concatenate([encoded.codes, codes]), np.concatenate([y, y[rows]])

    @staticmethod
    def describe_failures(X: Sequence[ImageSource], encoded: Encoded) -> list[tuple[str, str]]:
        """(image name, reason) of every image that could not be read."""
        return [(source_name(X[i], i), str(e)) for i, e in encoded.failed]

    @all_or_nothing
    def fit_codes(self, codes: np.ndarray, y: Sequence[Any] | np.ndarray) -> FastVLAD:
        """Train only the classifier head, on codes from ``transform`` (used by cross-validation)."""
        checks.head(self)
        codes = checks.codes(codes, getattr(self, "codebook_", None))
        y_arr = checks.training_labels(y, len(codes), "code")
        self.classes_, y_int = np.unique(y_arr, return_inverse=True)
        t = time.perf_counter()
        weights = classifier.balanced_weights(y_int, len(self.classes_)) if self.class_weight == "balanced" else None
        if self.classifier in classifier.LINEAR:
            self.head_ = classifier.train_linear(self, codes, y_int, len(self.classes_), weights)
        else:
            device = backends.resolve(self.device).device
            self.head_ = classifier.train(codes, y_int, len(self.classes_), classifier.BoosterSettings.of(self),
                                          device, checks.seed(self), weights)
        self.train_info_ = {"n_images": int(len(codes)), "code_dim": int(codes.shape[1]),
                            "classifier_seconds": time.perf_counter() - t,
                            "data_sha256": hashlib.sha256(codes.tobytes() + y_arr.astype(str).tobytes()).hexdigest()}
        return self

    @property
    def booster_(self) -> Any:
        """The fitted XGBoost booster (``classifier="xgboost"``); ``head_`` is the head of any kind."""
        head = getattr(self, "head_", None)
        if head is None or isinstance(head, classifier.LinearHead):
            raise AttributeError(f"this FastVLAD has no XGBoost booster (not fitted, or classifier={self.classifier!r})")
        return head

    # -- using a fitted model ---------------------------------------------------------------------
    def encode(self, X: Sequence[ImageSource], timings: Timings | None = None) -> Encoded:
        """Codes of the readable images and the failures (with ``on_error="skip"``)."""
        return self._encoded(X, timings)

    def _encoded(self, X: Sequence[ImageSource], timings: Timings | None = None,
                 reduce: Reduce | None = None) -> Encoded:
        """``encode``, or with ``reduce`` what it makes of each batch's codes (``Encoder.encode``)."""
        check_fitted(self)
        X = checks.sources(X)
        checks.runtime(self)
        if self.on_error == "raise":
            checks.readable(X)
        encoder = Encoder.of(self)
        with kernel_guard():
            return encoder.encode(X, timings, reduce=reduce)

    def transform(self, X: Sequence[ImageSource]) -> np.ndarray:
        """VLAD codes ``(n, k·dim)`` float32; rows of skipped images are NaN. With tiling, one row
        per tile (``tiling.plan_for(model, X)`` lists them)."""
        X = checks.sources(X)
        plan = tiling.plan_for(self, X)
        if plan is not None:
            X = plan.sources
        return self.encode(X).rows(len(X))

    def predict_proba(self, X: Sequence[ImageSource]) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` float32, columns in ``classes_`` order; with ``tta``,
        the mean over the image and its first ``tta`` flips."""
        if not hasattr(self, "head_"):
            raise NotFittedError("this FastVLAD has no classifier yet; call fit(X, y) first")
        X = checks.sources(X)
        plan = tiling.plan_for(self, X)
        if plan is None:
            return self.proba_over_views(X)[0]
        tile_proba = np.full((len(plan.sources), len(self.classes_)), np.nan, dtype=np.float32)
        if plan.sources:
            tile_proba = self.proba_over_views(plan.sources)[0]
        return plan.aggregate(tile_proba).proba  # each micrograph: the mean of its tiles

    def proba_over_views(self, X: Sequence[ImageSource]) -> tuple[np.ndarray, Encoded]:
        """``(n, n_classes)`` float32 of images used as they are (no tiling; NaN rows for images that
        could not be read): the mean over each image's ``views`` (itself, its first ``tta`` flips,
        itself at each ``tta_zoom`` factor). Also the images' own encoding, which says which failed
        (its rows the probabilities, not the codes: each batch's codes go as soon as the head has read
        them, so predicting on many images holds n × n_classes values, not n × k·dim)."""
        X = checks.sources(X)
        encoded = self._encoded(X, reduce=self.proba_reduce())
        self.note_other_scales(X, encoded)
        return self.mean_over_views(X, encoded.rows(len(X))), encoded

    def note_other_scales(self, X: Sequence[ImageSource], encoded: Encoded) -> None:
        """Log a warning when images reach the network at another scale than the training images did
        (``off_scale``): a larger field resized to the same input shows smaller features, which the
        model reads as another magnification."""
        off = off_scale(getattr(self, "train_info_", {}).get("input_scale"), encoded.scales)
        if not off.any():
            return
        with np.errstate(over="ignore"):  # an edited file's record may be tiny: the ratio is then ∞, not a crash
            ratios = encoded.scales[off] / self.train_info_["input_scale"][1]  # type: ignore[index]
        lo, hi = f"{ratios.min():.2g}", f"{ratios.max():.2g}"
        names = [source_name(X[int(i)], int(i)) for i in encoded.indices[off][:3]]
        log.warning("fastvlad: %d of %d images reach the network at %s× the scale of the training images (each "
                    "image is resized to the input size, so a larger field shows smaller features: another "
                    "magnification to the model, and answers may change), e.g. %s; cut them as the training images "
                    "were (tile=, --tile HxW), or train and predict with pixel sizes (scale_nm_per_px=, --scale)",
                    int(off.sum()), len(encoded.indices), lo if lo == hi else f"{lo}–{hi}", ", ".join(names))

    def mean_over_views(self, X: Sequence[ImageSource], own: np.ndarray) -> np.ndarray:
        """``(n, n_classes)`` float32: the mean of ``own``, the images' own probabilities (the first
        view), and those of their other ``views`` (one CNN pass each)."""
        views = self.views()
        total = own.copy()
        for view in views[1:]:
            total += self.proba_of_view(X, view)
        return total / np.float32(len(views))

    def views(self) -> list[View]:
        """What ``predict_proba`` averages over, the image itself first (``encoder.predict_views``)."""
        return predict_views(int(self.tta), tuple(self.tta_zoom))

    def proba_of_view(self, X: Sequence[ImageSource], view: View) -> np.ndarray:
        """``(n, n_classes)`` float32 of every image as ``view`` shows it (NaN rows for images that
        could not be read): one term of the mean over ``views``."""
        with kernel_guard():
            return Encoder.of(self).encode_view(X, view, reduce=self.proba_reduce()).rows(len(X))

    def proba_reduce(self) -> Reduce:
        """What ``Encoder.encode`` keeps of each batch when predicting: the class probabilities."""
        return self.predict_proba_codes, len(self.classes_)

    def predict_proba_codes(self, codes: np.ndarray) -> np.ndarray:
        """Probabilities from precomputed codes (NaN rows give NaN probabilities)."""
        proba = classifier.predict_proba(self.head_, codes)
        proba[np.isnan(codes).any(axis=1)] = np.nan
        return proba

    def score(self, X: Sequence[ImageSource], y: Sequence[Any] | np.ndarray, sample_weight: Any = None) -> float:
        """Accuracy of ``predict(X)`` against labels ``y`` (n,), values compared as ``accuracy_score`` does
        (a model with text classes compares as text); ``sample_weight`` (n,) weighs the images. An image
        skipped as unreadable counts as wrong."""
        items = checks.sources(X)
        y_arr = checks.label_array(y, len(items))
        weights = None if sample_weight is None else checks.sample_weights(sample_weight, len(items))
        text = self.classes_.dtype.kind == "U"
        if not text and y_arr.dtype.kind == "U":
            raise ParameterError(f"y holds text labels (e.g. {y_arr[0]!r}) but this model's classes are "
                                 f"{self.classes_.dtype} values (e.g. {self.classes_[0]!r}): give y as they were")
        predicted = self.predict(items)
        # Values compare as scikit-learn's accuracy_score does (0 == 0.0); text classes against numbers,
        # as a model file written before labels kept their type holds them, compare as text.
        right = predicted.astype(str) == y_arr.astype(str) if text else predicted == y_arr
        return float(np.average(np.asarray(right, dtype=bool), weights=weights))

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
        if not hasattr(self, "head_"):
            raise NotFittedError("fit the model before saving it")
        check_fitted(self)  # a head from fit_codes alone: no codebook, no backbone to record
        params = {key: json_value(value) for key, value in self.get_params().items()}
        params["taps"] = params["taps"] or None
        if params["calibration"] is not None:
            params["calibration"] = str(params["calibration"])
        config: dict[str, Any] = {"params": params, "classes": [json_value(c) for c in self.classes_],
                                  "backbone_sha256": self.backbone_sha256_, "taps": list(self.taps_),
                                  "train": {**self.train_info_, "timings": getattr(self, "timings_", {})},
                                  "versions": versions()}
        if getattr(self, "quantized_", None):
            config["quantized"] = self.quantized_  # checked at use, as backbone_sha256 is
        proj = getattr(self, "projection_", None)
        linear = isinstance(self.head_, classifier.LinearHead)
        axes = self.head_.axes if linear else None
        contents = model_file.ModelContents(
            config, self.codebook_, None if linear else classifier.to_bytes(self.head_),
            proj.to_array() if proj is not None else None, self.head_.to_array() if linear else None,
            axes.to_array() if axes is not None else None)
        model_load.check_loadable(path, contents, type(self))
        return model_file.save(path, contents)


def load(path: str | os.PathLike[str]) -> FastVLAD:
    """A fitted ``FastVLAD`` from a model file; raises ``ModelFormatError`` on any damage.

    Every member is checked before it is used: the container and the arrays by ``model_file``,
    ``config.json`` here (known fields, types and ranges, consistent with the codebook), and the
    booster by ``booster_check`` before XGBoost parses it (XGBoost's own parser can crash the
    process on a damaged model)."""
    return model_load.model_from_contents(path, model_file.load(path), FastVLAD)


def json_value(value: Any) -> Any:
    """A parameter as JSON holds it: tuples and NumPy arrays as lists, NumPy numbers as Python ones
    (``image_size=np.array([64, 64])`` passes every check, and had failed in ``json.dumps`` after the fit)."""
    if isinstance(value, (tuple, list, np.ndarray)):
        return [json_value(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def check_fitted(model: FastVLAD) -> None:
    """Raise ``NotFittedError`` unless ``model`` has a codebook, which encoding needs (``fit_codes``
    alone trains only the classifier head)."""
    if not hasattr(model, "codebook_"):
        only_head = " (fit_codes trains only the classifier head)" if hasattr(model, "head_") else ""
        raise NotFittedError(f"this FastVLAD has no codebook yet{only_head}; call fit(X, y) or fastvlad.load(path)")


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
