"""Time the CUDA kernels against the Numba ones at the paper's working point, and the GPU pipeline.

Usage (needs CuPy and a GPU): ``python benchmarks/gpu_kernels.py [--n 64 --points 5000 --k 100]``.
Prints a table and one JSON line. GPU times are CUDA-event medians after warm-up (the first
call compiles the kernel); CPU times are wall-clock medians after the Numba JIT warm-up.
The hypercolumn width is that of the VGG16 taps (64+128+256+512+512 = 1472) at 224².

``--pipeline`` (needs onnxruntime-gpu too) also times the encoder after image decoding: VGG16 on
ONNX Runtime's CUDA provider with IO binding (taps stay on the GPU, handed over by DLPack), then
gather, assignment and VLAD on the GPU, codes copied to the host; images/s at 224², fp32 and fp16.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import cupy as cp
import numpy as np

from fastvlad import codebook, hypercolumn, projection, vlad
from fastvlad.backends.cuda import CudaBackend
from fastvlad.encoder import Encoder, EncoderSettings, Timings, Workspace

GPU = CudaBackend()

TAPS = [(64, 224), (128, 112), (256, 56), (512, 28), (512, 14)]  # (channels, side) of the VGG16 taps


def gpu_ms(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def cpu_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="images")
    ap.add_argument("--points", type=int, default=5000, help="points per image (S)")
    ap.add_argument("--k", type=int, default=100, help="centres")
    ap.add_argument("--repeats", type=int, default=10, help="timed GPU runs (CPU: a third of it, at least 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pipeline", action="store_true", help="also time CNN + kernels end to end (fp32, fp16)")
    args = ap.parse_args()
    n, s, k = args.n, args.points, args.k
    rng = np.random.default_rng(args.seed)
    dim = sum(c for c, _ in TAPS)

    taps = [rng.random((n, side, side, c), dtype=np.float32) for c, side in TAPS]
    points = np.stack([hypercolumn.sample_points(rng, s, TAPS[0][1], TAPS[0][1]) for _ in range(n)])
    x = hypercolumn.gather(taps, points)
    centres = x.reshape(-1, dim)[rng.choice(n * s, k, replace=False)].copy()
    labels = codebook.assign(x.reshape(-1, dim), centres)[0].reshape(n, s)
    taps_d, points_d = [cp.asarray(t) for t in taps], cp.asarray(points)
    x_d, centres_d, labels_d = cp.asarray(x), cp.asarray(centres), cp.asarray(labels)
    x_half = x_d.astype(cp.float16)
    fine = np.ascontiguousarray(x[:, :, : sum(c for c, _ in TAPS[: projection.points_side(taps, s, k)])])
    fine_d = cp.asarray(fine)  # the point-side taps (block1/2), as the encoder gathers them once
    out_d = cp.empty((n, s, dim), cp.float32)
    cpu_repeats = max(1, args.repeats // 3)

    # (name, numba call, cuda call, bytes the GPU kernel must move at least)
    cases = [
        ("gather", lambda: hypercolumn.gather(taps, points, out=x),
         lambda: hypercolumn.gather(taps_d, points_d, backend=GPU, out=out_d), 4 * n * s * (dim * 5 + 2)),
        ("assign", lambda: codebook.assign(x.reshape(-1, dim), centres),
         lambda: codebook.assign(x_d.reshape(-1, dim), centres_d, backend=GPU), 4 * n * s * (2 * dim + 2 * k + 2)),
        ("assign_from_taps", lambda: codebook.nearest_from_taps(taps, points, centres, gathered=fine),
         lambda: codebook.nearest_from_taps(taps_d, points_d, centres_d, backend=GPU, gathered=fine_d),
         4 * n * s * (fine.shape[2] + 2 * k + 1)),
        ("vlad_from_taps", lambda: vlad.encode_from_taps(taps, points, labels, centres, gathered=fine),
         lambda: vlad.encode_from_taps(taps_d, points_d, labels_d, centres_d, backend=GPU, gathered=fine_d),
         4 * n * (s * (dim + 1) + k * dim)),
        ("residual_sums", lambda: vlad.residual_sums(x, labels, centres),
         lambda: vlad.residual_sums(x_d, labels_d, centres_d, backend=GPU), 4 * n * (s * (dim + 1) + k * dim)),
        ("residual_sums_fp16", lambda: vlad.residual_sums(x, labels, centres),
         lambda: vlad.residual_sums(x_half, labels_d, centres_d, backend=GPU), n * (s * (2 * dim + 4) + 4 * k * dim)),
    ]
    rows = []
    for name, cpu_fn, gpu_fn, nbytes in cases:
        t_gpu = gpu_ms(gpu_fn, args.repeats)
        t_cpu = cpu_ms(cpu_fn, cpu_repeats)
        rows.append({"kernel": name, "numba_ms": t_cpu, "cuda_ms": t_gpu, "speedup": t_cpu / t_gpu,
                     "cuda_GBps": nbytes / t_gpu / 1e6, "images_per_s_cuda": 1e3 * n / t_gpu})

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())
    device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    print(f"{device}: n={n} images, S={s}, D={dim}, k={k}")
    print(f"{'kernel':<20}{'numba ms':>12}{'cuda ms':>12}{'speedup':>10}{'cuda GB/s':>12}{'img/s cuda':>14}")
    for r in rows:
        print(f"{r['kernel']:<20}{r['numba_ms']:>12.2f}{r['cuda_ms']:>12.3f}{r['speedup']:>10.1f}"
              f"{r['cuda_GBps']:>12.0f}{r['images_per_s_cuda']:>14.0f}")
    report: dict[str, Any] = {"device": device, "n": n, "points": s, "dim": dim, "k": k, "results": rows}
    if args.pipeline:
        report["pipeline"] = [pipeline_images_per_s(n, s, centres_d, fp16, args.repeats) for fp16 in (False, True)]
        for r in report["pipeline"]:
            print(f"pipeline {'fp16' if r['fp16'] else 'fp32'}: CNN {r['cnn_images_per_s']:.0f} img/s, "
                  f"CNN + gather + assign + VLAD {r['images_per_s']:.0f} img/s (batch {n}, 224²)")
    print(json.dumps(report))


def pipeline_images_per_s(n: int, s: int, centres_d: Any, fp16: bool, repeats: int) -> dict[str, Any]:
    """Images/s of the GPU encoder on random 224² batches (decoding excluded: it runs on the
    prefetch thread), and of its CNN alone."""
    from fastvlad.backbone import Backbone

    backbone = Backbone(providers=("CUDAExecutionProvider", "CPUExecutionProvider"), fp16=fp16)
    assert backbone.on_gpu, f"the CUDA provider did not load: {backbone.providers}"
    rng = np.random.default_rng(0)
    pixels = (rng.random((n, 3, 224, 224), dtype=np.float32) * 255 - 120).astype(np.float32)
    points = cp.asarray(np.stack([hypercolumn.sample_points(rng, s, 224, 224) for _ in range(n)]))
    # The encoder's own post-CNN step on a CUDA backend made by hand (backends.resolve would also
    # ask for XGBoost's GPU build, which the encoder does not use).
    backend = CudaBackend(providers=tuple(backbone.providers), batch_size=n)
    workspace, settings = Workspace(backend), EncoderSettings(density=s / 500)
    post_cnn = Encoder(settings, backend, backbone).codes

    def encode() -> np.ndarray:
        taps = backbone(pixels)
        return cp.asnumpy(post_cnn(taps, points, pixels.shape[2:], centres_d, None, workspace, Timings())[0])

    t_cnn = gpu_ms(lambda: backbone(pixels), repeats)
    t_all = gpu_ms(encode, repeats)
    return {"fp16": fp16, "batch": n, "cnn_images_per_s": 1e3 * n / t_cnn, "images_per_s": 1e3 * n / t_all}


if __name__ == "__main__":
    main()
