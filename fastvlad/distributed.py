"""Scale out with Dask: fit, encode and predict on the workers of a ``dask.distributed`` cluster.

The work is the local pipeline's, cut into partitions of the image list:

- every worker process opens its backbone once and keeps it for all its partitions
  (``_worker_encoder``); partitions on one worker take turns, because the backbone and the
  kernels already use all the cores the worker is given (``FASTVLAD_THREADS``);
- the codebook sample is the local one — the same images, the same points, in the same
  order (``Encoder.sample_plan``) — gathered to the client, where the PCA (if any) and k-means
  are fitted as in ``Encoder.fit_codebook``; they then reach every task as one shared task's
  result, which the scheduler recomputes if a worker dies (``_shared``);
- every partition returns its images' positions with its codes, and the client checks that
  each image came back exactly once, so a partition recomputed after a worker died can be
  neither lost nor counted twice;
- the booster is trained by ``xgboost.dask`` on a ``DaskQuantileDMatrix`` whose blocks stay
  on the workers that encoded them.

Image files must be readable at the same path on every worker (a shared file system).
Dask is optional (``pip install 'fastvlad[dask]'``). With ``client=None`` each function
runs the local path, so a caller such as the CLI needs no branch.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import clone

from . import backends, checks, classifier, config, tiling
from .encoder import (
    Encoded,
    Encoder,
    EncoderSettings,
    Timings,
    View,
    fit_centres,
    sample_plan,
    zoom_sources,
)
from .errors import (
    DistributedError,
    ImageReadError,
    InvalidDatasetError,
    ModelFormatError,
    ParameterError,
)
from .estimator import CNNIdentity, check_fitted, unchanged_on_failure
from .images import AnySource, Derived, ImageSource, Transformed

if TYPE_CHECKING:
    from distributed import Client, Future

    from .estimator import FastVLAD

log = logging.getLogger("fastvlad")

#: Environment variable of a worker process: the cores its backbone, Numba and BLAS may use
#: (unset: all the cores the process sees — right for one worker process per machine).
THREADS_ENV = "FASTVLAD_THREADS"
#: Most threads ``FASTVLAD_THREADS`` may ask for (BLAS and Numba take a C int).
MAX_THREADS = 4096
#: Largest partition: its codes come back in one message (256 × 147,200 float32 ≈ 150 MB).
MAX_PARTITION = 256
INSTALL = "pip install 'fastvlad[dask]'"


# -- connecting -------------------------------------------------------------------------------
def _require_dask() -> None:
    try:
        import distributed  # noqa: F401
        import xgboost.dask  # noqa: F401
    except ImportError as exc:
        raise DistributedError(f"running on a Dask cluster needs Dask ({exc}); install it with {INSTALL}") from None


def local_cluster(n_workers: int, device: str = "auto"):  # type: ignore[no-untyped-def]
    """A ``LocalCluster`` of ``n_workers`` processes on 127.0.0.1, the cores split between them.

    With ``dask-cuda`` installed and a usable GPU (``device`` auto or cuda), a
    ``LocalCUDACluster`` instead: one worker process per GPU, ``n_workers`` GPUs at most."""
    _require_dask()
    if n_workers < 1:
        raise ParameterError(f"--workers {n_workers}: start at least one worker process")
    most = max(2, config.usable_cores())
    if n_workers > most:  # each is a process holding a network: thousands would fill the memory first
        raise ParameterError(f"--workers {n_workers}: at most {most} here ({config.usable_cores()} usable cores; "
                             "more processes than cores only share them)")
    if device != "cpu" and backends.cuda_problem() is None:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            log.info("fastvlad: dask-cuda is not installed; starting CPU-style workers (pip install dask-cuda)")
        else:
            return LocalCUDACluster(n_workers=n_workers, host="127.0.0.1", dashboard_address=None)
    from distributed import LocalCluster

    threads = str(max(1, config.usable_cores() // n_workers))
    env = {THREADS_ENV: threads, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}
    return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                        dashboard_address=None, env=env)


@contextmanager
def connect(scheduler: str | None = None, workers: int = 0, device: str = "auto",
            timeout: float = 10.0) -> Iterator[Client | None]:
    """A client of the scheduler at ``scheduler`` (tcp://HOST:PORT; ``timeout`` seconds to reach
    it), or of a local cluster of ``workers`` processes; ``None`` when neither is asked for."""
    if not scheduler and not workers:
        yield None
        return
    if scheduler and workers:
        raise ParameterError("--scheduler and --workers: give one of them (--workers starts a local cluster)")
    _require_dask()
    from distributed import Client

    if scheduler:
        from distributed.comm.addressing import get_address_host_port

        try:  # before Client(): a Client that failed to start prints a traceback when it is collected
            get_address_host_port(scheduler)
        except ValueError as exc:
            raise ParameterError(f"--scheduler {scheduler}: not a scheduler address ({exc}); give one as "
                                 "tcp://HOST:PORT") from None
        try:
            client = Client(scheduler, timeout=timeout)
        except OSError as exc:  # also TimeoutError
            raise DistributedError(f"--scheduler {scheduler}: cannot connect ({exc}); start one with "
                                   "'dask scheduler' and 'dask worker ADDRESS', or use --workers N") from None
        with client:
            yield client
        return
    with local_cluster(workers, device) as cluster, Client(cluster) as client:
        yield client


# -- what runs on the workers ---------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    """What a worker needs to rebuild the encoder: an unfitted copy of the estimator (its
    parameters only) and the backbone hash the model was fitted with."""

    estimator: Any  # FastVLAD, unfitted
    backbone_sha256: str | None = None

    @property
    def skip_errors(self) -> bool:
        return bool(self.estimator.on_error == "skip")


@dataclass
class _Part:
    """One partition's result: rows for the images that could be read, and the others."""

    indices: np.ndarray  # (n_ok,) int64 positions in the full list
    values: np.ndarray  # (n_ok, ...) codes or probabilities, rows in ``indices`` order
    failed: list[tuple[int, ImageReadError]]
    seconds: dict[str, float] = field(default_factory=dict)
    scales: np.ndarray | None = None  # (n_ok,) each image's ``images.input_scale``


