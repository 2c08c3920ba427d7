"""The data flow, top to bottom: images → CNN taps → hypercolumns at sampled pixels →
codebook (fit only) → VLAD codes. The classifier on the codes is in ``estimator.py``.

One CNN pass per image: the codebook is fitted on a sample of images, then every image is
encoded once. A batch's taps (24.5 MB per 224² image) are dropped as soon as its codes are
computed; nothing per-pixel is kept for the whole dataset. Without PCA the encoder never builds
the full (n, S, 1472) hypercolumns: the assignment and VLAD read the coarse taps on their own
grid (``vlad_codes``).
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import codebook, config, hypercolumn, progress, projection, vlad
from .backbone import Backbone
from .backends import Backend
from .errors import ImageReadError, InvalidDatasetError, is_gpu_out_of_memory
from .images import Batch, ImageSource, Preprocess, iter_batches
from .projection import Projection

log = logging.getLogger("fastvlad")

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
    pca: int | None = None  # hypercolumn PCA components (None: the full hypercolumn)
    whiten: bool = False  # divide the PCA axes by their standard deviations

    @property
    def n_points(self) -> int:
        return hypercolumn.points_for_density(self.density)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.image_size, self.resample)


@dataclass
class Timings:
    """Seconds per stage, summed over batches, and the number of images seen. ``synchronize``
    (the backend's, set by ``encode`` and ``codebook_sample``) runs before every clock read, so
    that a GPU stage's time is its work, not its kernel launches."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    images: int = 0
    synchronize: Callable[[], None] | None = None

    def add(self, stage: str, since: float) -> float:
        if self.synchronize is not None:
            self.synchronize()
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


class GpuMemoryRetry:
    """Runs per-batch work on parts of at most ``size`` images. On a GPU out-of-memory error
    it halves ``size`` (down to one image), says so, and retries that part; later batches
    keep the smaller size. The codes do not change: each image's points are seeded by the
    image itself, so how a batch is cut does not matter. Any other error passes through."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)

    def run(self, n: int, work: Callable[[slice], None]) -> None:
        start = 0
        while start < n:
            part = slice(start, min(n, start + self.size))
            try:
                work(part)
            except Exception as exc:
                if self.size == 1 or not is_gpu_out_of_memory(exc):
                    raise
                tried = part.stop - part.start
                self.size = max(1, tried // 2)
                log.warning("fastvlad: out of GPU memory with %d images at once; retrying with %d (%s)",
                            tried, self.size, str(exc).splitlines()[0][:200])
                _release_gpu_memory()
                continue
            start = part.stop


def _release_gpu_memory() -> None:
    cupy = sys.modules.get("cupy")  # only ever loaded by the GPU backend
    if cupy is not None:
        cupy.get_default_memory_pool().free_all_blocks()


def image_points(image: np.ndarray, settings: EncoderSettings) -> np.ndarray:
    """Random pixels of one image (3, H, W), seeded by the seed and the image itself: (S, 2) int32."""
    _, h, w = image.shape
    return hypercolumn.sample_points(hypercolumn.image_rng(settings.random_state, image), settings.n_points, h, w)


def sample_points(pixels: np.ndarray, settings: EncoderSettings) -> np.ndarray:
    """``image_points`` of every image of a batch (n, 3, H, W): (n, S, 2) int32."""
    return np.stack([image_points(img, settings) for img in pixels])


def batches(sources: Sequence[ImageSource], settings: EncoderSettings, backend: Backend,
            skip_errors: bool = False) -> Iterator[Batch]:
    """The images decoded ``backend.batch_size`` at a time on the backend's decoding threads, which
    also sample every image's points (about 0.3 ms per image, kept off the thread driving the CNN)."""
    return iter_batches(sources, settings.preprocess, backend.batch_size, skip_errors, threads=backend.decode_threads,
                        points_of=functools.partial(image_points, settings=settings))


def cnn_taps(backbone: Backbone, pixels: np.ndarray, settings: EncoderSettings, backend: Backend,  # type: ignore[no-untyped-def]
             timings: Timings, points: np.ndarray | None = None):
    """The CNN taps of a batch ``[(n, h_l, w_l, C_l)]`` on the backend's device, and its points
    ``(n, S, 2)`` int32 there (``points``, or sampled here when not given)."""
    t = time.perf_counter()
    taps = backbone(pixels)
    t = timings.add("cnn", t)
    points = backend.asarray(sample_points(pixels, settings) if points is None else points)
    taps = [backend.asarray(m) for m in taps]
    timings.add("points", t)
    return taps, points


def gather_points(taps, points, settings: EncoderSettings, workspace: Workspace, timings: Timings,  # type: ignore[no-untyped-def]
                  proj: Projection | None = None):
    """Hypercolumns of a batch at its points: ``(n, S, dim)`` float32, or ``(n, S, p)`` when ``proj``
    (on the backend's device) projects each tap first. Lives in ``workspace`` until the next batch."""
    t = time.perf_counter()
    impl = workspace.backend.impl
    n, s = points.shape[:2]
    if proj is not None:
        out = workspace.empty((n, s, proj.components))
        projection.gather(taps, points, proj, settings.interpolation, impl=impl, out=out)
    else:
        out = workspace.empty((n, s, sum(m.shape[3] for m in taps)))
        hypercolumn.gather(taps, points, settings.interpolation, impl=impl, out=out)
    timings.add("hypercolumns", t)
    return out


def hypercolumns(backbone: Backbone, pixels: np.ndarray, settings: EncoderSettings,  # type: ignore[no-untyped-def]
                 workspace: Workspace, timings: Timings, proj: Projection | None = None,
                 points: np.ndarray | None = None):
    """``gather_points`` of a batch's CNN taps at its points (sampled here when not given)."""
    taps, points = cnn_taps(backbone, pixels, settings, workspace.backend, timings, points)
    return gather_points(taps, points, settings, workspace, timings, proj)


def codebook_sample(sources: Sequence[ImageSource], backbone: Backbone, settings: EncoderSettings,
                    backend: Backend, n_images: int = 100, max_points: int = config.CODEBOOK_MAX_POINTS,
                    timings: Timings | None = None, skip_errors: bool = False) -> np.ndarray:
    """Full hypercolumns ``(m, dim)`` float32 of ``n_images`` random images, ``max_points`` points at most."""
    timings = timings or Timings()
    timings.synchronize = backend.synchronize
    rng = np.random.default_rng(settings.random_state)
    chosen = np.sort(rng.choice(len(sources), size=min(n_images, len(sources)), replace=False))
    per_image = max(1, min(settings.n_points, max_points // len(chosen)))
    sample: list[np.ndarray] = []
    failed: list[tuple[int, ImageReadError]] = []
    workspace = Workspace(backend)
    retry = GpuMemoryRetry(backend.batch_size)
    with progress.bar(len(chosen), "codebook sample") as bar:
        for batch in batches([sources[i] for i in chosen], settings, backend, skip_errors):
            failed += batch.failed
            if batch.indices:
                hc = _hypercolumns_in_parts(retry, backbone, batch, settings, workspace, timings)
                keep = rng.permuted(np.tile(np.arange(hc.shape[1]), (len(hc), 1)), axis=1)[:, :per_image]
                sample.append(np.take_along_axis(hc, keep[..., None], axis=1).reshape(-1, hc.shape[2]))
            bar.advance(len(batch.indices) + len(batch.failed))
    if not sample:
        raise InvalidDatasetError(f"none of the {len(chosen)} images sampled for the codebook could be read "
                                  f"(e.g. {failed[0][1] if failed else 'no images'}); check the images")
    return np.concatenate(sample)


def _hypercolumns_in_parts(retry: GpuMemoryRetry, backbone: Backbone, batch: Batch, settings: EncoderSettings,
                           workspace: Workspace, timings: Timings) -> np.ndarray:
    """``hypercolumns`` of a batch on the host, computed in parts after a GPU out-of-memory error."""
    parts: list[np.ndarray] = []
    n = len(batch.pixels)

    def work(part: slice) -> None:
        points = batch.points[part] if batch.points is not None else None
        hc = Backend.to_numpy(hypercolumns(backbone, batch.pixels[part], settings, workspace, timings, points=points))
        # A part smaller than the batch must be copied out of the workspace the next part reuses.
        parts.append(hc if part.stop - part.start == n else hc.copy())

    retry.run(n, work)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def fit_encoder(sources: Sequence[ImageSource], backbone: Backbone, k: int, settings: EncoderSettings,
                backend: Backend, n_images: int = 100, max_points: int = config.CODEBOOK_MAX_POINTS,
                timings: Timings | None = None, skip_errors: bool = False) -> tuple[Projection | None, np.ndarray]:
    """The hypercolumn PCA (when ``settings.pca``) and the k-means centres ``(k, p or dim)``, both
    fitted on one codebook sample."""
    timings = timings or Timings()
    sample = codebook_sample(sources, backbone, settings, backend, n_images, max_points, timings, skip_errors)
    return fit_on_sample(sample, k, settings, timings)


def fit_on_sample(sample: np.ndarray, k: int, settings: EncoderSettings,
                  timings: Timings) -> tuple[Projection | None, np.ndarray]:
    """The PCA (when ``settings.pca`` is narrower than the hypercolumn ``(m, dim)`` sample; a
    narrower backbone keeps its full hypercolumn) and k-means on its projection."""
    proj = None
    t = time.perf_counter()
    if settings.pca and settings.pca < sample.shape[1]:
        proj = projection.fit(sample, settings.pca, settings.whiten, settings.random_state)
        sample = proj.apply(sample)
        t = timings.add("pca", t)
    centres, _ = codebook.fit_kmeans(sample, k, random_state=settings.random_state)
    timings.add("kmeans", t)
    return proj, centres


def vlad_codes(taps, points, centres, settings: EncoderSettings, backend: Backend, workspace: Workspace,  # type: ignore[no-untyped-def]
               timings: Timings, proj: Projection | None = None):
    """VLAD codes of a batch from its CNN taps ``(n, h_l, w_l, C_l)`` and points ``(n, S, 2)``:
    ``(n, k·dim)`` float32 on the backend's device (dim = p with ``proj``)."""
    n, s = points.shape[:2]
    if proj is not None:  # p-dim hypercolumns are small: gather them once for both stages
        hc = gather_points(taps, points, settings, workspace, timings, proj)
        t = time.perf_counter()
        labels = codebook.nearest_per_image(hc, centres, impl=backend.impl)
        t = timings.add("assign", t)
        codes = vlad.encode(hc, labels.reshape(n, s), centres, settings.intra, settings.power, impl=backend.impl)
    else:  # full width: the (n, S, dim) hypercolumns (29 MB per image at 1,472) are never built;
        # the fine taps (block1/2) are gathered once for both stages, the coarse ones read on their grid
        m = projection.points_side(taps, s, len(centres))
        fine = gather_points(taps[:m], points, settings, workspace, timings) if m else None
        t = time.perf_counter()
        labels = codebook.nearest_from_taps(taps, points, centres, settings.interpolation, backend.impl, fine)
        t = timings.add("assign", t)
        codes = vlad.encode_from_taps(taps, points, labels.reshape(n, s), centres, settings.interpolation,
                                      settings.intra, settings.power, backend.impl, fine)
    timings.add("vlad", t)
    return codes


def encode(sources: Sequence[ImageSource], backbone: Backbone, centres: np.ndarray, settings: EncoderSettings,
           backend: Backend, timings: Timings | None = None, skip_errors: bool = False,
           proj: Projection | None = None) -> Encoded:
    """VLAD codes of every image: ``(n, k·dim)`` float32 (dim = p with ``proj``), one CNN pass each."""
    timings = timings or Timings()
    timings.synchronize = backend.synchronize
    centres_dev = backend.asarray(centres)
    proj_dev = proj.to(backend.asarray) if proj is not None else None
    codes = np.zeros((len(sources), centres.size), dtype=np.float32)
    done = np.zeros(len(sources), dtype=bool)
    failed: list[tuple[int, ImageReadError]] = []
    workspace = Workspace(backend)
    retry = GpuMemoryRetry(backend.batch_size)
    with progress.bar(len(sources), "encoding") as bar:
        for batch in batches(sources, settings, backend, skip_errors):
            failed += batch.failed

            def work(part: slice) -> None:
                indices = batch.indices[part]  # noqa: B023 - run() calls it before the loop moves on
                points = batch.points[part] if batch.points is not None else None  # noqa: B023
                taps, points = cnn_taps(backbone, batch.pixels[part], settings, backend, timings, points)  # noqa: B023
                v = vlad_codes(taps, points, centres_dev, settings, backend, workspace, timings, proj_dev)
                codes[indices] = Backend.to_numpy(v)
                done[indices] = True
                timings.images += len(indices)

            retry.run(len(batch.indices), work)
            bar.advance(len(batch.indices) + len(batch.failed))
    ok = np.flatnonzero(done)
    return Encoded(codes[ok], ok, failed)
