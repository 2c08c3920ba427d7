"""The encoder, top to bottom: images → CNN taps → hypercolumns at sampled pixels →
codebook (fit only) → VLAD codes. The classifier on the codes is in ``estimator.py``.

```
sources ─ batches ─→ (n, 3, H, W) pixels + (n, S, 2) points     images.iter_batches, on decoding threads
        ─ taps ────→ [(n, h_l, w_l, C_l)] on the backend         backbone.Backbone (ONNX Runtime)
        ─ hypercolumns → (n, S, dim or p)                        hypercolumn.gather / projection.gather
        ─ codebook_sample → fit_codebook: PCA + k-means centres   projection.fit, codebook.fit_kmeans
        ─ codes ───→ (n, k·dim) float32                          codebook.nearest_*, vlad.encode*
```

One CNN pass per image: the codebook is fitted on a sample of images, then every image is
encoded once. A batch's taps (24.5 MB per 224² image) are dropped as soon as its codes are
computed; nothing per-pixel is kept for the whole dataset. Without PCA the encoder never builds
the full (n, S, 1472) hypercolumns: the assignment and VLAD read the coarse taps on their own
grid (``Encoder.codes``). Everything that encodes — the estimator, cross-validation, Dask,
explanations, the bench — goes through ``Encoder``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import (
    backends,
    checks,
    codebook,
    config,
    hypercolumn,
    progress,
    projection,
    quantize,
    vlad,
)
from .backends import Backend
from .errors import (
    BackboneError,
    ImageReadError,
    InvalidDatasetError,
    ModelFormatError,
    is_gpu_out_of_memory,
)
from .images import (
    AnySource,
    Batch,
    Preprocess,
    Transformed,
    augmented,
    flipped,
    iter_batches,
    source_name,
    zoomed_size,
)
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
    normalize: str = "none"  # intensity normalisation before the CNN (intensity.NORMALIZATIONS)
    keep_aspect: bool = False  # image_size's side is the short side; the long one keeps the proportions
    points: str = "per_image"  # checks.POINT_DRAWS: seeded by each image's pixels, or shared per size
    softness: float | None = None  # soft assignment to the centres (vlad.encode_soft); None: the nearest only

    @classmethod
    def of(cls, model: Any) -> EncoderSettings:
        """The settings of an estimator's parameters (``FastVLAD``)."""
        return cls(model.density, checks.image_size(model.image_size), model.resample, model.interpolation,
                   model.intra, model.power, checks.seed(model), pca=int(model.pca) if model.pca else None,
                   whiten=bool(model.whiten), normalize=model.normalize,
                   keep_aspect=model.aspect == "keep" and checks.one_side(model.image_size), points=model.points,
                   softness=float(model.softness) if model.softness is not None else None)

    @property
    def n_points(self) -> int:
        return hypercolumn.points_for_density(self.density)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.image_size, self.resample, self.normalize, self.keep_aspect)

    def zoomed(self, factor: float) -> EncoderSettings:
        """These settings with the input size times ``factor``: an image as a microscope would show it
        at ``factor`` times the magnification (``checks.zoom`` has checked the size it gives)."""
        if self.image_size is None:
            raise ValueError("zoom needs an image_size")
        return replace(self, image_size=zoomed_size(self.image_size, factor))