_TURN = threading.Lock()


def worker_threads() -> int:
    """Threads for one worker's kernels: ``$FASTVLAD_THREADS`` (a whole number ≥ 1), else its usable cores."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return config.usable_cores()
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_THREADS):
        raise ParameterError(f"{THREADS_ENV}={text[:40]!r}: give a whole number of threads from 1 to {MAX_THREADS}, "
                             "or unset it for the worker's usable cores")
    return int(text)


@contextmanager
def _worker_turn() -> Iterator[None]:
    """One partition at a time in this process, with BLAS and Numba held to its share of cores
    (a Dask nanny sets OMP_NUM_THREADS=1, which would leave the assignment GEMM on one core)."""
    import numba
    from threadpoolctl import threadpool_limits

    threads = worker_threads()
    with _TURN, threadpool_limits(threads):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
        yield


def _worker_encoder(spec: _Spec, encoder: tuple[np.ndarray, Any] | None = None) -> Encoder:
    """This process's encoder for ``spec`` (its backbone opened once per process and kept, with this
    worker's share of the cores), with the broadcast ``encoder`` (centres, projection) if given."""
    enc = Encoder.of(spec.estimator, check_backbone=False, threads=worker_threads())
    if spec.backbone_sha256 and spec.backbone_sha256 != enc.cnn.sha256:
        raise ModelFormatError(f"this model was trained with backbone SHA-256 {spec.backbone_sha256[:12]}…, "
                               f"but {enc.cnn.path} on this worker has {enc.cnn.sha256[:12]}…; "
                               "give every worker the same backbone")
    return enc if encoder is None else replace(enc, centres=encoder[0], projection=encoder[1])


