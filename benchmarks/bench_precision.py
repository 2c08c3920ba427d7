"""Issue 15: the CNN at float32 against int8, and what comes after it, in one run.

``python -m pytest benchmarks/bench_precision.py --benchmark-only`` (a few minutes on 2 cores).
8 demo images at 224² (one CPU batch), 5,000 points each, k = 100. Every test alternates the two
precisions round by round (float32 first in even rounds, int8 first in odd ones), so that a shared
machine's drift hits both alike, and reports medians of per-round figures:

* ``test_cnn``: the CNN alone: images/s at each precision, ``cnn_int8_speedup`` (goal ≥ 3.0);
* ``test_post_cnn``: the CNN, then ``Encoder.codes`` on its fresh taps, at each precision:
  ``post_cnn_fraction_{fp32,int8}`` = post-CNN / CNN (goal at int8 ≤ 0.10), for the full
  1,472-d hypercolumn (the paper's, as ``bench_kernels``) and for the default 64-d PCA;
* ``test_encoder``: ``Encoder.encode`` on the 8 files (decode thread, CNN, codes):
  ``encode_{fp32,int8}_images_per_s``;
* ``test_post_cnn_tap_width``: the post-CNN stages on the same taps as float32 and as float16
  (which every kernel widens exactly): how much narrower taps save (int8 taps dequantized in
  the kernels would read half of float16's bytes), ``post_cnn_ms_taps_{fp32,fp16}``.

The summary at the end prints them (``RESULTS``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
from conftest import N_IMAGES

from fastvlad import hypercolumn, projection, quantize
from fastvlad.backbone import Backbone
from fastvlad.backends.cpu import CPU
from fastvlad.encoder import Encoder, Timings, Workspace, batch_points

#: Headline figures of the tests that ran, for the summary (conftest.pytest_terminal_summary).
RESULTS: dict[str, float] = {}
ROUNDS = 6
PRECISIONS = ("fp32", "int8")


def _order(r: int) -> tuple[str, ...]:
    return PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]


@pytest.fixture(scope="module")
def nets(backbone):  # type: ignore[no-untyped-def]
    """The float32 and int8 CNNs (the int8 graph built once, cached)."""
    return {"fp32": backbone, "int8": Backbone(quantized=quantize.build().path)}


@pytest.fixture(scope="module")
def pixels(demo_paths, settings) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.stack([settings.preprocess(p) for p in demo_paths[:N_IMAGES]])


def _rounds(benchmark, work: Callable[[str], float], rounds: int = ROUNDS) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Runs ``work(precision)`` (it returns seconds of interest) for both precisions per round."""
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    r = iter(range(10**6))

    def one_round() -> None:
        for p in _order(next(r)):
            seconds[p].append(work(p))

    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=1)
    return {p: np.array(v[1:]) for p, v in seconds.items()}  # the warm-up round dropped


@pytest.mark.benchmark(group="precision")
def test_cnn(benchmark, nets, pixels) -> None:  # type: ignore[no-untyped-def]
    def cnn(p: str) -> float:
        t = time.perf_counter()
        nets[p](pixels)
        return time.perf_counter() - t

    s = _rounds(benchmark, cnn)
    ips = {p: len(pixels) / s[p] for p in PRECISIONS}
    ratio = ips["int8"] / ips["fp32"]
    RESULTS.update(cnn_fp32_images_per_s=float(np.median(ips["fp32"])),
                   cnn_int8_images_per_s=float(np.median(ips["int8"])), cnn_int8_speedup=float(np.median(ratio)))
    benchmark.extra_info.update({k: round(v, 3) for k, v in RESULTS.items() if k.startswith("cnn")})
    benchmark.extra_info["cnn_int8_speedup_rounds"] = [round(float(x), 3) for x in ratio]


def _pca_of(nets, pixels, settings) -> projection.Projection:  # type: ignore[no-untyped-def]
    """A 64-axis PCA of the batch's float32 hypercolumns (the default encoder's shape of work)."""
    taps = nets["fp32"](pixels)
    x = hypercolumn.gather(taps, batch_points(pixels, settings), settings.interpolation)
    return projection.fit(x.reshape(-1, x.shape[2])[::8], 64, False, 0)


