"""How far each acquisition change moves the network input and each CNN tap, before any sampling.

    python benchmarks/tap_shift.py [--data ../shared/datasets/nanofiber-sem] [--images 200] [--backbone PATH]

The shift check's images (``evaluate.shift_sample`` at seed 0, stratified by series and class) are
prepared as the default encoder prepares them (stretch, 112 px short side) clean and under every
change of ``intensity.SHIFTS``; per image and tap, the change's relative size is
``‖tap(changed) − tap(clean)‖ / ‖tap(clean)‖`` over the whole map (the same positions: no points
are drawn), and for the input ``‖x(changed) − x(clean)‖ / ‖x(clean)‖`` on the caffe-normalised
pixels. Printed: the median over the images, per change and tap. Which tap a change moves most says
where a remedy would have to act; it does not say whether the move crosses a class boundary (the
shift check does).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fastvlad import datasets, intensity
from fastvlad.encoder import Encoder
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import shift_sample
from fastvlad.images import AnySource, Transformed
from fastvlad.weights import VGG16_TAPS

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nanofiber-sem"


def inputs_and_taps(encoder: Encoder, sources: list[AnySource]) -> list[list[np.ndarray]]:
    """Per image: ``[input (3, H, W), tap_1 (h, w, C), ...]`` float32, in ``sources`` order."""
    out: list[list[np.ndarray]] = [[] for _ in sources]
    for batch in encoder.batches(sources):
        taps = encoder.cnn(batch.pixels)
        for j, i in enumerate(batch.indices):
            out[i] = [np.asarray(batch.pixels[j]), *(np.asarray(t[j]) for t in taps)]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--backbone", default="vgg16", help="an ONNX file with VGG16's tap names (default: ours)")
    args = ap.parse_args(argv)
    if not (args.data / "manifest.csv").is_file():
        sys.exit(f"no dataset at {args.data} (see ../shared/datasets/README.md)")
    ds = datasets.load(args.data)
    y, series = np.asarray(ds.y).astype(str), np.asarray(ds.column("series")).astype(str)
    rows = shift_sample(series, y, args.images, 0)
    X = [str(ds.paths[int(r)]) for r in rows]
    encoder = Encoder.of(FastVLAD(backbone=args.backbone, taps=VGG16_TAPS))
    clean = inputs_and_taps(encoder, list(X))
    names = ["input", *encoder.cnn.taps]
    print("| change | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for name, fn in intensity.SHIFTS.items():
        changed = inputs_and_taps(encoder, [Transformed(x, fn, name) for x in X])
        rel = np.array([[np.linalg.norm(c - a) / np.linalg.norm(a) for a, c in zip(ca, cc)]
                        for ca, cc in zip(clean, changed)])  # (images, 1 + taps)
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in np.median(rel, axis=0)) + " |", flush=True)


if __name__ == "__main__":
    main()
