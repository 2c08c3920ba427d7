"""The baselines of ``fastvlad bench``: the paper's pipeline as ``reference.py`` does it, and the
k-means libraries a user would reach for (scikit-learn ``MiniBatchKMeans``, faiss when installed).

Costs are per image and split into what is paid once (k-means initialisation) and what every
image pays, so a run on a few images extrapolates to the paper's 3,200 as ``fixed + N·per_image``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import codebook, hypercolumn, reference
from ..backbone import Backbone
from ..encoder import EncoderSettings, Timings, batch_points
from ..images import ImageSource, Preprocess

log = logging.getLogger("fastvlad")

#: The reference's steps per image, in the order they run; ``_p1``/``_p2`` = first/second CNN pass.
REFERENCE_STEPS = ("decode_p1", "cnn_p1", "upsample_p1", "kmeans", "decode_p2", "cnn_p2", "upsample_p2",
                   "assign", "vlad_loop", "classifier")
#: Steps a careful re-implementation of the same two-pass design would replace, and with what.
LOWER_BOUND_SWAPS = {"upsample_p1": "compiled_full_map", "upsample_p2": "compiled_full_map",
                     "assign": "sklearn_assign"}


@dataclass
class ReferenceCosts:
    """Measured costs of the paper's pipeline on ``n_images`` images (seconds)."""

    n_images: int
    per_image: dict[str, float]  # mean seconds per image of every step in REFERENCE_STEPS
    fixed: dict[str, float]  # seconds paid once per training run
    swaps: dict[str, float]  # per-image seconds of the lower-bound replacements
    notes: list[str] = field(default_factory=list)
    points: np.ndarray | None = None  # (m, dim) first-pass hypercolumns, reused by the peers

    def seconds(self, n: int, lower_bound: bool = False) -> float:
        """Training time for ``n`` images: fixed + n × per-image (optionally with the swaps)."""
        steps = dict(self.per_image)
        if lower_bound:
            steps.update({step: self.swaps[swap] for step, swap in LOWER_BOUND_SWAPS.items()})
        return sum(self.fixed.values()) + n * sum(steps.values())

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.n_images, "per_image_seconds": self.per_image, "fixed_seconds": self.fixed,
                "lower_bound_per_image_seconds": self.swaps, "notes": self.notes}