@dataclass
class Timings:
    """Seconds per stage, summed over batches, and the number of images seen. ``synchronize``
    (the backend's, set by the encoder) runs before every clock read, so that a GPU stage's time
    is its work, not its kernel launches."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    images: int = 0
    synchronize: Callable[[], None] | None = None

    def add(self, stage: str, since: float) -> float:
        """Add the seconds since ``since`` (after the backend's queued work, when timed) to ``stage``; returns now."""
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
    scales: np.ndarray | None = None  # (n_ok,) float64 each image's ``images.input_scale``; None: not known

    def rows(self, n: int) -> np.ndarray:
        """``codes`` at their positions in a list of ``n`` sources: ``(n, k·dim)`` float32, NaN rows
        for the images that could not be read."""
        out = np.full((n, self.codes.shape[1]), np.nan, dtype=np.float32)
        out[self.indices] = self.codes
        return out


@dataclass
class EncodedBatch:
    """One decoded batch and its codes; with ``keep``, the assignments behind them."""

    batch: Batch  # indices, pixels (n, 3, H, W), points (n, S, 2), failed
    codes: np.ndarray  # (n, k·dim) float32
    labels: np.ndarray | None = None  # (n, S) int32 centre of every point
    dist: np.ndarray | None = None  # (n, S) float32 squared distance of every point's hypercolumn to it


#: What ``Encoder.encode`` may keep of each batch's codes ``(n_batch, k·dim)`` instead of the codes: a
#: function to ``(n_batch, width)`` float32 rows, and that width.
Reduce = tuple[Callable[[np.ndarray], np.ndarray], int]

#: Why encoding stopped when the model's arrays overflow float32 (``Encoder.encode_batches``).
OVERFLOW = ("the model's codebook or projection, or the backbone's taps, overflow float32 when encoding (its VLAD "
            "codes would not be finite); the model file or the backbone (an ONNX file given as backbone=) is "
            "damaged or edited")


class Workspace:
    """Reused output buffers: a fresh (n, S, 1472) float32 array per batch (235 MB for 8
    images at d = 10 %) costs more in page faults than the gather that fills it."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._buffers: dict[tuple[int, ...], Any] = {}

    def empty(self, shape: tuple[int, ...]) -> Any:
        """A float32 array of ``shape`` on the backend, reused while the shape repeats (contents undefined)."""
        if shape not in self._buffers:
            self._buffers.clear()
            self._buffers[shape] = self.backend.xp.empty(shape, dtype=np.float32)
        return self._buffers[shape]


class GpuMemoryRetry:
    """Runs per-batch work on parts of at most ``size`` images. On a GPU out-of-memory error
    it halves ``size`` (down to one image), says so, and retries that part; later batches
    keep the smaller size. The codes do not change: each image's points are seeded by the
    image itself, so how a batch is cut does not matter. Any other error passes through."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.size = max(1, backend.batch_size)

    def run(self, n: int, work: Callable[[slice], None]) -> None:
        """``work`` over slices of ``range(n)``, halving the slice on GPU out-of-memory and retrying it."""
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
                self.backend.release_memory()
                continue
            start = part.stop


@contextmanager
def naming_the_batch(sources: Sequence[AnySource], indices: Sequence[int]) -> Iterator[None]:
    """A ``BackboneError`` inside the block (the CNN failed on a batch) also names the batch's images:
    its message otherwise says only the batch's shape."""
    try:
        yield
    except BackboneError as exc:
        names = [source_name(sources[i], i) for i in indices[:3]]
        more = f" and {len(indices) - 3} more" if len(indices) > 3 else ""
        raise BackboneError(f"{exc}; the batch held {', '.join(names)}{more}") from None


def image_points(image: np.ndarray, settings: EncoderSettings, source: AnySource | None = None) -> np.ndarray:
    """Random pixels of one image (3, H, W), seeded by the seed and the image itself
    (``points="per_image"``) or by the seed and its size (``"shared"``): (S, 2) int32. A source
    with a ``points_key`` (an augmented copy) is seeded by the seed and that key instead."""
    _, h, w = image.shape
    if settings.points == "shared":
        return shared_points(settings.random_state, settings.n_points, h, w)
    key = source.points_key if isinstance(source, Transformed) else None
    rng = (hypercolumn.image_rng(settings.random_state, image) if key is None
           else hypercolumn.key_rng(settings.random_state, key))
    return hypercolumn.sample_points(rng, settings.n_points, h, w)


@functools.lru_cache(maxsize=16)
def shared_points(random_state: int, n_points: int, height: int, width: int) -> np.ndarray:
    """The points every image of one size shares: (S, 2) int32, read-only (one array for all of them)."""
    points = hypercolumn.sample_points(hypercolumn.size_rng(random_state, height, width), n_points, height, width)
    points.setflags(write=False)
    return points


def batch_points(pixels: np.ndarray, settings: EncoderSettings) -> np.ndarray:
    """``image_points`` of every image of a batch (n, 3, H, W): (n, S, 2) int32."""
    return np.stack([image_points(img, settings) for img in pixels])


@dataclass
class SamplePlan:
    """Which images and which of their points the codebook is fitted on: ``chosen`` positions, and
    ``keep`` drawing each readable image's rows in order (the local and the Dask fit share it)."""

    chosen: np.ndarray  # (m,) sorted positions in the source list
    per_image: int  # rows kept of each image
    rng: np.random.Generator

    def keep(self, n_points: int) -> np.ndarray:
        """Rows kept of the next readable image, which gave ``n_points`` points: (≤ per_image,) int64."""
        return self.rng.permuted(np.arange(n_points))[: self.per_image]


def sample_plan(n_sources: int, n_images: int, settings: EncoderSettings,
                max_points: int | None = None) -> SamplePlan:
    """``n_images`` random positions of ``n_sources`` and the rows to keep of each, ``max_points`` in all
    (``config.CODEBOOK_MAX_POINTS`` when None, read at the call)."""
    max_points = max_points or config.CODEBOOK_MAX_POINTS
    rng = np.random.default_rng(settings.random_state)
    chosen = np.sort(rng.choice(n_sources, size=min(n_images, n_sources), replace=False))
    per_image = max(1, min(settings.n_points, max_points // len(chosen)))
    return SamplePlan(chosen, per_image, rng)


def fit_centres(sample: np.ndarray, k: int, settings: EncoderSettings,
                timings: Timings | None = None) -> tuple[Projection | None, np.ndarray]:
    """The PCA (when ``settings.pca`` is narrower than the hypercolumn ``(m, dim)`` sample; a narrower
    backbone keeps its full hypercolumn) and the k-means centres ``(k, p or dim)`` of its projection."""
    timings = timings or Timings()
    proj = None
    t = time.perf_counter()
    if settings.pca and settings.pca < sample.shape[1]:
        proj = projection.fit(sample, settings.pca, settings.whiten, settings.random_state)
        sample = proj.apply(sample)
        t = timings.add("pca", t)
    centres, _ = codebook.fit_kmeans(sample, k, random_state=settings.random_state)
    timings.add("kmeans", t)
    return proj, centres


@dataclass(frozen=True)
class Encoder:
    """The encoder of one estimator: settings, backend, CNN, and once fitted, PCA and centres.

    Build it from an estimator with ``Encoder.of(model)``, or directly from its parts.
    """

    settings: EncoderSettings
    backend: Backend
    cnn: Any  # a backbone.Backbone, or any ``CNN`` (then ``of`` and the model file do not apply)
    projection: Projection | None = None
    centres: np.ndarray | None = None  # (k, p or dim) float32
    skip_errors: bool = False  # unreadable images are reported in ``failed`` instead of raised

    @classmethod
    def of(cls, model: Any, check_backbone: bool = True, threads: int | None = None) -> Encoder:
        """The encoder of a ``FastVLAD`` (its parameters, and what it has fitted). With
        ``check_backbone``, a backbone whose SHA-256 differs from the one the model was fitted
        with is refused (``ModelFormatError``). ``threads``: ONNX Runtime's (default: all cores)."""
        backend = backends.resolve(model.device, model.batch_size)
        # The CNN at the model's precision (an int8 copy is checked against the model's record).
        cnn = quantize.open_backbone(model, backend, threads, check=check_backbone)
        recorded = getattr(model, "backbone_sha256_", None)
        if check_backbone and recorded is not None and recorded != cnn.sha256:
            raise ModelFormatError(f"this model was trained with backbone SHA-256 {recorded[:12]}…, "
                                   f"but {cnn.path} has {cnn.sha256[:12]}…; use the same backbone")
        return cls(EncoderSettings.of(model), backend, cnn, getattr(model, "projection_", None),
                   getattr(model, "codebook_", None), model.on_error == "skip")

    @functools.cached_property
    def soft_unit(self) -> float:
        """``vlad.spacing`` of the centres: soft assignment's unit of squared distance, once per encoder."""
        if self.centres is None:
            raise ValueError("the encoder has no codebook yet: fit_codebook first")
        return vlad.spacing(np.asarray(self.centres, dtype=np.float32))  # as encode_soft would compute it

    # -- 1. images → batches of pixels and points -------------------------------------------------
    def batches(self, sources: Sequence[AnySource]) -> Iterator[Batch]:
        """The images decoded ``backend.batch_size`` at a time on the backend's decoding threads, which
        also sample every image's points (about 0.3 ms per image, kept off the thread driving the CNN)."""
        return iter_batches(sources, self.settings.preprocess, self.backend.batch_size, self.skip_errors,
                            threads=self.backend.decode_threads,
                            points_of=lambda pixels, source: image_points(pixels, self.settings, source))

    # -- 2. the CNN ---------------------------------------------------------------------------------
    def taps(self, pixels: np.ndarray, points: np.ndarray, timings: Timings) -> tuple[list[Any], Any]:
        """The CNN taps of a batch ``[(n, h_l, w_l, C_l)]`` and its points ``(n, S, 2)`` int32, both on
        the backend's device. The points lie in the input's pixel grid ``pixels.shape[2:]``: every
        later stage interpolates each tap onto that grid (``grid=``), whatever the taps' strides."""
        t = time.perf_counter()
        taps = self.cnn(pixels)
        t = timings.add("cnn", t)
        points = self.backend.asarray(points)
        taps = [self.backend.asarray(m) for m in taps]
        timings.add("points", t)
        return taps, points

    # -- 3. hypercolumns at the points -------------------------------------------------------------
    def hypercolumns(self, taps: list[Any], points: Any, grid: tuple[int, int], workspace: Workspace,
                     timings: Timings, proj: Projection | None = None) -> Any:
        """Hypercolumns of a batch at its points in the ``grid`` (the input's (H, W)): ``(n, S, dim)``
        float32, or ``(n, S, p)`` when ``proj`` (on the backend's device) projects each tap first. Lives
        in ``workspace`` until the next batch."""
        t = time.perf_counter()
        n, s = points.shape[:2]
        if proj is not None:
            out = workspace.empty((n, s, proj.components))
            projection.gather(taps, points, proj, self.settings.interpolation, self.backend, out=out, out_hw=grid)
        else:
            out = workspace.empty((n, s, sum(m.shape[3] for m in taps)))
            hypercolumn.gather(taps, points, self.settings.interpolation, self.backend, out=out, out_hw=grid)
        timings.add("hypercolumns", t)
        return out

    # -- 4. the codebook (fit only) ------------------------------------------------------------------
    def sample_hypercolumns(self, sources: Sequence[AnySource], keeps: Sequence[np.ndarray] | None,
                            plan: SamplePlan | None, timings: Timings,
                            bar: Callable[[int], None] | None = None) -> tuple[list[np.ndarray], list[tuple[int, ImageReadError]]]:
        """Full hypercolumns of every readable image of ``sources`` at its kept rows, on the host:
        ``keeps[i]`` given, or drawn from ``plan`` in order. Also the failures. ``bar(n)`` after each batch."""
        timings.synchronize = self.backend.synchronize
        rows: list[np.ndarray] = []
        failed: list[tuple[int, ImageReadError]] = []
        workspace = Workspace(self.backend)
        retry = GpuMemoryRetry(self.backend)
        for batch in self.batches(sources):
            failed += batch.failed
            if batch.indices:
                with naming_the_batch(sources, batch.indices):
                    hc = self._hypercolumns_in_parts(retry, batch, workspace, timings)
                for j, i in enumerate(batch.indices):
                    keep = keeps[i] if keeps is not None else plan.keep(hc.shape[1])  # type: ignore[union-attr]
                    rows.append(hc[j, keep])
            if bar is not None:
                bar(len(batch.indices) + len(batch.failed))
        return rows, failed

    def _hypercolumns_in_parts(self, retry: GpuMemoryRetry, batch: Batch, workspace: Workspace,
                               timings: Timings) -> np.ndarray:
        """Full hypercolumns ``(n, S, dim)`` of a batch on the host, computed in parts after a GPU
        out-of-memory error."""
        parts: list[np.ndarray] = []
        n = len(batch.pixels)

        def work(part: slice) -> None:
            taps, points = self.taps(batch.pixels[part], batch.points[part], timings)  # type: ignore[index]
            hc = self.backend.to_numpy(self.hypercolumns(taps, points, batch.grid, workspace, timings))
            # A part smaller than the batch must be copied out of the workspace the next part reuses.
            parts.append(hc if part.stop - part.start == n else hc.copy())

        retry.run(n, work)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def codebook_sample(self, sources: Sequence[AnySource], n_images: int = 100,
                        max_points: int | None = None, timings: Timings | None = None) -> np.ndarray:
        """Full hypercolumns ``(m, dim)`` float32 of ``n_images`` random images, ``max_points`` points at most."""
        timings = timings or Timings()
        plan = sample_plan(len(sources), n_images, self.settings, max_points)
        with progress.bar(len(plan.chosen), "codebook sample") as bar:
            rows, failed = self.sample_hypercolumns([sources[i] for i in plan.chosen], None, plan, timings,
                                                    bar.advance)
        if not rows:
            raise InvalidDatasetError(f"none of the {len(plan.chosen)} images sampled for the codebook could be read "
                                      f"(e.g. {failed[0][1] if failed else 'no images'}); check the images")
        return np.concatenate(rows)

    def fit_codebook(self, sources: Sequence[AnySource], k: int, n_images: int = 100,
                     max_points: int | None = None, timings: Timings | None = None) -> Encoder:
        """This encoder with the hypercolumn PCA (when ``settings.pca``) and the k-means centres
        ``(k, p or dim)``, both fitted on one codebook sample of ``sources``."""
        timings = timings or Timings()
        sample = self.codebook_sample(sources, n_images, max_points, timings)
        proj, centres = fit_centres(sample, k, self.settings, timings)
        return replace(self, projection=proj, centres=centres)

    # -- 5. VLAD codes --------------------------------------------------------------------------------
    def codes(self, taps: list[Any], points: Any, grid: tuple[int, int], centres: Any, proj: Projection | None,
              workspace: Workspace, timings: Timings) -> tuple[Any, Any]:
        """VLAD codes of a batch from its CNN taps ``(n, h_l, w_l, C_l)`` and points ``(n, S, 2)`` in ``grid``:
        ``(n, k·dim)`` float32 (dim = p with ``proj``), and the labels ``(n·S,)`` int32 behind them (each
        point's nearest centre, also with ``softness``), on the backend's device (``centres`` and ``proj``
        there too)."""
        n, s = points.shape[:2]
        mode, settings = self.settings.interpolation, self.settings
        # p-dim hypercolumns are small: gather them once for both stages. Soft assignment weighs every
        # point against every centre, so it needs the hypercolumns whole at any width.
        if proj is not None or settings.softness is not None:
            hc = self.hypercolumns(taps, points, grid, workspace, timings, proj)
            t = time.perf_counter()
            cross = codebook.cross_per_image(hc, centres, self.backend)  # for the labels and the soft weights
            labels = codebook.nearest_from_cross(cross, centres, self.backend)
            t = timings.add("assign", t)
            codes = (vlad.encode(hc, labels.reshape(n, s), centres, settings.intra, settings.power, self.backend)
                     if settings.softness is None else
                     vlad.encode_soft(hc, centres, settings.softness, settings.intra, settings.power, self.backend,
                                      self.soft_unit, cross))
        else:  # full width: the (n, S, dim) hypercolumns (29 MB per image at 1,472) are never built;
            # the fine taps (block1/2) are gathered once for both stages, the coarse ones read on their grid
            m = projection.points_side(taps, s, len(centres))
            fine = self.hypercolumns(taps[:m], points, grid, workspace, timings) if m else None
            t = time.perf_counter()
            labels = codebook.nearest_from_taps(taps, points, centres, mode, self.backend, fine, grid)
            t = timings.add("assign", t)
            codes = vlad.encode_from_taps(taps, points, labels.reshape(n, s), centres, mode, settings.intra,
                                          settings.power, self.backend, fine, grid)
        timings.add("vlad", t)
        return codes, labels

    def encode_batches(self, sources: Sequence[AnySource], timings: Timings | None = None,
                       keep: bool = False) -> Iterator[EncodedBatch]:
        """Codes of every image, one decoded batch at a time; with ``keep``, each point's label and
        squared distance too (the hypercolumns are then gathered a second time, for the distances)."""
        if self.centres is None:
            raise ValueError("the encoder has no codebook yet: fit_codebook first")
        timings = timings or Timings()
        timings.synchronize = self.backend.synchronize
        centres = self.backend.asarray(self.centres)
        proj = self.projection.to(self.backend.asarray) if self.projection is not None else None
        workspace = Workspace(self.backend)
        retry = GpuMemoryRetry(self.backend)
        for batch in self.batches(sources):
            n = len(batch.indices)
            codes = np.zeros((n, centres.size), dtype=np.float32)
            kept = EncodedBatch(batch, codes)
            if keep and n and batch.points is not None:
                kept.labels = np.zeros(batch.points.shape[:2], dtype=np.int32)
                kept.dist = np.zeros(batch.points.shape[:2], dtype=np.float32)

            def work(part: slice) -> None:
                taps, points = self.taps(batch.pixels[part], batch.points[part], timings)  # type: ignore[index]  # noqa: B023
                # Pixels are finite and 0..255 by now, and a CNN's activations far from float32's limits:
                # only the model's own arrays can overflow it (into NaN codes, or zero ones once a norm is
                # ∞: NumPy raises then; the kernels and BLAS do not, and leave NaN or ∞ in the codes).
                try:
                    with np.errstate(over="raise"):
                        c, labels = self.codes(taps, points, batch.grid, centres, proj, workspace, timings)  # noqa: B023
                except FloatingPointError:
                    raise ModelFormatError(OVERFLOW) from None
                codes[part] = self.backend.to_numpy(c)  # noqa: B023 - run() calls it before the loop moves on
                if not np.isfinite(codes[part]).all():  # noqa: B023
                    raise ModelFormatError(OVERFLOW)
                if kept.labels is not None:  # noqa: B023
                    labels = labels.reshape(points.shape[:2])
                    hc = self.hypercolumns(taps, points, batch.grid, workspace, timings, proj)  # noqa: B023
                    kept.labels[part] = self.backend.to_numpy(labels)  # noqa: B023
                    kept.dist[part] = self.backend.to_numpy(((hc - centres[labels]) ** 2).sum(axis=2))  # type: ignore[index]  # noqa: B023
                timings.images += part.stop - part.start

            with naming_the_batch(sources, batch.indices):
                retry.run(n, work)
            yield kept

    def encode_view(self, sources: Sequence[AnySource], view: View, timings: Timings | None = None,
                    label: str | None = None, reduce: Reduce | None = None) -> Encoded:
        """``encode`` of every image as ``view`` shows it: flipped by ``view.op``, at the input size times
        ``view.zoom``; the progress bar says so unless ``label`` is given."""
        encoder = self if view.zoom == 1.0 else replace(self, settings=self.settings.zoomed(view.zoom))
        return encoder.encode(flipped(sources, view.op) if view.op else sources, timings, label or view.label(), reduce)

    def encode(self, sources: Sequence[AnySource], timings: Timings | None = None, label: str = "encoding",
               reduce: Reduce | None = None) -> Encoded:
        """VLAD codes of every image: ``(n, k·dim)`` float32 (dim = p with a projection), one CNN pass each.
        ``label`` names the pass on the progress bar. With ``reduce`` (a function and its output width),
        each batch's codes are replaced as they come by what it makes of them, e.g. class probabilities
        ``(n_batch, n_classes)``: a run over many images then holds n × width values, not n × k·dim."""
        width = reduce[1] if reduce is not None else self.centres.size if self.centres is not None else 0
        rows = np.zeros((len(sources), width), dtype=np.float32)
        scales = np.full(len(sources), np.nan)
        done = np.zeros(len(sources), dtype=bool)
        failed: list[tuple[int, ImageReadError]] = []
        with progress.bar(len(sources), label) as bar:
            for enc in self.encode_batches(sources, timings):
                failed += enc.batch.failed
                if len(enc.batch.indices):
                    rows[enc.batch.indices] = enc.codes if reduce is None else reduce[0](enc.codes)
                scales[enc.batch.indices] = enc.batch.scales
                done[enc.batch.indices] = True
                bar.advance(len(enc.batch.indices) + len(enc.batch.failed))
        ok = np.flatnonzero(done)
        if len(ok) == len(sources):  # every image read: no second copy of the rows
            return Encoded(rows, ok, failed, scales)
        return Encoded(rows[ok], ok, failed, scales[ok])


@dataclass(frozen=True)
class View:
    """One term of the mean ``predict_proba`` takes over an image: the image flipped by
    ``intensity.dihedral(op)`` (0: as it is), at the input size times ``zoom`` (as at ``zoom`` times
    the magnification)."""

    op: int = 0
    zoom: float = 1.0

    def label(self) -> str:
        """What the progress bar calls this view's pass, e.g. "encoding, mirrored"."""
        flips = ("", "mirrored", "flipped up–down", "turned 180°")[self.op & 3]
        return ", ".join(["encoding", *([flips] if flips else []), *([f"at {self.zoom:g}×"] if self.zoom != 1.0 else [])])


def predict_views(tta: int, tta_zoom: Sequence[float] = ()) -> list[View]:
    """The views whose class probabilities ``predict_proba`` averages, the image itself first: its
    first ``tta`` flips, then the image at each input-size factor of ``tta_zoom``."""
    return [View(op) for op in range(1 + int(tta))] + [View(0, float(z)) for z in tta_zoom]


def describe_views(views: Sequence[View]) -> str:
    """The views a prediction averages, in words, e.g. "each image, 1 flipped copy and the image at
    0.7× the input size (3 CNN passes)"."""
    flips = sum(1 for v in views[1:] if v.op)
    parts = ["each image", *([f"{flips} flipped cop{'y' if flips == 1 else 'ies'}"] if flips else []),
             *(f"the image at {v.zoom:g}× the input size" for v in views[1:] if not v.op)]
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return f"{listed} ({len(views)} CNN pass{'' if len(views) == 1 else 'es'})"


#: The stages ``training_copies`` times, each also as ``<kind>_cnn`` (its CNN passes alone).
COPY_STAGES = ("augment", "zoom")


def copies_cnn_seconds(seconds: Mapping[str, float]) -> float:
    """The CNN seconds of the training copies in a fit's stage ``seconds`` (``COPY_STAGES``): CNN
    time like the ``cnn`` stage's, reported apart from it."""
    return float(sum(seconds.get(f"{kind}_cnn", 0.0) for kind in COPY_STAGES))


def zoom_sources(sources: Sequence[AnySource], indices: Sequence[int] | np.ndarray, jitter: bool,
                 seed: int) -> list[AnySource]:
    """What the zoomed training copies are made from: the sources at ``indices``, or with ``jitter``
    each one flipped and re-exposed as its first augmented copy is (``images.augmented``: the
    same seed, the same draw), so that the copies also teach the head other acquisitions."""
    return list(augmented(sources, indices, 1, seed)) if jitter else [sources[int(i)] for i in indices]


def copies_per_image(augment: int, zoom: Sequence[float]) -> int:
    """How many codes ``training_copies`` adds per readable training image: ``augment`` jittered
    copies and one per factor of ``zoom``."""
    return int(augment) + len(zoom)


def training_copies(encoder: Encoder, sources: Sequence[AnySource], indices: np.ndarray, augment: int,
                    zoom: Sequence[float], seed: int, timings: Timings,
                    zoom_jitter: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """What the classifier learns from besides the images themselves, encoded with the fitted
    ``encoder`` (the codebook stays on the originals): ``augment`` jittered copies of every
    readable image (``indices`` into ``sources``; ``images.augmented``), then every such image at
    the input size times each factor of ``zoom`` (another magnification), with ``zoom_jitter``
    also flipped and re-exposed (``zoom_sources``). Returns their codes
    ``(m, D)`` float32 and ``(m,)`` int64 the position in ``indices`` each was made from. Their CNN
    seconds go to ``timings``' ``augment_cnn`` and ``zoom_cnn``, all their seconds to ``augment``
    and ``zoom``: extra CNN passes, reported apart from the fit's own."""
    codes: list[np.ndarray] = [np.zeros((0, encoder.centres.size if encoder.centres is not None else 0), np.float32)]
    rows: list[np.ndarray] = [np.zeros(0, np.int64)]

    def add(kind: str, enc: Encoded, of: np.ndarray, extra: Timings, since: float) -> None:
        codes.append(enc.codes)
        rows.append(of.astype(np.int64))
        timings.seconds[f"{kind}_cnn"] += extra.seconds["cnn"]
        timings.seconds[kind] += time.perf_counter() - since

    if augment:
        t, extra = time.perf_counter(), Timings()
        enc = encoder.encode(augmented(sources, indices, augment, seed), extra, "encoding augmented copies")
        add("augment", enc, enc.indices % max(1, len(indices)), extra, t)
    originals = zoom_sources(sources, indices, zoom_jitter, seed) if zoom else []
    for factor in zoom:
        t, extra = time.perf_counter(), Timings()
        enc = encoder.encode_view(originals, View(0, factor), extra, f"encoding training copies at {factor:g}×")
        add("zoom", enc, enc.indices, extra, t)
    return np.concatenate(codes), np.concatenate(rows)
