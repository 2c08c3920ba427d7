"""The header check before the CNN (``images.probe``): milliseconds per image over a dataset.

    python benchmarks/header_check.py [DATA] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from fastvlad import datasets
from fastvlad.images import probe

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nanofiber-sem"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", type=Path, default=DATA)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    paths = [str(p) for p in datasets.load(args.data).paths]
    per_image = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        for p in paths:
            probe(p)
        per_image.append((time.perf_counter() - t) / len(paths) * 1e3)
    print(f"{len(paths)} images, ms per header: median {statistics.median(per_image):.3f}, rounds "
          f"{min(per_image):.3f}–{max(per_image):.3f}")


if __name__ == "__main__":
    main()
