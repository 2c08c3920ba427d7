"""``fastvlad bench`` (issue #4): throughput per stage and end to end, and the ratios to the
paper's pipeline (``reference.py``) and to the k-means peers, all measured in one run on the
same images.

(a) the CNN alone on decoded batches; (b) fastvlad's encoder and a full ``FastVLAD.fit``
(default and, where it exists, ``FastVLAD.faithful()``); (c) the paper's two-pass pipeline on a
small subset, per image; (d) scikit-learn ``MiniBatchKMeans`` and faiss k-means. Training times
for more images (the paper's 3,200) are extrapolated as fixed + N × per-image costs, and say so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import backends, checks, config, progress
from ..backbone import Backbone
from ..backends import Backend
from ..encoder import (
    COPY_STAGES,
    Encoder,
    EncoderSettings,
    Timings,
    Workspace,
    batch_points,
    copies_cnn_seconds,
    copies_per_image,
)
from ..errors import ParameterError, without_skip_advice
from ..images import MIN_SIDE, Preprocess
from ..quantize import check_precision, resolve_precision
from .machine import PeakRSS

log = logging.getLogger("fastvlad")

#: Encoder stages in pipeline order; Timings keys not listed here are appended after them.
STAGE_ORDER = ("decode", "cnn", "points", "hypercolumns", "projection", "assign", "vlad", "classifier")
#: The paper's workload: images, density (%), k.
PAPER_IMAGES, PAPER_DENSITY, PAPER_K = 3200, 10.0, 100
#: Most demo images a run generates (``--images`` without ``--data``): they are written as PNG files first.
MAX_DEMO_IMAGES = 100_000


@dataclass
class BenchConfig:
    """What ``fastvlad bench`` measures; ``None`` model settings mean the estimator's defaults."""

    images: int = 64
    data: Optional[Path] = None
    demo_size: str = "306x448"
    density: Optional[float] = None
    k: Optional[int] = None
    image_size: Optional[str] = None
    device: str = "auto"
    batch_size: Optional[int] = None
    seed: int = 0
    cnn_images: int = 64
    reference_images: int = 8
    reference_points: int = 500
    faithful: bool = True
    peers: bool = True
    scaling: bool = False
    scaling_images: int = 64
    extrapolate_to: int = PAPER_IMAGES
    fp16: bool = False
    precision: Optional[str] = None  # None: the estimator's; "int8" adds (e)/(f), float32 against int8
    precision_rounds: int = 3

    def command(self) -> str:
        """The ``fastvlad bench`` command line that repeats this run."""
        args = ["fastvlad", "bench"]
        for f in fields(self):
            value, default = getattr(self, f.name), f.default
            flag = "--" + f.name.replace("_", "-")
            if value == default:
                continue
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + f.name.replace("_", "-"))
            else:
                args += [flag, str(value)]
        return shlex.join(args)


@dataclass
class Workload:
    """The images of a run: paths on disk, labels (dummy ones when the data has none)."""

    sources: list[str]
    labels: np.ndarray
    description: str
    dummy_labels: bool = False


# -- inputs --------------------------------------------------------------------------------------
def demo_size(text: str) -> tuple[int, int]:
    """``--demo-size`` "HxW" (or "N") as (height, width): sides of at least ``MIN_SIDE`` pixels
    (VGG16's four poolings) and no more pixels than one network input may have."""
    hw = checks.parse_shape("--demo-size", text)
    if hw is None or min(hw) < MIN_SIDE or hw[0] * hw[1] > config.MAX_INPUT_PIXELS:
        raise ParameterError(f"--demo-size {text}: each side must be at least {MIN_SIDE} pixels and the image at "
                             f"most {config.MAX_INPUT_PIXELS} pixels (4096×4096); e.g. 306x448")
    return hw


def demo_workload(n: int, size: str, seed: int, folder: Path) -> Workload:
    """``n`` demo images (classes interleaved, as ``demo.make_dataset``) written as PNG files."""
    from PIL import Image

    from .. import demo

    hw = demo_size(size)
    sources, labels = [], []
    with progress.bar(n, "demo images") as bar:
        for i in range(n):
            img = demo.make_image(i % len(demo.CLASSES), hw, np.random.default_rng([seed, i]))
            path = folder / f"demo_{i:05d}.png"
            Image.fromarray(img).save(path)
            sources.append(str(path))
            labels.append(demo.CLASSES[i % len(demo.CLASSES)])
            bar.advance()
    return Workload(sources, np.array(labels), f"{n} demo images ({hw[0]}×{hw[1]} PNG)")