@pytest.mark.parametrize("width", ["full", "pca64"])
@pytest.mark.benchmark(group="precision")
def test_post_cnn(benchmark, nets, pixels, settings, centres, width: str) -> None:  # type: ignore[no-untyped-def]
    """The CNN, then the encoder's post-CNN stages on its fresh taps; post / CNN per round."""
    points = batch_points(pixels, settings)
    proj = _pca_of(nets, pixels, settings) if width == "pca64" else None
    cen = proj.apply(centres) if proj is not None else centres
    workspace = Workspace(CPU)
    post_cnn = Encoder(settings, CPU, None).codes
    pairs: dict[str, list[tuple[float, float]]] = {p: [] for p in PRECISIONS}

    def cnn_then_post(p: str) -> float:
        t0 = time.perf_counter()
        taps = nets[p](pixels)
        t1 = time.perf_counter()
        post_cnn(taps, points, pixels.shape[2:], cen, proj, workspace, Timings())
        pairs[p].append((t1 - t0, time.perf_counter() - t1))
        return time.perf_counter() - t0

    _rounds(benchmark, cnn_then_post)
    for p in PRECISIONS:
        cnn, post = np.array(pairs[p][1:]).T
        RESULTS[f"post_cnn_fraction_{p}_{width}"] = float(np.median(post / cnn))
        RESULTS[f"post_cnn_ms_{p}_{width}"] = float(1e3 * np.median(post) / len(pixels))
        benchmark.extra_info[f"post_cnn_fraction_{p}"] = [round(float(x), 4) for x in post / cnn]
    if width == "full":  # the key: the paper's width, as bench_kernels measures it
        RESULTS["post_cnn_fraction_int8"] = RESULTS["post_cnn_fraction_int8_full"]


@pytest.mark.benchmark(group="precision")
def test_encoder(benchmark, nets, demo_paths, settings, centres) -> None:  # type: ignore[no-untyped-def]
    paths = demo_paths[:N_IMAGES]
    encoders = {p: Encoder(settings, CPU, nets[p], centres=centres) for p in PRECISIONS}
    for e in encoders.values():
        e.encode(paths[:1])  # Numba kernels loaded

    def encode(p: str) -> float:
        t = time.perf_counter()
        assert encoders[p].encode(paths).codes.shape == (N_IMAGES, centres.size)
        return time.perf_counter() - t

    s = _rounds(benchmark, encode, rounds=4)
    for p in PRECISIONS:
        RESULTS[f"encode_{p}_images_per_s"] = float(np.median(N_IMAGES / s[p]))
    benchmark.extra_info.update({k: round(v, 3) for k, v in RESULTS.items() if k.startswith("encode")})


@pytest.mark.benchmark(group="precision")
def test_post_cnn_tap_width(benchmark, nets, pixels, settings, centres) -> None:  # type: ignore[no-untyped-def]
    """``Encoder.codes`` (full width) on the same int8-graph taps held as float32 and as float16,
    alternating: what halving the bytes the kernels read is worth."""
    points = batch_points(pixels, settings)
    taps = {"fp32": nets["int8"](pixels)}
    taps["fp16"] = [t.astype(np.float16) for t in taps["fp32"]]
    workspace = Workspace(CPU)
    post_cnn = Encoder(settings, CPU, None).codes
    seconds: dict[str, list[float]] = {w: [] for w in taps}
    r = iter(range(10**6))

    def one_round() -> None:
        for w in (("fp32", "fp16") if next(r) % 2 == 0 else ("fp16", "fp32")):
            t = time.perf_counter()
            post_cnn(taps[w], points, pixels.shape[2:], centres, None, workspace, Timings())
            seconds[w].append(time.perf_counter() - t)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    for w, v in seconds.items():
        RESULTS[f"post_cnn_ms_taps_{w}"] = float(1e3 * np.median(v[1:]) / len(pixels))
    benchmark.extra_info.update({k: round(v, 3) for k, v in RESULTS.items() if k.startswith("post_cnn_ms_taps")})


def summary_lines() -> list[str]:
    """The figures the issue names, for whichever tests ran."""
    return [f"{k:<34} {v:10.3f}" for k, v in RESULTS.items()]
