"""End to end at the paper's settings: the CNN alone (float32 and float16 graphs), decoding,
fastvlad's encoder, and a full ``fit``.

Compare ``images_per_s`` in the extra info: the encoder should stay within ~10 % of the CNN.
Decoding (group ``decode``): one thread with the points sampled by the caller, as before
``Backend.decode_threads``, against ``Encoder.batches`` on one and two threads.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import N_IMAGES

from fastvlad import FastVLAD
from fastvlad.backbone import Backbone
from fastvlad.backends.cpu import CPU
from fastvlad.encoder import Encoder, batch_points
from fastvlad.images import iter_batches


def _per_image(benchmark, n: int) -> None:  # type: ignore[no-untyped-def]
    benchmark.extra_info["images"] = n
    benchmark.extra_info["images_per_s"] = n / benchmark.stats.stats.median


@pytest.mark.benchmark(group="end-to-end")
def test_cnn_alone(benchmark, backbone, demo_paths, settings) -> None:  # type: ignore[no-untyped-def]
    batch = np.stack([settings.preprocess(p) for p in demo_paths[:N_IMAGES]])
    backbone(batch)  # ONNX Runtime sizes its arena on the first call
    benchmark.pedantic(backbone, args=(batch,), rounds=3, iterations=1)
    _per_image(benchmark, N_IMAGES)


@pytest.mark.benchmark(group="end-to-end")
def test_cnn_alone_fp16(benchmark, demo_paths, settings) -> None:  # type: ignore[no-untyped-def]
    """The float16 graph (``FastVLAD(fp16=True)``) on the CPU provider, for comparison with ``test_cnn_alone``."""
    half = Backbone(fp16=True)
    batch = np.stack([settings.preprocess(p) for p in demo_paths[:N_IMAGES]])
    half(batch)
    benchmark.pedantic(half, args=(batch,), rounds=3, iterations=1)
    _per_image(benchmark, N_IMAGES)


DECODE_IMAGES = 64


def _decode_before(paths, settings) -> int:  # type: ignore[no-untyped-def]
    n = 0
    for batch in iter_batches(paths, settings.preprocess, 64):
        batch_points(batch.pixels, settings)  # on the consuming thread, as before
        n += len(batch.indices)
    return n


def _decode_now(paths, settings, backend) -> int:  # type: ignore[no-untyped-def]
    return sum(len(b.indices) for b in Encoder(settings, backend, None).batches(paths))


@pytest.mark.benchmark(group="decode")
def test_decode_one_thread_points_on_caller(benchmark, demo_paths, settings) -> None:  # type: ignore[no-untyped-def]
    paths = (demo_paths * (DECODE_IMAGES // len(demo_paths) + 1))[:DECODE_IMAGES]
    assert benchmark.pedantic(_decode_before, args=(paths, settings), rounds=5, iterations=1) == DECODE_IMAGES
    _per_image(benchmark, DECODE_IMAGES)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.benchmark(group="decode")
def test_decode_batches(benchmark, demo_paths, settings, threads: int) -> None:  # type: ignore[no-untyped-def]
    """``Encoder.batches``: decoding and point sampling on ``threads`` threads (the CUDA backend's way)."""
    paths = (demo_paths * (DECODE_IMAGES // len(demo_paths) + 1))[:DECODE_IMAGES]
    backend = dataclasses.replace(CPU, batch_size=64, decode_threads=threads)
    assert benchmark.pedantic(_decode_now, args=(paths, settings, backend), rounds=5, iterations=1) == DECODE_IMAGES
    _per_image(benchmark, DECODE_IMAGES)


@pytest.mark.benchmark(group="end-to-end")
def test_encoder(benchmark, backbone, demo_paths, settings, centres) -> None:  # type: ignore[no-untyped-def]
    """Decode (prefetch thread), CNN, hypercolumns at 5,000 points, assignment, VLAD: one batch."""
    paths = demo_paths[:N_IMAGES]
    encoder = Encoder(settings, CPU, backbone, centres=centres)
    encoder.encode(paths[:1])  # Numba kernels loaded
    enc = benchmark.pedantic(encoder.encode, args=(paths,), rounds=3, iterations=1)
    assert enc.codes.shape == (N_IMAGES, centres.size)
    _per_image(benchmark, N_IMAGES)


@pytest.mark.benchmark(group="end-to-end")
def test_fit_default(benchmark, demo_paths) -> None:  # type: ignore[no-untyped-def]
    """``FastVLAD().fit`` on 16 images: codebook pass, encoding pass, classifier."""
    labels = [i % 4 for i in range(len(demo_paths))]
    model = FastVLAD(device="cpu")
    benchmark.pedantic(model.fit, args=(demo_paths, labels), rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v, 3) for k, v in model.timings_.items()})
    _per_image(benchmark, len(demo_paths))
