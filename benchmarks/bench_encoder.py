"""End to end at the paper's settings: the CNN alone, fastvlad's encoder, and a full ``fit``.

Compare ``images_per_s`` in the extra info: the encoder should stay within ~10 % of the CNN.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import N_IMAGES

from fastvlad import FastVLAD, backends, pipeline


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
def test_encoder(benchmark, backbone, demo_paths, settings, centres) -> None:  # type: ignore[no-untyped-def]
    """Decode (prefetch thread), CNN, hypercolumns at 5,000 points, assignment, VLAD: one batch."""
    paths = demo_paths[:N_IMAGES]
    pipeline.encode(paths[:1], backbone, centres, settings, backends.CPU)  # Numba kernels loaded
    enc = benchmark.pedantic(pipeline.encode, args=(paths, backbone, centres, settings, backends.CPU),
                             rounds=3, iterations=1)
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