def _points_per_image(sources: Sequence[ImageSource], start: int, spec: _Spec) -> list[int | ImageReadError]:
    """Points each image gives after preprocessing, min(S, h·w), or why it cannot be read."""
    settings = EncoderSettings.of(spec.estimator)
    out: list[int | ImageReadError] = []
    for i, src in enumerate(sources):
        try:
            name = src if not isinstance(src, np.ndarray) else f"array #{start + i}"
            h, w = settings.preprocess(src, name=name)[0].shape
        except ImageReadError as exc:
            if not spec.skip_errors:
                raise
            out.append(exc)
            continue
        out.append(min(settings.n_points, h * w))
    return out


@dataclass
class _Sample:
    """One partition of the codebook sample and the backbone that computed it."""

    points: np.ndarray  # (Σ len(keep), dim) float32, image by image
    seconds: dict[str, float]
    cnn: CNNIdentity


def _check_readable(sources: Sequence[ImageSource]) -> None:
    checks.readable(sources)


def _sample_part(sources: Sequence[ImageSource], keeps: Sequence[np.ndarray], spec: _Spec) -> _Sample:
    """Hypercolumns of each image at its chosen points (``keeps``: row indices per image)."""
    timings = Timings()
    with _worker_turn():
        encoder = _worker_encoder(spec)
        rows, _ = encoder.sample_hypercolumns(sources, keeps, None, timings)
    return _Sample(np.concatenate(rows), dict(timings.seconds), CNNIdentity.of(encoder.cnn))


def _encode_part(sources: Sequence[ImageSource], start: int, encoder: tuple[np.ndarray, Any], spec: _Spec,
                 view: View = View()) -> _Part:
    """VLAD codes of one partition as ``view`` shows it (``Encoder.encode_view``), positions shifted
    by ``start``. ``encoder``: the centres and the hypercolumn projection (or None)."""
    timings = Timings()
    with _worker_turn():
        enc = _worker_encoder(spec, encoder).encode_view(sources, view, timings)
    return _Part(enc.indices + start, enc.codes, [(i + start, e) for i, e in enc.failed], dict(timings.seconds),
                 enc.scales)


def _predict_part(part: _Part, head: Any) -> _Part:
    """Class probabilities of an encoded partition: values (n_ok, n_classes) float32."""
    proba = classifier.predict_proba(head, part.values) if len(part.indices) else part.values[:, :0]
    return replace(part, values=proba)


def _without_values(part: _Part) -> _Part:
    return replace(part, values=np.empty((len(part.indices), 0), np.float32))


def _values(part: _Part) -> np.ndarray:
    return part.values


def _open_backbone(spec: _Spec) -> None:
    _ = _worker_encoder(spec).cnn.dims  # one tiny inference: ONNX Runtime allocates on its first run


def _worker_device(device: str) -> str:
    return backends.resolve(device).device


# -- on the client --------------------------------------------------------------------------
def _spec(model: FastVLAD) -> _Spec:
    return _Spec(clone(model), getattr(model, "backbone_sha256_", None))


def _partition_size(client: Client, n: int, requested: int | None) -> int:
    """``requested``, or about four partitions per worker, between 8 and ``MAX_PARTITION`` images."""
    if requested:
        return max(1, int(requested))
    workers = max(1, len(client.nthreads()))
    return int(min(MAX_PARTITION, max(8, math.ceil(n / (4 * workers)))))


def _cut(n: int, size: int) -> list[range]:
    return [range(a, min(n, a + size)) for a in range(0, n, size)]


def _shipped(X: Sequence[AnySource], positions: Sequence[int] | np.ndarray | range) -> list[AnySource]:
    """The images at ``positions`` as sent to a worker: paths made absolute, since a worker's
    working folder need not be the client's (views are made on the worker, from these)."""
    return [_absolute(X[i]) for i in positions]