def data_workload(data: Path, n: int, seed: int) -> Workload:
    """``n`` images drawn at random from a dataset folder or CSV (all of them if fewer)."""
    from .. import datasets

    ds = datasets.load(data, require_labels=False)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
    dummy = ds.labels is None
    labels = np.arange(len(ds)) % 2 if dummy else ds.labels
    return Workload([str(ds.paths[i]) for i in chosen], np.asarray(labels)[chosen].astype(str),
                    f"{len(chosen)} images from {data}", dummy)


def stratified(labels: np.ndarray, n: int) -> np.ndarray:
    """``n`` indices taking the classes in turn, so a small subset still holds every class."""
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order: list[int] = []
    while len(order) < min(n, len(labels)):
        for members in by_class:
            if members and len(order) < n:
                order.append(int(members.pop(0)))
    return np.array(sorted(order))


def make_estimator(cfg: BenchConfig, faithful: bool = False) -> Any:
    """``FastVLAD()`` (or ``FastVLAD.faithful()``) with the settings given on the command line."""
    from ..checks import parse_image_size as _image_size
    from ..estimator import FastVLAD

    given: dict[str, Any] = {"density": cfg.density, "k": cfg.k, "batch_size": cfg.batch_size, "fp16": cfg.fp16,
                             "precision": cfg.precision}
    given = {k: v for k, v in given.items() if v is not None}
    if cfg.image_size is not None:
        given["image_size"] = _image_size(cfg.image_size)
    est = FastVLAD.faithful() if faithful else FastVLAD()  # type: ignore[attr-defined]
    return est.set_params(device=cfg.device, random_state=cfg.seed, **given)


def encoder_settings(est: Any) -> EncoderSettings:
    """The encoder settings of an estimator's parameters that the reference shares (no PCA)."""
    return dataclasses.replace(EncoderSettings.of(est), pca=None, whiten=False)


# -- measurements ----------------------------------------------------------------------------------
def warm_up(est: Any, source: str) -> tuple[Backbone, Backend]:
    """The estimator's backbone session, run once; Numba kernels and XGBoost loaded, so no timing pays for it."""
    from .. import classifier, codebook

    encoder = dataclasses.replace(Encoder.of(est, check_backbone=False), settings=encoder_settings(est))
    backbone, backend = encoder.cnn, encoder.backend
    pixels = encoder.settings.preprocess(source)[None]
    taps, points = encoder.taps(pixels, batch_points(pixels, encoder.settings), Timings())
    hc = encoder.hypercolumns(taps, points, pixels.shape[2:], Workspace(backend), Timings())
    dataclasses.replace(encoder, centres=backend.to_numpy(hc)[0, :2].copy()).encode([source])
    codebook.fit_kmeans(np.random.default_rng(0).random((64, 8), dtype=np.float32), 2)
    # XGBoost's import and first training (thread pool, kernels) would otherwise be charged to the first fit.
    classifier.train(np.random.default_rng(0).random((8, 4), dtype=np.float32), np.arange(8) % 2, 2,
                     classifier.BoosterSettings(n_estimators=2), backend.device)
    return backbone, backend


def cnn_alone(sources: Sequence[str], prep: Preprocess, backbone: Backbone, batch_size: int) -> dict[str, Any]:
    """(a) Decode every image (one thread, timed), then time the backbone alone on the batches."""
    timings = Timings()
    t = time.perf_counter()
    decoded = []
    for src in sources:
        decoded.append(prep(src))
        t = timings.add("decode", t)
    batches = [np.stack(decoded[i : i + batch_size]) for i in range(0, len(decoded), batch_size)
               if len({d.shape for d in decoded[i : i + batch_size]}) == 1]
    if batches:
        backbone(batches[0])  # ONNX Runtime sizes its arena and picks kernels on the first full batch
    t = time.perf_counter()
    for b in batches:
        backbone(b)
        t = timings.add("cnn", t)
    n_cnn = sum(len(b) for b in batches)
    return {"images": len(sources), "cnn_images": n_cnn, "decode_seconds": timings.seconds["decode"],
            "cnn_seconds": timings.seconds["cnn"], "images_per_s": n_cnn / timings.seconds["cnn"]}


