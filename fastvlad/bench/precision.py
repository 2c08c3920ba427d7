"""``fastvlad bench --precision int8``: float32 against int8 in one run (issue 15).

(e) the CNN alone on the same decoded batches at both precisions, rounds interleaved (float32
first in even rounds, int8 first in odd ones), so that a shared machine's drift hits both alike;
the speed-up is the median of the per-round ratios. (f) the fitted model's encoder over every
image at both precisions, interleaved the same way: images/s, and everything after the CNN as a
fraction of the CNN, ``(encoder wall time − CNN time) / CNN time`` (the issue's goal: ≤ 0.10).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..encoder import Encoder, Timings
from ..images import Preprocess

PRECISIONS = ("fp32", "int8")


def _at(est: Any, precision: str) -> Any:
    """A shallow copy of a fitted estimator running its CNN at ``precision`` (same codebook and booster)."""
    return copy.copy(est).set_params(precision=precision, fp16=False)


def _spread(values: Sequence[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=float)
    return {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()), "rounds": [float(v) for v in a]}


def cnn_interleaved(est: Any, sources: Sequence[str], prep: Preprocess, batch_size: int, rounds: int) -> dict[str, Any]:
    """(e) images/s of the CNN alone at each precision, round by round, on the same batches."""
    decoded = [prep(s) for s in sources]
    batches = [np.stack(decoded[i : i + batch_size]) for i in range(0, len(decoded), batch_size)
               if len({d.shape for d in decoded[i : i + batch_size]}) == 1]
    nets = {p: Encoder.of(_at(est, p)).cnn for p in PRECISIONS}
    for net in nets.values():
        net(batches[0])  # ONNX Runtime sizes its arena and picks kernels on the first full batch
    n = sum(len(b) for b in batches)
    ips: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for r in range(rounds):
        for p in (PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]):
            t = time.perf_counter()
            for b in batches:
                nets[p](b)
            ips[p].append(n / (time.perf_counter() - t))
    ratio = np.array(ips["int8"]) / np.array(ips["fp32"])
    return {"images": n, **{f"{p}_images_per_s": _spread(ips[p]) for p in PRECISIONS},
            "int8_speedup": _spread(ratio)}


def encoder_interleaved(est: Any, sources: Sequence[str], rounds: int) -> dict[str, Any]:
    """(f) the fitted encoder over every image at each precision, round by round: images/s, CNN
    seconds and (wall − CNN) / CNN."""
    models = {p: _at(est, p) for p in PRECISIONS}
    for m in models.values():
        m.encode(list(sources[:1]))  # the session opened (and an int8 graph built) outside the clock
    out: dict[str, dict[str, list[float]]] = {p: {"images_per_s": [], "post_cnn_fraction": []} for p in PRECISIONS}
    for r in range(rounds):
        for p in (PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]):
            timings = Timings()
            t = time.perf_counter()
            models[p].encode(list(sources), timings)
            wall = time.perf_counter() - t
            cnn = timings.seconds["cnn"]
            out[p]["images_per_s"].append(timings.images / wall)
            out[p]["post_cnn_fraction"].append((wall - cnn) / cnn)
    return {p: {k: _spread(v) for k, v in d.items()} for p, d in out.items()}


def compare(est: Any, sources: Sequence[str], prep: Preprocess, batch_size: int, cnn_images: int,
            rounds: int) -> dict[str, Any]:
    """Both parts, and the issue's headline keys."""
    cnn = cnn_interleaved(est, sources[:cnn_images], prep, batch_size, rounds)
    enc = encoder_interleaved(est, sources, rounds)
    return {"cnn_int8_speedup": cnn["int8_speedup"]["median"],
            "cnn_fp32_images_per_s": cnn["fp32_images_per_s"]["median"],
            "cnn_int8_images_per_s": cnn["int8_images_per_s"]["median"],
            "encode_fp32_images_per_s": enc["fp32"]["images_per_s"]["median"],
            "encode_int8_images_per_s": enc["int8"]["images_per_s"]["median"],
            "post_cnn_fraction_fp32": enc["fp32"]["post_cnn_fraction"]["median"],
            "post_cnn_fraction_int8": enc["int8"]["post_cnn_fraction"]["median"],
            "precision_comparison": {"rounds": rounds, "cnn": cnn, "encoder": enc}}


def report_lines(r: dict[str, Any]) -> list[str]:
    """The comparison as text (empty when the run made none)."""
    if "precision_comparison" not in r:
        return []
    c = r["precision_comparison"]
    cnn, enc = c["cnn"], c["encoder"]

    def rng(s: dict[str, Any], fmt: str = ".1f") -> str:
        return f"{s['median']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"

    return ["", f"(e) float32 against int8, {c['rounds']} interleaved rounds (median (range)):",
            f"  CNN alone        fp32 {rng(cnn['fp32_images_per_s'])} images/s, int8 {rng(cnn['int8_images_per_s'])}"
            f" images/s → speed-up {rng(cnn['int8_speedup'], '.2f')}× (goal ≥ 3.0)",
            f"  encoder          fp32 {rng(enc['fp32']['images_per_s'])} images/s, int8 "
            f"{rng(enc['int8']['images_per_s'])} images/s",
            f"  (wall − CNN)/CNN fp32 {rng(enc['fp32']['post_cnn_fraction'], '.3f')}, int8 "
            f"{rng(enc['int8']['post_cnn_fraction'], '.3f')} (goal at int8 ≤ 0.10)"]
