"""Issue 15: which int8 recipe — calibration method, per-channel weights, 7-bit weights, QDQ or
QOperator, which layers stay float, which calibration set — by the taps' agreement with float32
and the CNN's speed, measured in one run.

    python benchmarks/int8_study.py [--data ../shared/datasets/nanofiber-sem/manifest.csv]
                                    [--rounds 8] [--batch 4] [--json out.json]

Agreement: Pearson correlation of every tap of every evaluation image with the float32 graph's
(images neither calibration set holds: 8 demo images of another seed and, with ``--data``, 8 real
ones); the table gives the minimum over taps and images, and per tap. Speed: every graph runs the
same ``--batch`` images at 224² once per round, graphs interleaved within a round (a shared
machine's drift hits them alike); ms per image as median and range over rounds, and the speed-up
as the median of the per-round ratios float32 / int8.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from fastvlad import quantize, weights
from fastvlad.backbone import Backbone
from fastvlad.quantize import Recipe

BASE = quantize.DEFAULT_RECIPE
VARIANTS: dict[str, Recipe] = {
    "minmax, per-channel, QDQ, first conv float": BASE,
    "  + 7-bit weights (reduce_range)": replace(BASE, reduce_range=True),
    "  per-tensor weights": replace(BASE, per_channel=False),
    "  entropy": replace(BASE, method="entropy"),
    "  percentile 99.999": replace(BASE, method="percentile", percentile=99.999),
    "  percentile 99.99": replace(BASE, method="percentile", percentile=99.99),
    "  QOperator (QLinearConv)": replace(BASE, fmt="qoperator"),
    "  every conv int8": replace(BASE, float_layers=()),
    "  every conv int8, 7-bit weights": replace(BASE, float_layers=(), reduce_range=True),
}


def load_load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


def real_images(data: Path, n: int, seed: int, exclude: set[str]) -> list[str]:
    from fastvlad import datasets

    ds = datasets.load(data, require_labels=False)
    paths = [str(p) for p in ds.paths if str(p) not in exclude]
    return [paths[i] for i in np.sort(np.random.default_rng(seed).permutation(len(paths))[:n])]


def correlations(ref: list[np.ndarray], got: list[np.ndarray]) -> np.ndarray:
    """(taps, images) Pearson correlations of each image's tap with the float32 one."""
    return np.array([[np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(len(a))]
                     for a, b in zip(ref, got)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="real images (dataset folder or CSV) for a "
                    "calibration set of their own and for evaluation")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", default=None, help="comma-separated variant numbers (0-based) to run")
    args = ap.parse_args()

    from fastvlad.images import Preprocess

    prep = Preprocess((224, 224))
    vgg = weights.vgg16_path()
    taps = weights.VGG16_TAPS
    demo_calib = quantize.default_calibration()  # the product's set: the AVX2 loops' pixels on any x86-64 CPU
    evals = {"demo": quantize.demo_calibration(8, seed=1_000)}
    variants = dict(VARIANTS)
    calib_of = {name: demo_calib for name in variants}
    real_calib_paths: list[str] = []
    if args.data:
        real_calib_paths = real_images(args.data, quantize.CALIBRATION_IMAGES, 0, set())
        evals["real"] = np.stack([prep(p) for p in real_images(args.data, 8, 1, set(real_calib_paths))])
        variants["  calibrated on 16 real images"] = BASE
        calib_of["  calibrated on 16 real images"] = np.stack([prep(p) for p in real_calib_paths])
    if args.only:
        keep = {int(i) for i in args.only.split(",")}
        variants = {k: v for i, (k, v) in enumerate(variants.items()) if i in keep}

    print(f"start: {load_load()}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="int8-study-"))
    nets = {"fp32": Backbone("vgg16")}
    info: dict[str, dict] = {}
    for i, (name, recipe) in enumerate(variants.items()):
        t = time.perf_counter()
        data = quantize.quantize_graph(vgg, taps, calib_of[name], recipe)
        path = folder / f"v{i}.onnx"
        path.write_bytes(data)
        info[name] = {"recipe": asdict(recipe), "build_seconds": time.perf_counter() - t, "bytes": len(data)}
        nets[name] = Backbone(path, taps)
        print(f"built {name.strip()} in {info[name]['build_seconds']:.0f} s", flush=True)

    ref = {k: nets["fp32"](x) for k, x in evals.items()}
    for name in variants:
        corr = {k: correlations(ref[k], nets[name](x)) for k, x in evals.items()}
        info[name]["min_corr"] = {k: float(c.min()) for k, c in corr.items()}
        info[name]["min_corr_per_tap"] = {k: [float(v) for v in c.min(axis=1)] for k, c in corr.items()}
        worst = {k: float(np.max([np.abs(g - r).max() / np.abs(r).max() for g, r in zip(nets[name](x), ref[k])]))
                 for k, x in evals.items()}
        info[name]["max_abs_err_rel"] = worst

    batch = quantize.demo_calibration(args.batch, seed=2_000)
    for net in nets.values():
        net(batch)  # ONNX Runtime picks its kernels on the first call
    times: dict[str, list[float]] = {k: [] for k in nets}
    for _ in range(args.rounds):
        for k, net in nets.items():
            t = time.perf_counter()
            net(batch)
            times[k].append((time.perf_counter() - t) / args.batch)
    fp32 = np.array(times["fp32"])
    print(f"end: {load_load()}")
    print(f"\nfloat32: {1e3 * np.median(fp32):.0f} ms/image (range {1e3 * fp32.min():.0f}–{1e3 * fp32.max():.0f})\n")
    cols = list(evals)
    print("| recipe | min corr " + " | ".join(cols) + " | min corr per tap (" + cols[-1] + ") | ms/image median (range) "
          "| speed-up (median of per-round ratios) |")
    print("|---|" + "---|" * len(cols) + "---|---|---|")
    for name in variants:
        v = np.array(times[name])
        ratio = fp32 / v
        info[name].update(ms_per_image=[1e3 * x for x in v], speedup_median=float(np.median(ratio)),
                          speedup_range=[float(ratio.min()), float(ratio.max())])
        per_tap = ", ".join(f"{c:.4f}" for c in info[name]["min_corr_per_tap"][cols[-1]])
        print(f"| {name.strip()} | " + " | ".join(f"{info[name]['min_corr'][k]:.4f}" for k in cols) +
              f" | {per_tap} | {1e3 * np.median(v):.0f} ({1e3 * v.min():.0f}–{1e3 * v.max():.0f}) | "
              f"{np.median(ratio):.2f}× ({ratio.min():.2f}–{ratio.max():.2f}) |")
    if args.json:
        args.json.write_text(json.dumps({"fp32_ms_per_image": [1e3 * x for x in fp32], "variants": info,
                                         "calibration_real": real_calib_paths}, indent=2))


if __name__ == "__main__":
    main()