def _absolute(x: AnySource) -> AnySource:
    """``x`` with its path (a changed image's underlying one too) made absolute."""
    if isinstance(x, Transformed):
        return replace(x, source=_absolute(x.source))
    # a tiling.Micrograph or Tile already holds an absolute path
    return x if isinstance(x, (np.ndarray, Derived)) else os.path.abspath(x)


def _gather(client: Client, futures: list[Future]) -> list[Any]:
    """Results in submission order; the first error (an ``ImageReadError`` naming its file)
    is raised as itself, and the other partitions are cancelled."""
    try:
        return list(client.gather(futures))
    except BaseException:
        client.cancel(futures)
        raise


def _check_complete(n: int, parts: Sequence[_Part]) -> None:
    """Raise unless each of the ``n`` images is in exactly one part, as a row or a failure."""
    seen = np.zeros(n, dtype=np.int64)
    for p in parts:
        np.add.at(seen, np.concatenate([p.indices, [i for i, _ in p.failed]]).astype(np.int64), 1)
    missing, twice = np.flatnonzero(seen == 0), np.flatnonzero(seen > 1)
    if len(missing) or len(twice):
        raise DistributedError(f"the cluster returned {len(missing)} image(s) never (first: {missing[:5].tolist()}) "
                               f"and {len(twice)} more than once (first: {twice[:5].tolist()}); "
                               "the result is incomplete — run again, and report it if it repeats")


def _assemble(n: int, parts: Sequence[_Part]) -> Encoded:
    """The parts as one ``Encoded`` in input order, after the completeness check."""
    _check_complete(n, parts)
    indices = np.concatenate([p.indices for p in parts]).astype(np.int64)
    order = np.argsort(indices, kind="stable")
    values = np.concatenate([p.values for p in parts])[order]
    failed = sorted((f for p in parts for f in p.failed), key=lambda f: f[0])
    known = all(p.scales is not None for p in parts)
    scales = np.concatenate([p.scales for p in parts if p.scales is not None])[order] if known and parts else None
    return Encoded(values, indices[order], failed, scales)


def _sum_seconds(parts: Sequence[_Part] | Sequence[_Sample], into: dict[str, float]) -> None:
    """Add the workers' stage seconds (summed over workers: CPU time, not wall time)."""
    for p in parts:
        for stage, s in p.seconds.items():
            into[stage] = into.get(stage, 0.0) + s


def _shared(client: Client, value: Any) -> Future:
    """``value`` for many tasks as the result of a task holding it, which the scheduler recomputes
    if the worker holding it dies. Scattered data cannot be recomputed: a worker killed while the
    only copy of the scattered centres was on it made a whole encoding fail with
    ``FutureCancelledError`` ("lost scattered data, which can't be recovered"; CI at ``c6d6783``)."""
    return client.submit(_identity, value, pure=False)


def _identity(value: Any) -> Any:
    return value


def _submit_encode(client: Client, X: Sequence[AnySource], model: FastVLAD, partition_size: int | None,
                   views: Sequence[View] = (View(),)) -> list[Future]:
    """One encoding task per partition and view; the centres and projection are one shared task
    (``_shared``). Positions run over the views in turn: view v's image i is ``v·len(X) + i``."""
    spec = _spec(model)
    encoder = _shared(client, (model.codebook_, getattr(model, "projection_", None)))
    size = _partition_size(client, len(X), partition_size)
    return [client.submit(_encode_part, _shipped(X, r), v * len(X) + r.start, encoder, spec, view, pure=False)
            for v, view in enumerate(views) for r in _cut(len(X), size)]