def fit_once(est: Any, work: Workload) -> dict[str, Any]:
    """(b) One ``fit`` on every image: its ``timings_``, classifier time and (total − CNN) / CNN."""
    with PeakRSS() as mem:
        t = time.perf_counter()
        est.fit(work.sources, work.labels)
        wall = time.perf_counter() - t
    timings = {k: float(v) for k, v in est.timings_.items()}
    copies = copies_cnn_seconds(timings)  # CNN time too, reported apart
    total, cnn = timings.get("total", wall), timings.get("cnn", 0.0) + copies
    classifier = timings.get("classifier", est.train_info_.get("classifier_seconds", 0.0))
    return {"images": len(work.sources), "seconds": total, "timings": timings, "classifier_seconds": classifier,
            "copies_cnn_seconds": copies,
            # the zoomed and augmented copies, CNN and encoding: per training image, as the encoding is
            "copies_seconds": float(sum(timings.get(kind, 0.0) for kind in COPY_STAGES)),
            "codebook_images": min(int(est.codebook_images), len(work.sources)),
            "codebook_pass": {k: float(v) for k, v in est.train_info_["codebook_pass_seconds"].items()},
            "non_cnn_fraction": (total - cnn) / cnn if cnn > 0 else float("nan"),
            "peak_rss_bytes": mem.peak, "rss_increase_bytes": mem.delta,
            "params": {k: v for k, v in est.get_params().items() if isinstance(v, (int, float, str, bool, type(None)))}}


def encode_once(est: Any, sources: Sequence[str]) -> tuple[dict[str, Any], Any]:
    """(b) The fitted model's encoder over every image, per stage from ``encoder.Timings``; and its
    ``Encoded`` (the codes, for ``head_cost``)."""
    timings = Timings()
    with PeakRSS() as mem:
        t = time.perf_counter()
        encoded = est.encode(list(sources), timings)
        wall = time.perf_counter() - t
    cnn = timings.seconds.get("cnn", 0.0)
    return {"images": timings.images, "seconds": wall, "images_per_s": timings.images / wall,
            "stage_seconds": dict(timings.seconds), "post_cnn_share": min(1.0, max(0.0, 1 - cnn / wall)),
            "post_cnn_overhead": (wall - cnn) / cnn if cnn > 0 else float("nan"),
            "peak_rss_bytes": mem.peak, "rss_increase_bytes": mem.delta}, encoded


def head_cost(est: Any, codes: np.ndarray, labels: np.ndarray, repeats: int = 3) -> dict[str, float]:
    """The classifier head's fit time as fixed + per-row seconds, from ``fit_codes`` on the training
    rows (every image and its copies: ``rows_per_image``) and on twice as many (best of ``repeats``
    each): at a few images its fixed cost dominates, and scaling its time per image would inflate it."""
    import copy

    rows_per_image = 1 + copies_per_image(est.augment, est.zoom)
    rows = np.tile(codes, (rows_per_image, 1)), np.tile(labels, rows_per_image)
    seconds = []
    for times in (1, 2):
        X, y = np.tile(rows[0], (times, 1)), np.tile(rows[1], times)
        best = float("inf")
        for _ in range(repeats):
            head = copy.copy(est)  # the fitted codebook, a head of its own
            t = time.perf_counter()
            head.fit_codes(X, y)
            best = min(best, time.perf_counter() - t)
        seconds.append(best)
    n_rows = len(rows[1])
    per_row = max(seconds[1] - seconds[0], 0.0) / n_rows
    return {"rows_per_image": float(rows_per_image), "fixed_seconds": max(seconds[0] - per_row * n_rows, 0.0),
            "per_row_seconds": per_row}


