"""The paper's pipeline as ``fastvlad/reference.py`` does it: the steps that have no fastvlad
kernel beside them in ``bench_kernels.py`` (which times the reference's full-map gather, exact
assignment and VLAD loop against fastvlad's kernels). Per image at d = 10 %, k = 100.

Together they are the baseline of ``fastvlad bench``'s speed-up; ``fastvlad bench`` itself
measures all of them in one run on the same images.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import N_IMAGES, K

from fastvlad import codebook, reference


@pytest.mark.benchmark(group="cnn")
def test_reference_cnn_one_image(benchmark, backbone, one_image) -> None:  # type: ignore[no-untyped-def]
    """The notebook ran the CNN on one image at a time (twice per training image)."""
    pixels = one_image[0]
    backbone(pixels)
    benchmark.pedantic(backbone, args=(pixels,), rounds=3, iterations=1)


@pytest.mark.benchmark(group="kmeans")
def test_reference_minibatch_first_partial_fit(benchmark, hypercolumns) -> None:  # type: ignore[no-untyped-def]
    """The first ``MiniBatchKMeans.partial_fit`` (k-means++ initialisation): paid once per training."""
    from sklearn.cluster import MiniBatchKMeans

    def first() -> None:
        MiniBatchKMeans(n_clusters=K, n_init=1, random_state=0).partial_fit(hypercolumns)

    benchmark.pedantic(first, rounds=2, iterations=1)


@pytest.mark.benchmark(group="kmeans")
def test_reference_minibatch_partial_fit(benchmark, hypercolumns) -> None:  # type: ignore[no-untyped-def]
    """One image's ``partial_fit`` after the first: paid by every training image."""
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=K, n_init=1, random_state=0).partial_fit(hypercolumns)
    benchmark.pedantic(km.partial_fit, args=(hypercolumns,), rounds=5, iterations=1)


@pytest.mark.benchmark(group="classifier")
def test_reference_gradient_boosting(benchmark, hypercolumns, centres) -> None:  # type: ignore[no-untyped-def]
    """scikit-learn ``GradientBoostingClassifier()`` on 8 VLAD codes of 147,200 dims (4 classes)."""
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(0)
    subsets = [hypercolumns[rng.permutation(len(hypercolumns))[:2000]] for _ in range(N_IMAGES)]
    codes = np.stack([reference.vlad(x, centres, labels=codebook.assign(x, centres)[0].astype(np.int64))
                      for x in subsets])
    labels = np.arange(N_IMAGES) % 4
    benchmark.pedantic(GradientBoostingClassifier(random_state=0).fit, args=(codes, labels), rounds=1, iterations=1)
    benchmark.extra_info["per_image_s"] = benchmark.stats.stats.median / N_IMAGES