def _sample_plan(client: Client, X: Sequence[ImageSource], model: FastVLAD,
                 size: int) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """The images and points the local ``Encoder.codebook_sample`` takes with the same seed: the
    chosen images and, for each, its kept point rows (None when it cannot be read and is skipped).

    ``SamplePlan.keep`` draws each readable image's rows in order from one generator; the number
    of points an image gives is known from the settings, or by decoding it on the workers when the
    size is native or unreadable images are skipped."""
    settings = EncoderSettings.of(model)
    plan = sample_plan(len(X), int(model.codebook_images), settings)
    chosen = plan.chosen
    if settings.image_size is not None and not settings.keep_aspect and model.on_error != "skip":
        h, w = settings.image_size
        points: list[int | ImageReadError] = [min(settings.n_points, h * w)] * len(chosen)
    else:
        spec = _spec(model)
        futures = [client.submit(_points_per_image, _shipped(X, chosen[r]), r.start, spec, pure=False)
                   for r in _cut(len(chosen), size)]
        points = [p for part in _gather(client, futures) for p in part]
    return chosen, [plan.keep(p) if isinstance(p, int) else None for p in points]


def warm_up(client: Client, model: FastVLAD) -> None:
    """Open ``model``'s backbone on every worker now; otherwise each worker's first partition
    pays for it (about a second for VGG16)."""
    client.run(_open_backbone, _spec(model))


def fit_codebook(client: Client | None, X: Sequence[ImageSource], model: FastVLAD,
                 partition_size: int | None = None) -> FastVLAD:
    """``model.fit_codebook(X)`` with the CNN on the workers: the same centres as the local
    fit, since the sampled points are the same (k-means runs on the client)."""
    if client is None:
        return model.fit_codebook(X)
    with unchanged_on_failure(model):
        return _fit_codebook(client, checks.sources(X), model, partition_size)


def _fit_codebook(client: Client, X: Sequence[ImageSource], model: FastVLAD, partition_size: int | None) -> FastVLAD:
    """``fit_codebook`` on a cluster, which leaves ``model`` unchanged if this fails."""
    checks.parameters(model, len(X))
    if model.on_error == "raise":  # fail fast on unreadable headers, as the local fit does
        _gather(client, [client.submit(_check_readable, _shipped(X, r), pure=False)
                         for r in _cut(len(X), _partition_size(client, len(X), partition_size))])
    size = _partition_size(client, min(len(X), int(model.codebook_images)), partition_size)
    chosen, keeps = _sample_plan(client, X, model, size)
    readable = [j for j, keep in enumerate(keeps) if keep is not None]
    spec = _spec(model)
    futures = [client.submit(_sample_part, _shipped(X, chosen[part]), [keeps[j] for j in part], spec, pure=False)
               for part in (readable[r.start:r.stop] for r in _cut(len(readable), size))]
    if not futures:
        raise InvalidDatasetError(f"none of the {len(chosen)} images sampled for the codebook could be read; "
                                  "check the images")
    parts: list[_Sample] = _gather(client, futures)
    timings = Timings()
    projection, centres = fit_centres(np.concatenate([p.points for p in parts]), int(model.k),
                                      EncoderSettings.of(model), timings)
    model.adopt_codebook(projection, centres, parts[0].cnn)
    model.timings_ = dict(timings.seconds)
    _sum_seconds(parts, model.timings_)
    return model


def encode(client: Client | None, X: Sequence[ImageSource], model: FastVLAD,
           partition_size: int | None = None) -> Encoded:
    """``model.encode(X)`` on the workers: codes ``(n_ok, k·dim)`` float32 in input order, the
    positions of the readable images, and the failures (with ``on_error="skip"``).

    Raises the worker's ``ImageReadError`` (naming the file) with ``on_error="raise"``, and
    ``DistributedError`` if an image came back missing or twice."""
    if client is None:
        return model.encode(X)
    check_fitted(model)
    X = checks.sources(X)
    return _assemble(len(X), _gather(client, _submit_encode(client, X, model, partition_size)))