def _image_pass(source: ImageSource, prep: Preprocess, backbone: Backbone, settings: EncoderSettings,
                timings: Timings, suffix: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Decode, CNN on a batch of one (as the notebook did), full-resolution map indexed at the points.

    Returns the taps ``[(h, w, C)]`` and the hypercolumns ``(S, dim)`` float32."""
    t = time.perf_counter()
    pixels = prep(source)[None]
    t = timings.add(f"decode_{suffix}", t)
    taps = [m[0] for m in backbone(pixels)]
    t = timings.add(f"cnn_{suffix}", t)
    points = batch_points(pixels, settings)[0]
    x = reference.sample_hypercolumns(taps, points, settings.interpolation)
    timings.add(f"upsample_{suffix}", t)
    return taps, x


def _time_kmeans(point_sets: list[np.ndarray], k: int, seed: int) -> tuple[np.ndarray, float, float]:
    """``reference.minibatch_kmeans_sklearn``, timed per call: centres, the first ``partial_fit``
    (k-means++ initialisation included) and the mean of the later ones, in seconds."""
    seconds: list[float] = []
    centres = reference.minibatch_kmeans_sklearn(point_sets, k, seed, seconds)
    return centres, seconds[0], float(np.mean(seconds[1:] or seconds))


def _full_map_compiled(taps: list[np.ndarray], mode: str, out: dict[str, np.ndarray]) -> None:
    """The full (H·W, dim) hypercolumn map with fastvlad's Numba gather: the floor of any full-map method."""
    h, w = taps[0].shape[:2]
    if "points" not in out or out["points"].shape[1] != h * w:
        rows, cols = np.divmod(np.arange(h * w, dtype=np.int32), np.int32(w))
        out["points"] = np.stack([rows, cols], axis=1)[None]
        out["map"] = np.empty((1, h * w, sum(t.shape[2] for t in taps)), np.float32)
    hypercolumn.gather([t[None] for t in taps], out["points"], mode, out=out["map"])


def run_reference(sources: Sequence[ImageSource], labels: np.ndarray, prep: Preprocess, backbone: Backbone,
                  settings: EncoderSettings, k: int, assign_points: int, seed: int) -> ReferenceCosts:
    """Run the paper's two-pass training on ``sources`` and time every step per image.

    Pass 1: decode, CNN, full-resolution upsampling, sampled pixels → ``MiniBatchKMeans.partial_fit``
    per image. Pass 2: decode, CNN again, upsampling again, exact float64 assignment (timed on
    ``assign_points`` points and extrapolated linearly), the per-centre VLAD loop. Then
    ``GradientBoostingClassifier()`` on the codes.
    """
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.metrics import pairwise_distances_argmin

    n = len(sources)
    t1, t2, swaps = Timings(), Timings(), Timings()
    point_sets = [_image_pass(src, prep, backbone, settings, t1, "p1")[1] for src in sources]
    centres, kmeans_first, kmeans_steady = _time_kmeans(point_sets, k, seed)
    codes: list[np.ndarray] = []
    scratch: dict[str, np.ndarray] = {}
    m = point_sets[0].shape[0]
    sub = min(m, max(1, assign_points))
    for src in sources:
        taps, x = _image_pass(src, prep, backbone, settings, t2, "p2")
        t = time.perf_counter()
        reference.assign(x[:sub], centres)  # (m, k, dim) float64 broadcast: timed on a subsample
        t = t2.add("assign", t)
        labels_fast = codebook.assign(x, centres)[0].astype(np.int64)  # same labels, not timed
        t = time.perf_counter()
        codes.append(reference.vlad(x, centres, settings.intra, settings.power, labels=labels_fast))
        t = t2.add("vlad_loop", t)
        _full_map_compiled(taps, settings.interpolation, scratch)
        t = swaps.add("compiled_full_map", t)
        pairwise_distances_argmin(x, centres)
        swaps.add("sklearn_assign", t)
    t = time.perf_counter()
    GradientBoostingClassifier(random_state=seed).fit(np.stack(codes), labels)
    classifier = time.perf_counter() - t
    per_image = {s: v / n for s, v in {**t1.seconds, **t2.seconds}.items()}
    per_image["assign"] *= m / sub
    per_image.update(kmeans=kmeans_steady, classifier=classifier / n)
    notes = [f"assignment (exact float64 broadcast) timed on {sub} of {m} points per image and "
             f"extrapolated linearly (×{m / sub:.1f})" if sub < m else "assignment timed on every point",
             f"GradientBoostingClassifier fitted on {n} images; its cost per image is taken as constant, "
             "an underestimate at larger N (exact split search grows faster than linearly)",
             "k-means: the first partial_fit (k-means++ initialisation) is a fixed cost; later ones per image",
             "CNN run on one image at a time, as the notebook did"]
    return ReferenceCosts(n, {s: per_image[s] for s in REFERENCE_STEPS},
                          {"kmeans_init": max(0.0, kmeans_first - kmeans_steady)},
                          {s: v / n for s, v in swaps.seconds.items()}, notes, np.concatenate(point_sets))


def _inertia(x: np.ndarray, centres: Any) -> float:
    """Mean squared distance of the points to their nearest centre (the same measure for every peer)."""
    return float(codebook.assign(x, np.asarray(centres, np.float32))[1].mean())


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def run_peers(x: np.ndarray, k: int, seed: int) -> dict[str, dict[str, float]]:
    """Fit and predict seconds and inertia of fastvlad's k-means, scikit-learn ``MiniBatchKMeans``
    and faiss k-means (when importable) on the same points ``(m, dim)`` float32."""
    from sklearn.cluster import MiniBatchKMeans

    x = np.ascontiguousarray(x, dtype=np.float32)
    out: dict[str, dict[str, float]] = {}
    (centres, _), fit = _timed(codebook.fit_kmeans, x, k, seed)
    _, predict = _timed(codebook.assign, x, centres)
    out["fastvlad"] = {"fit_seconds": fit, "predict_seconds": predict, "inertia": _inertia(x, centres)}
    km = MiniBatchKMeans(n_clusters=k, n_init=1, random_state=seed)
    _, fit = _timed(km.fit, x)
    _, predict = _timed(km.predict, x)
    out["sklearn_minibatch"] = {"fit_seconds": fit, "predict_seconds": predict,
                                "inertia": _inertia(x, km.cluster_centers_)}
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise here
    try:
        import faiss
    except ImportError:
        log.info("faiss is not installed (pip install 'fastvlad[faiss]'); skipping that peer")
        return out
    fk = faiss.Kmeans(x.shape[1], k, seed=seed, min_points_per_centroid=1)
    _, fit = _timed(fk.train, x)
    _, predict = _timed(fk.index.search, x, 1)
    out["faiss"] = {"fit_seconds": fit, "predict_seconds": predict, "inertia": _inertia(x, fk.centroids)}
    return out
