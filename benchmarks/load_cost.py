"""What checking the booster costs on ``fastvlad.load`` (issue 17): a model file with a booster of
the paper's size (100 rounds × 4 classes of depth-3 trees) on codes of the default width
(k = 100 × pca 64) and of the faithful width (k = 100 × 1472), loaded with and without
``booster_check`` (the check replaced by the identity), median of ``--repeat`` loads each.

    python benchmarks/load_cost.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np


def _model_file(folder: Path, dim: int, rounds: int = 100, classes: int = 4, k: int = 100) -> Path:
    """A consistent model file with a trained booster and random (unit) codebook/codes."""
    import fastvlad
    from fastvlad import classifier, model_file
    from fastvlad.estimator import FastVLAD, versions

    rng = np.random.default_rng(0)
    n = 200
    codes = rng.standard_normal((n, k * dim)).astype(np.float32)
    y = rng.integers(0, classes, n)
    codes[:, :classes] += 3 * np.eye(classes, dtype=np.float32)[y]  # something to learn
    settings = classifier.BoosterSettings(n_estimators=rounds, max_bin=32)
    booster = classifier.train(codes, y, classes, settings)
    params = FastVLAD(k=k, pca=64 if dim == 64 else None, device="cpu").get_params()
    config = {"params": params, "classes": [f"c{i}" for i in range(classes)], "backbone_sha256": "0" * 64,
              "taps": ["block1_conv2"], "train": {"n_images": n}, "versions": versions()}
    proj = rng.standard_normal((1473, 64)).astype(np.float32) if dim == 64 else None
    path = model_file.save(folder / f"m{dim}.fvl", model_file.ModelContents(
        config, rng.standard_normal((k, dim)).astype(np.float32), classifier.to_bytes(booster), proj))
    fastvlad.load(path)  # it loads
    return path


def _median_seconds(path: Path, repeat: int) -> float:
    import fastvlad

    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fastvlad.load(path)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    from fastvlad import booster_check

    with tempfile.TemporaryDirectory() as tmp:
        for dim, label in ((64, "default (code width 6,400)"), (1472, "faithful (code width 147,200)")):
            path = _model_file(Path(tmp), dim)
            raw = path.stat().st_size
            checked = _median_seconds(path, args.repeat)
            with mock.patch.object(booster_check, "checked", lambda data, n_classes, n_features: data):
                unchecked = _median_seconds(path, args.repeat)
            print(f"{label}: file {raw / 1e6:.2f} MB; load {1e3 * checked:.1f} ms with the booster check, "
                  f"{1e3 * unchecked:.1f} ms without: +{1e3 * (checked - unchecked):.1f} ms")


if __name__ == "__main__":
    main()