def predict_proba(client: Client | None, X: Sequence[ImageSource], model: FastVLAD,
                  partition_size: int | None = None) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Class probabilities ``(n, n_classes)`` float32 in input order (NaN rows for skipped
    images), computed where each partition was encoded, and the skipped (image, reason): the mean
    over each image's views (``tta`` flips, ``tta_zoom`` sizes), as ``predict_proba``."""
    if client is None:
        proba, encoded = model.proba_over_views(X)
        return proba, model.describe_failures(X, encoded)
    check_fitted(model)
    X = checks.sources(X)
    n, views = len(X), model.views()
    encoded = _encode_and_predict(client, X, model, partition_size, views)  # every view in one round of tasks
    each = encoded.rows(n * len(views)).reshape(len(views), n, -1)  # probabilities, not codes
    own = encoded.indices < n  # the first view: the images themselves
    encoded = replace(encoded, failed=[(i, e) for i, e in encoded.failed if i < n], indices=encoded.indices[own],
                      codes=encoded.codes[own], scales=None if encoded.scales is None else encoded.scales[own])
    model.note_other_scales(X, encoded)
    return each.sum(axis=0) / np.float32(len(views)), model.describe_failures(X, encoded)


def _encode_and_predict(client: Client, X: Sequence[AnySource], model: FastVLAD, partition_size: int | None,
                        views: Sequence[View]) -> Encoded:
    """The probabilities of every view of the readable images (positions as ``_submit_encode``'s;
    each partition predicted where it was encoded, so only ``(n, n_classes)`` comes back)."""
    head = _shared(client, model.head_)
    futures = [client.submit(_predict_part, f, head, pure=False)
               for f in _submit_encode(client, X, model, partition_size, views)]
    return _assemble(len(X) * len(views), _gather(client, futures))


def fit(client: Client | None, X: Sequence[ImageSource], y: Sequence[Any] | np.ndarray, model: FastVLAD,
        partition_size: int | None = None) -> FastVLAD:
    """``model.fit(X, y)`` on the cluster: codebook from the local sample, codes on the workers,
    booster by ``xgboost.dask``. Returns ``model``, fitted, ready for ``save``."""
    if client is None:
        return model.fit(X, y)
    with unchanged_on_failure(model):
        return _fit(client, *checks.sources_and_labels(X, y), model, partition_size)


def _fit(client: Client, X: Sequence[ImageSource], y_arr: np.ndarray, model: FastVLAD,
         partition_size: int | None) -> FastVLAD:
    """``fit`` on a cluster, which leaves ``model`` unchanged if this fails."""
    if model.augment:
        raise ParameterError(f"augment={model.augment}: augmented training is not available on a Dask cluster yet; "
                             "train on one machine (no --workers/--scheduler) or set augment=0")
    if model.zoom and model.classifier not in classifier.LINEAR:
        raise ParameterError(f"zoom={tuple(model.zoom)} with classifier={model.classifier!r}: zoomed training copies "
                             f"on a Dask cluster are available for the linear heads {classifier.LINEAR} only; use "
                             "one of them, train on one machine (no --workers/--scheduler), or set zoom=()")
    t0 = time.perf_counter()
    plan, X, y_arr = tiling.training_set(model, X, y_arr)  # micrographs → tiles, as the local fit cuts them
    fit_codebook(client, X, model, partition_size)
    codebook_pass = dict(model.timings_)  # summed over the workers, like the local fit's record
    futures = _submit_encode(client, X, model, partition_size)
    # Only positions and failures come back; the codes stay on the workers for training.
    parts = _gather(client, [client.submit(_without_values, f, pure=False) for f in futures])
    encoded = _assemble(len(X), parts)  # codes (n_ok, 0)
    model.skipped_ = (plan.failures() if plan is not None else []) + model.describe_failures(X, encoded)
    if not len(encoded.indices):
        raise InvalidDatasetError(f"none of the {len(X)} images could be read (e.g. {model.skipped_[0][1]})")
    _sum_seconds(parts, model.timings_)
    y_ok = y_arr[encoded.indices]
    originals = zoom_sources(X, encoded.indices, bool(model.zoom_jitter), checks.seed(model))
    copies, of = _zoomed_copies(client, originals, model, partition_size)
    model.timings_["classifier"] = _train(client, model, futures, [len(p.indices) for p in parts], y_ok,
                                          (copies, y_ok[of]))
    # The local fit's record, less the images' SHA-256 (it would read every file on the client).
    model.train_info_ = {"code_dim": int(model.codebook_.size), "classifier_seconds": model.timings_["classifier"],
                         **model.fit_record(y_ok, len(copies), encoded.scales, codebook_pass),
                         "workers": len(client.nthreads()), "partitions": len(futures)}
    model.timings_["total"] = time.perf_counter() - t0
    return model


