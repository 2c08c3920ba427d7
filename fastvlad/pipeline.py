"""The data flow, top to bottom: images → CNN taps → hypercolumns at sampled pixels →
codebook (fit only) → VLAD codes. The classifier on the codes is in ``estimator.py``.

One CNN pass per image: the codebook is fitted on a sample of images, then every image is
encoded once. A batch's taps (24.5 MB per 224² image) are dropped as soon as its
hypercolumns are gathered; nothing per-pixel is kept for the whole dataset.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import codebook, config, hypercolumn, progress, vlad
from .backbone import Backbone
from .backends import Backend
from .errors import ImageReadError
from .images import ImageSource, Preprocess, iter_batches


@dataclass(frozen=True)
class EncoderSettings:
    """Everything that decides the codes, apart from the backbone and the codebook."""

    density: float = 10.0
    image_size: tuple[int, int] | None = (224, 224)
    resample: str = "bilinear"
    interpolation: str = "half_pixel"
    intra: bool = True
    power: bool = False
    random_state: int = 0

    @property
    def n_points(self) -> int:
        return hypercolumn.points_for_density(self.density)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.image_size, self.resample)


@dataclass
class Timings:
    """Seconds per stage, summed over batches, and the number of images seen."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    images: int = 0

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - since
        return now


@dataclass
class Encoded:
    """Codes of the images that could be read, and the ones that could not."""

    codes: np.ndarray  # (n_ok, k·dim) float32
    indices: np.ndarray  # (n_ok,) positions in the source list
    failed: list[tuple[int, ImageReadError]]


class Workspace:
    """Reused output buffers: a fresh (n, S, 1472) float32 array per batch (235 MB for 8
    images at d = 10 %) costs more in page faults than the gather that fills it."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._buffers: dict[tuple[int, ...], object] = {}

    def empty(self, shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
        if shape not in self._buffers:
            self._buffers.clear()
            self._buffers[shape] = self.backend.xp.empty(shape, dtype=np.float32)
        return self._buffers[shape]


def sample_points(pixels: np.ndarray, settings: EncoderSettings) -> np.ndarray:
    """Random pixels of every image, seeded by the seed and the image itself: (n, S, 2) int32."""
    _, _, h, w = pixels.shape
    return np.stack([hypercolumn.sample_points(hypercolumn.image_rng(settings.random_state, img),
                                               settings.n_points, h, w) for img in pixels])


def hypercolumns(backbone: Backbone, pixels: np.ndarray, settings: EncoderSettings, workspace: Workspace,
                 timings: Timings):  # type: ignore[no-untyped-def]
    """CNN taps of a batch, then their hypercolumns at sampled points: (n, S, dim) float32.

    The result lives in ``workspace`` and is overwritten by the next batch."""
    backend = workspace.backend
    t = time.perf_counter()
    taps = backbone(pixels)
    t = timings.add("cnn", t)
    points = sample_points(pixels, settings)
    taps = [backend.asarray(m) for m in taps]
    out = workspace.empty((len(pixels), points.shape[1], sum(m.shape[3] for m in taps)))
    hypercolumn.gather(taps, backend.asarray(points), settings.interpolation, impl=backend.impl, out=out)
    timings.add("hypercolumns", t)
    return out


def fit_codebook(sources: Sequence[ImageSource], backbone: Backbone, k: int, settings: EncoderSettings,
                 backend: Backend, n_images: int = 100, max_points: int = config.CODEBOOK_MAX_POINTS,
                 timings: Timings | None = None, skip_errors: bool = False) -> np.ndarray:
    """K-means centres ``(k, dim)`` float32 from ``n_images`` random images, ``max_points`` points at most."""
    timings = timings or Timings()
    rng = np.random.default_rng(settings.random_state)
    chosen = np.sort(rng.choice(len(sources), size=min(n_images, len(sources)), replace=False))
    per_image = max(1, min(settings.n_points, max_points // len(chosen)))
    sample: list[np.ndarray] = []
    workspace = Workspace(backend)
    with progress.bar(len(chosen), "codebook sample") as bar:
        for batch in iter_batches([sources[i] for i in chosen], settings.preprocess, backend.batch_size, skip_errors):
            hc = Backend.to_numpy(hypercolumns(backbone, batch.pixels, settings, workspace, timings))
            keep = rng.permuted(np.tile(np.arange(hc.shape[1]), (len(hc), 1)), axis=1)[:, :per_image]
            sample.append(np.take_along_axis(hc, keep[..., None], axis=1).reshape(-1, hc.shape[2]))
            bar.advance(len(batch.indices) + len(batch.failed))
    t = time.perf_counter()
    centres, _ = codebook.fit_kmeans(np.concatenate(sample), k, random_state=settings.random_state)
    timings.add("kmeans", t)
    return centres


def encode(sources: Sequence[ImageSource], backbone: Backbone, centres: np.ndarray, settings: EncoderSettings,
           backend: Backend, timings: Timings | None = None, skip_errors: bool = False) -> Encoded:
    """VLAD codes of every image: ``(n, k·dim)`` float32, one CNN pass each."""
    timings = timings or Timings()
    dim = centres.shape[1]
    centres_dev = backend.asarray(centres)
    codes = np.zeros((len(sources), centres.size), dtype=np.float32)
    done = np.zeros(len(sources), dtype=bool)
    failed: list[tuple[int, ImageReadError]] = []
    workspace = Workspace(backend)
    with progress.bar(len(sources), "encoding") as bar:
        for batch in iter_batches(sources, settings.preprocess, backend.batch_size, skip_errors):
            failed += batch.failed
            if batch.indices:
                hc = hypercolumns(backbone, batch.pixels, settings, workspace, timings)
                t = time.perf_counter()
                labels, _ = codebook.assign(hc.reshape(-1, dim), centres_dev, impl=backend.impl)
                t = timings.add("assign", t)
                v = vlad.encode(hc, labels.reshape(hc.shape[:2]), centres_dev, settings.intra, settings.power,
                                impl=backend.impl)
                codes[batch.indices] = Backend.to_numpy(v)
                done[batch.indices] = True
                timings.add("vlad", t)
                timings.images += len(batch.indices)
            bar.advance(len(batch.indices) + len(batch.failed))
    ok = np.flatnonzero(done)
    return Encoded(codes[ok], ok, failed)
