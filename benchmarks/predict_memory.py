"""What predicting keeps in memory per image: ``predict_proba`` of n copies of 16 random 112×164
gray arrays under a saved model, the peak of NumPy's traced allocations (``tracemalloc``); run at two
n, the difference over the images is what each image adds. ``python benchmarks/predict_memory.py
MODEL N`` prints one line; run it with ``PYTHONPATH`` set to another tree to compare versions."""

from __future__ import annotations

import sys
import time
import tracemalloc

import numpy as np

import fastvlad


def main() -> None:
    model = fastvlad.load(sys.argv[1])
    n = int(sys.argv[2])
    rng = np.random.default_rng(0)
    base = [rng.integers(0, 255, (112, 164), dtype=np.uint8) for _ in range(16)]
    X = [base[i % 16] for i in range(n)]
    tracemalloc.start()
    t = time.perf_counter()
    model.predict_proba(X)
    peak = tracemalloc.get_traced_memory()[1]
    print(f"{fastvlad.__file__}: n={n} peak traced {peak / 1e6:.1f} MB in {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