def _zoomed_copies(client: Client, originals: list[AnySource], model: FastVLAD,
                   partition_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``encoder.training_copies``' zoomed copies, encoded on the workers: ``originals`` (the
    readable images, or their jittered copies: ``encoder.zoom_sources``) at each factor of
    ``model.zoom`` in turn, codes ``(m, D)`` float32 and ``(m,)`` the position in ``originals``
    each was made from, in the local order. Their seconds go to ``zoom_cnn``/``zoom``."""
    if not model.zoom:
        return np.zeros((0, model.codebook_.size), np.float32), np.zeros(0, np.int64)
    t = time.perf_counter()
    views = [View(0, float(z)) for z in model.zoom]
    parts = _gather(client, _submit_encode(client, originals, model, partition_size, views))
    zoomed = _assemble(len(originals) * len(views), parts)  # positions v·n + i: factor by factor, as locally
    model.timings_["zoom_cnn"] = model.timings_.get("zoom_cnn", 0.0) + sum(p.seconds.get("cnn", 0.0) for p in parts)
    model.timings_["zoom"] = model.timings_.get("zoom", 0.0) + time.perf_counter() - t
    return zoomed.codes, zoomed.indices % max(1, len(originals))


def _train(client: Client, model: FastVLAD, futures: list[Future], rows: list[int], y: np.ndarray,
           copies: tuple[np.ndarray, np.ndarray]) -> float:
    """Train the head on the encoded partitions (rows in input order) and ``copies`` (codes and
    labels of the training copies, linear heads only): XGBoost with ``xgboost.dask``, where the
    codes stay; a linear head on the client (its codes are small). Sets ``classes_`` and
    ``head_``, returns the seconds it took."""
    import dask.array as da
    import xgboost.dask as dxgb

    copy_codes, copy_y = copies
    model.classes_, y_int = np.unique(np.concatenate([y, copy_y]), return_inverse=True)
    checks.enough_classes(model.classes_)
    t = time.perf_counter()
    n_classes = len(model.classes_)
    weights = classifier.balanced_weights(y_int, n_classes) if model.class_weight == "balanced" else None
    if model.classifier in classifier.LINEAR:
        codes_ok = np.concatenate([*_gather(client, [client.submit(_values, f, pure=False) for f in futures]),
                                   copy_codes])
        model.head_ = classifier.train_linear(model, codes_ok, y_int, n_classes, weights)
        return time.perf_counter() - t
    dim = model.codebook_.size
    blocks = [da.from_delayed(client.submit(_values, f, pure=False), (r, dim), np.float32)
              for f, r in zip(futures, rows) if r]
    codes = da.concatenate(blocks)
    chunks = (tuple(r for r in rows if r),)
    labels = da.from_array(y_int, chunks=chunks)
    settings = classifier.BoosterSettings.of(model)
    device = client.submit(_worker_device, model.device, pure=False).result()
    dtrain = dxgb.DaskQuantileDMatrix(client, codes, labels, max_bin=settings.max_bin,
                                      weight=da.from_array(weights, chunks=chunks) if weights is not None else None)
    out = dxgb.train(client, settings.params(n_classes, device, checks.seed(model)), dtrain,
                     num_boost_round=settings.n_estimators)
    model.head_ = out["booster"]
    return time.perf_counter() - t

