"""How far each acquisition change moves the network input and each CNN tap, before any sampling.

    python benchmarks/tap_shift.py [--data ../shared/datasets/nanofiber-sem] [--images 200] [--backbone PATH | --antialias]

The shift check's images (``evaluate.shift_sample`` at seed 0, stratified by series and class) are
prepared as the default encoder prepares them (stretch, 112 px short side) clean and under every
change of ``intensity.SHIFTS``; per image and tap, the change's relative size is
``‖tap(changed) − tap(clean)‖ / ‖tap(clean)‖`` over the whole map (the same positions: no points
are drawn), and for the input ``‖x(changed) − x(clean)‖ / ‖x(clean)‖`` on the caffe-normalised
pixels. Printed: the median over the images, per change and tap. Which tap a change moves most says
where a remedy would have to act; it does not say whether the move crosses a class boundary (the
shift check does).

``--antialias``: the same with every 2×2 max-pool of fastvlad's VGG16 graph made anti-aliased as in
Zhang, "Making convolutional networks shift-invariant again" (ICML 2019): a max over 2×2 at stride 1,
then a [1, 2, 1]² binomial blur at stride 2 (``antialiased``; the same output sizes and centres, the
same weights, no retraining). ACCURACY.md run 67: it does not steady the taps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from fastvlad import datasets, intensity, weights
from fastvlad.encoder import Encoder
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import shift_sample
from fastvlad.images import AnySource, Transformed
from fastvlad.weights import VGG16_TAPS

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nanofiber-sem"


def antialiased(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (fastvlad's VGG16 graph) with every MaxPool(2, stride 2) replaced by Pad(edge, 1 at the
    end) → MaxPool(2, stride 1) → Pad(reflect, 1 at the start) → depthwise [1, 2, 1]²/16 Conv at
    stride 2: floor(H/2) outputs centred at 2j + ½, as the plain pool's."""
    from onnx import helper, numpy_helper

    g = model.graph
    channels = {i.name.split("/")[0]: numpy_helper.to_array(i).shape[0] for i in g.initializer
                if i.name.endswith("/kernel")}
    f = np.array([1.0, 2.0, 1.0], np.float32)
    blur = np.outer(f, f) / 16.0
    nodes = []
    for node in g.node:
        if node.op_type != "MaxPool":
            nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        c, p = channels[x], f"{y}/aa"
        g.initializer.extend([
            numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), f"{p}/end"),
            numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 0, 0], np.int64), f"{p}/start"),
            numpy_helper.from_array(np.tile(blur[None, None], (c, 1, 1, 1)).astype(np.float32), f"{p}/blur")])
        nodes += [helper.make_node("Pad", [x, f"{p}/end"], [f"{p}/padded"], mode="edge"),
                  helper.make_node("MaxPool", [f"{p}/padded"], [f"{p}/max"], kernel_shape=[2, 2], strides=[1, 1]),
                  helper.make_node("Pad", [f"{p}/max", f"{p}/start"], [f"{p}/reflected"], mode="reflect"),
                  helper.make_node("Conv", [f"{p}/reflected", f"{p}/blur"], [y], kernel_shape=[3, 3], strides=[2, 2],
                                   group=c)]
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


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
    ap.add_argument("--antialias", action="store_true", help="fastvlad's VGG16 with anti-aliased max-pools")
    args = ap.parse_args(argv)
    if not (args.data / "manifest.csv").is_file():
        sys.exit(f"no dataset at {args.data} (see ../shared/datasets/README.md)")
    ds = datasets.load(args.data)
    y, series = np.asarray(ds.y).astype(str), np.asarray(ds.column("series")).astype(str)
    rows = shift_sample(series, y, args.images, 0)
    X = [str(ds.paths[int(r)]) for r in rows]
    if not args.antialias:
        report(args.backbone, X)
        return
    with tempfile.TemporaryDirectory() as tmp:  # the anti-aliased graph (~60 MB) goes with the run
        backbone = str(Path(tmp) / "vgg16_antialiased.onnx")
        onnx.save(antialiased(onnx.load(str(weights.vgg16_path()))), backbone)
        report(backbone, X)


def report(backbone: str, X: list[str]) -> None:
    """Print, per acquisition change, the median relative change of the input and each tap over ``X``."""
    encoder = Encoder.of(FastVLAD(backbone=backbone, taps=VGG16_TAPS))
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