# -- derived figures ---------------------------------------------------------------------------------
def stage_table(cnn: dict[str, Any], enc: dict[str, Any], train: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Seconds per image of every stage, images/s and share of their sum.

    decode: one thread, from (a); cnn … vlad: the encoder's ``Timings`` from (b);
    classifier: the fit's classifier time per training image."""
    per_image = {"decode": cnn["decode_seconds"] / cnn["images"]}
    per_image.update({s: v / enc["images"] for s, v in enc["stage_seconds"].items()})
    per_image["classifier"] = train["classifier_seconds"] / train["images"]
    order = [s for s in STAGE_ORDER if s in per_image] + [s for s in per_image if s not in STAGE_ORDER]
    total = sum(per_image.values())
    return {s: {"ms_per_image": 1e3 * per_image[s], "images_per_s": 1 / per_image[s] if per_image[s] > 0 else float("inf"),
                "share": per_image[s] / total} for s in order}


def fastvlad_seconds(n: int, train: dict[str, Any], enc: dict[str, Any]) -> float:
    """Training time of ``FastVLAD.fit`` on ``n`` images, from this run's measured parts.

    codebook pass: min(codebook_images, n) × its own per-image seconds (CNN, points, the full
    hypercolumns it samples: ``train_info_["codebook_pass_seconds"]``) + its fit-only stages
    (k-means, PCA); then n × (encoder wall time per image + its copies' time per training image);
    then the head: fixed + per-row seconds × its rows (``head_cost``; without one, the classifier
    time per training image)."""
    cb_pass = train["codebook_pass"]
    sample = sum(v for s, v in cb_pass.items() if s in STAGE_ORDER) / max(train["codebook_images"], 1)
    fit_only = sum(v for s, v in cb_pass.items() if s not in STAGE_ORDER)  # kmeans, pca
    per_image = enc["seconds"] / enc["images"] + train.get("copies_seconds", 0.0) / train["images"]
    cb = min(int(train["params"].get("codebook_images", 100)), n)
    cost = train.get("head_cost")
    head = (cost["fixed_seconds"] + cost["per_row_seconds"] * cost["rows_per_image"] * n if cost
            else n * train["classifier_seconds"] / train["images"])
    return cb * sample + fit_only + n * per_image + head


def fit_setup_seconds(train: dict[str, Any], enc: dict[str, Any]) -> float:
    """What the measured fit spent outside the modelled parts — mostly loading the backbone (about
    3 s for VGG16 on a 2-core CPU), the input checks — taken as a fixed cost per fit."""
    return max(train["seconds"] - fastvlad_seconds(train["images"], train, enc), 0.0)


def ratios(cfg: BenchConfig, cnn: dict[str, Any], enc: dict[str, Any], train: dict[str, Any],
           ref: Any) -> dict[str, Any]:
    """The headline figures: speed-ups over the reference at this run's size and at the paper's."""
    n, big = train["images"], cfg.extrapolate_to
    fv_n = train["seconds"]
    setup = fit_setup_seconds(train, enc)
    fv_big = fv_n if big == n else setup + fastvlad_seconds(big, train, enc)
    return {"reference_speedup": ref.seconds(n) / fv_n,
            "reference_speedup_lower_bound": ref.seconds(n, lower_bound=True) / fv_n,
            "fastvlad_train_s_per_image": fv_n / n, "reference_train_s_per_image": ref.seconds(n) / n,
            "fastvlad_model_check": {"measured_seconds": fv_n, "modelled_seconds": fastvlad_seconds(n, train, enc),
                                     "setup_seconds": setup},
            "extrapolated": {"images": big, "fastvlad_measured": big == n, "fastvlad_seconds": fv_big,
                             "reference_seconds": ref.seconds(big), "speedup": ref.seconds(big) / fv_big,
                             "reference_lower_bound_seconds": ref.seconds(big, lower_bound=True),
                             "speedup_lower_bound": ref.seconds(big, lower_bound=True) / fv_big}}


# -- the run -----------------------------------------------------------------------------------------
def run(cfg: BenchConfig, workdir: Path) -> dict[str, Any]:
    """Every measurement of one bench run; returns the JSON-ready result."""
    with without_skip_advice():  # a benchmark reads every image: there is no on_error to skip with
        return _run(cfg, workdir)


def _run(cfg: BenchConfig, workdir: Path) -> dict[str, Any]:
    from . import machine as _bench_machine
    from . import scaling as _bench_scaling

    check_config(cfg)
    est = make_estimator(cfg)
    checks.parameters(est)  # a bad option fails now, not after the CNN stage
    work = (data_workload(cfg.data, cfg.images, cfg.seed) if cfg.data
            else demo_workload(cfg.images, cfg.demo_size, cfg.seed, workdir))
    step = _Step()
    backbone, backend = warm_up(est, work.sources[0])
    fv = measure_fastvlad(cfg, work, est, backbone, step)
    # The paper's pipeline runs at the faithful settings (with the run's explicit options), as fit does.
    ref_est = make_estimator(cfg, faithful=True) if hasattr(type(est), "faithful") else est
    ref_settings = encoder_settings(ref_est)
    base = measure_baselines(cfg, work, ref_settings, int(ref_est.k), backbone, step)
    scaling = None
    if cfg.scaling:
        scaling = step("scaling", _bench_scaling.run_scaling, work.sources, backbone, ref_settings, int(ref_est.k),
                       backend, min(cfg.scaling_images, len(work.sources)), min(8, len(work.sources)), cfg.seed)
    comparison: dict[str, Any] = {}
    if resolve_precision(est.precision, est.fp16, backend.device) == "int8":
        from . import precision as _bench_precision

        comparison = step("(e) float32 against int8", _bench_precision.compare, est, work.sources,
                          encoder_settings(est).preprocess, int(est.batch_size or backend.batch_size),
                          cfg.cnn_images, cfg.precision_rounds)
    cnn, enc, train, faithful = fv["cnn_alone"], fv["encoder"], fv["train"], fv["train_faithful"]
    return {"command": cfg.command(), "workload": work.description, "dummy_labels": work.dummy_labels,
            "settings": train["params"], "machine": _bench_machine.machine_info(backend),
            "device": backend.device, "cnn_images_per_s": cnn["images_per_s"],
            "encode_images_per_s": enc["images_per_s"], "post_cnn_share": enc["post_cnn_share"],
            "post_cnn_overhead": enc["post_cnn_overhead"], "peak_rss_bytes": _bench_machine.max_rss(),
            "train_non_cnn_fraction": train["non_cnn_fraction"],
            "train_non_cnn_fraction_faithful": faithful["non_cnn_fraction"] if faithful else None,
            **ratios(cfg, cnn, enc, train, base["ref"]), "stages": stage_table(cnn, enc, train), **fv,
            "reference": base["ref"].to_dict(), "peers": base["peers"], "scaling": scaling,
            "streaming": _bench_scaling.streaming_growth(scaling) if scaling else None, **comparison,
            "seconds": step.total}


def measure_fastvlad(cfg: BenchConfig, work: Workload, est: Any, backbone: Backbone, step: _Step) -> dict[str, Any]:
    """(a) the CNN alone, (b) ``fit`` (default, and faithful where it exists) and the encoder."""
    settings = encoder_settings(est)
    cnn = step("(a) CNN alone", cnn_alone, work.sources[: cfg.cnn_images], settings.preprocess, backbone,
               int(est.batch_size or backends.resolve(est.device).batch_size))
    train = step("(b) FastVLAD.fit", fit_once, est, work)
    enc, encoded = step("(b) encoder", encode_once, est, work.sources)
    train["head_cost"] = step("(b) the head at two sizes", head_cost, est, encoded.codes,
                              np.asarray(work.labels)[encoded.indices])
    faithful = None
    if cfg.faithful and hasattr(type(est), "faithful"):
        fest = make_estimator(cfg, faithful=True)
        warm_up(fest, work.sources[0])
        faithful = step("(b) FastVLAD.faithful().fit", fit_once, fest, work)
    return {"cnn_alone": cnn, "train": train, "encoder": enc, "train_faithful": faithful}


def measure_baselines(cfg: BenchConfig, work: Workload, settings: EncoderSettings, k: int,
                      backbone: Backbone, step: _Step) -> dict[str, Any]:
    """(c) the paper's pipeline on a stratified subset, (d) the k-means peers on its hypercolumns."""
    from . import baselines as _bench_baselines

    subset = stratified(work.labels, cfg.reference_images)
    ref = step("(c) reference pipeline", _bench_baselines.run_reference, [work.sources[i] for i in subset],
               work.labels[subset], settings.preprocess, backbone, settings, k, cfg.reference_points, cfg.seed)
    peers = step("(d) k-means peers", _bench_baselines.run_peers, ref.points, k, cfg.seed) if cfg.peers else None
    return {"ref": ref, "peers": peers}


class _Step:
    """Runs one measured part, logs its name and time, and keeps the bench's total time."""

    def __init__(self) -> None:
        self.total = 0.0

    def __call__(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        log.info("bench: %s …", name)
        t = time.perf_counter()
        out = fn(*args)
        self.total += time.perf_counter() - t
        return out


def check_config(cfg: BenchConfig) -> None:
    """Counts that make every part of the run possible, before any image is touched."""
    if cfg.images < 2:
        raise ParameterError(f"--images {cfg.images}: need at least 2 images (the classifier needs two classes)")
    if cfg.reference_images < 2:
        raise ParameterError(f"--reference-images {cfg.reference_images}: need at least 2 (one k-means "
                             "initialisation plus one update, and two classes for the classifier)")
    if min(cfg.cnn_images, cfg.reference_points, cfg.scaling_images, cfg.extrapolate_to) < 1:
        raise ParameterError("--cnn-images, --reference-points, --scaling-images and --extrapolate-to must be ≥ 1")
    if cfg.precision is not None:
        check_precision(cfg.precision, cfg.fp16)
    if cfg.precision_rounds < 1:
        raise ParameterError(f"--precision-rounds {cfg.precision_rounds}: must be ≥ 1")
    if cfg.data is not None and not Path(cfg.data).exists():
        raise ParameterError(f"--data {cfg.data}: no such folder or file; give a dataset folder or CSV manifest")
    if cfg.data is None:
        demo_size(cfg.demo_size)
        if cfg.images > MAX_DEMO_IMAGES:
            raise ParameterError(f"--images {cfg.images}: at most {MAX_DEMO_IMAGES} demo images (each is written "
                                 f"to a temporary folder first; the paper's workload is {PAPER_IMAGES})")
    checks.integer("--seed", cfg.seed, 0, hi=config.MAX_SEED)
    if cfg.batch_size is not None:
        checks.integer("--batch-size", cfg.batch_size, 1)


# -- output ------------------------------------------------------------------------------------------
def _mb(n: float) -> str:
    return f"{n / (1 << 20):,.0f} MB"


def report_lines(r: dict[str, Any]) -> list[str]:
    """The human-readable report of a result from ``run``."""
    m, s = r["machine"], r["settings"]
    lines = [f"fastvlad bench: {r['workload']}; density {s['density']} %, k = {s['k']}, image size "
             f"{s['image_size'] or 'native'}, device {r['device']}",
             f"machine: {m['cpu']}, {m['usable_cores']} of {m['cpu_cores']} cores, GPU {m['gpu'] or 'none'}, "
             f"{_mb(m['memory_bytes'] or 0)} RAM",
             "versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), "",
             f"{'stage':<14}{'images/s':>10}{'ms/image':>10}{'share':>8}"]
    for stage, row in r["stages"].items():
        lines.append(f"{stage:<14}{row['images_per_s']:>10.1f}{row['ms_per_image']:>10.1f}{row['share']:>8.1%}")
    enc, train = r["encoder"], r["train"]
    lines += ["", "end to end (same images):",
              f"  (a) CNN alone           {r['cnn_images_per_s']:8.2f} images/s",
              f"  (b) encoder             {r['encode_images_per_s']:8.2f} images/s; not-CNN share "
              f"{r['post_cnn_share']:.1%} (+{r['post_cnn_overhead']:.1%} over the CNN); "
              f"peak RSS +{_mb(enc['rss_increase_bytes'])}",
              f"  (b) fit, default        {train['seconds']:8.1f} s for {train['images']} images; "
              f"(total − CNN) / CNN = {r['train_non_cnn_fraction']:.2f}"
              + (f" (the CNN includes {train['copies_cnn_seconds']:.1f} s for the zoomed and augmented copies)"
                 if train.get("copies_cnn_seconds") else "")]
    if r["train_faithful"]:
        lines.append(f"  (b) fit, faithful()     {r['train_faithful']['seconds']:8.1f} s; (total − CNN) / CNN = "
                     f"{r['train_non_cnn_fraction_faithful']:.2f}")
    from .precision import report_lines as _precision_lines

    lines += _precision_lines(r) + _reference_lines(r) + _peer_lines(r) + _scaling_lines(r)
    lines.append(f"process peak RSS {_mb(r['peak_rss_bytes'])}; bench took {r['seconds']:.0f} s")
    return lines


def _reference_lines(r: dict[str, Any]) -> list[str]:
    ref, x = r["reference"], r["extrapolated"]
    per = ref["per_image_seconds"]
    lines = ["", f"(c) the paper's pipeline (reference.py) on {ref['images']} of the images, seconds per image:",
             "  " + ", ".join(f"{k} {v:.3f}" for k, v in per.items()),
             "  fixed: " + ", ".join(f"{k} {v:.2f} s" for k, v in ref["fixed_seconds"].items())]
    lines += [f"  note: {n}" for n in ref["notes"]]
    lines += [f"  training per image: reference {r['reference_train_s_per_image']:.2f} s, fastvlad "
              f"{r['fastvlad_train_s_per_image']:.3f} s → speed-up {r['reference_speedup']:.1f}× "
              f"(lower bound with a compiled full-resolution map and GEMM assignment: "
              f"{r['reference_speedup_lower_bound']:.1f}×)",
              f"  {x['images']} images: fastvlad {x['fastvlad_seconds'] / 60:.1f} min "
              f"({'measured' if x['fastvlad_measured'] else 'extrapolated'}), reference "
              f"{x['reference_seconds'] / 3600:.2f} h (extrapolated) → {x['speedup']:.1f}× "
              f"(lower bound {x['speedup_lower_bound']:.1f}×)"]
    return lines


def _peer_lines(r: dict[str, Any]) -> list[str]:
    if not r["peers"]:
        return []
    base = r["peers"]["fastvlad"]
    lines = ["", f"(d) k-means on the reference's hypercolumns (k = {r['settings']['k']}):",
             f"  {'library':<20}{'fit s':>8}{'predict s':>11}{'inertia':>12}{'fit ×':>8}{'predict ×':>10}"]
    for name, p in r["peers"].items():
        lines.append(f"  {name:<20}{p['fit_seconds']:>8.2f}{p['predict_seconds']:>11.3f}{p['inertia']:>12.1f}"
                     f"{p['fit_seconds'] / base['fit_seconds']:>8.1f}{p['predict_seconds'] / base['predict_seconds']:>10.1f}")
    if "faiss" not in r["peers"]:
        lines.append("  faiss: not installed (pip install 'fastvlad[faiss]')")
    return lines


def _scaling_lines(r: dict[str, Any]) -> list[str]:
    if not r["scaling"]:
        return []
    lines = ["", "scaling (Encoder.encode, faithful encoder, random centres):",
             f"  {'series':<11}{'value':>9}{'images':>8}{'ms/image':>10}{'peak RSS':>11}{'RSS +':>10}{'codes':>10}"]
    for p in r["scaling"]:
        lines.append(f"  {p['series']:<11}{p['value']!s:>9}{p['images']:>8}{p['ms_per_image']:>10.1f}"
                     f"{_mb(p['peak_rss_bytes']):>11}{_mb(p['rss_increase_bytes']):>10}{_mb(p['codes_bytes']):>10}")
    g = r["streaming"]
    lines.append(f"  streaming: {g['images_from']} → {g['images_to']} images, peak RSS {_mb(g['peak_rss_growth_bytes'])}"
                 f" more, of which the codes (held twice) {_mb(g['codes_growth_bytes'])}; working memory "
                 f"{_mb(g['working_growth_bytes'])}")
    return lines


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (Path, tuple)):
        return str(o) if isinstance(o, Path) else list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(result: dict[str, Any], path: Path) -> Path:
    """The result as indented JSON, written atomically."""
    from .._files import write_bytes_atomic

    return write_bytes_atomic(path, json.dumps(result, indent=2, default=_json_default).encode())
