"""``fastvlad bench --scaling``: encoding time and peak memory against the number of images,
the density, k and the input size, one parameter at a time, and the curves as PNG files.

Every point runs ``Encoder.encode`` (the faithful encoder: no projection) with a codebook of
k hypercolumns drawn at random from one image: assignment and VLAD cost the same whatever the
centres are, and fitting a k-means per point would measure k-means instead.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_atomic
from ..backbone import Backbone
from ..backends import Backend
from ..encoder import Encoder, EncoderSettings, Timings, Workspace, batch_points
from ..images import ImageSource, Preprocess
from .machine import PeakRSS

DENSITIES = (1.0, 5.0, 10.0, 25.0)
KS = (32, 100, 256)
SIZES: tuple[tuple[int, int] | None, ...] = ((224, 224), (448, 448), None)
MB = 1 << 20


def image_counts(n: int, batch: int) -> list[int]:
    """Numbers of images for the streaming series: whole batches doubling up to ``n`` (below one
    batch, memory grows with the batch itself, which is not what the series is about)."""
    if n <= batch:
        return sorted({max(1, n // 2), n})
    return [c for c in (batch, 2 * batch, 4 * batch, 8 * batch) if c < n] + [n]


def centre_pool(source: ImageSource, backbone: Backbone, settings: EncoderSettings,
                backend: Backend) -> np.ndarray:
    """Hypercolumns of one image at 25 % density: ``(S, dim)`` float32, to draw centres from."""
    dense = dataclasses.replace(settings, density=25.0)
    pixels = Preprocess(settings.image_size, settings.resample)(source)[None]
    encoder = Encoder(dense, backend, backbone)
    taps, points = encoder.taps(pixels, batch_points(pixels, dense), Timings())
    return np.array(backend.to_numpy(encoder.hypercolumns(taps, points, pixels.shape[2:], Workspace(backend),
                                                           Timings()))[0])


def _point(series: str, value: object, sources: Sequence[ImageSource], backbone: Backbone, centres: np.ndarray,
           settings: EncoderSettings, backend: Backend) -> dict[str, Any]:
    """Encode ``sources`` once: wall time, time per stage and peak RSS above the start."""
    timings = Timings()
    with PeakRSS() as mem:
        t = time.perf_counter()
        Encoder(settings, backend, backbone, centres=centres).encode(sources, timings)
        wall = time.perf_counter() - t
    n = len(sources)
    return {"series": series, "value": value, "images": n, "seconds": wall, "images_per_s": n / wall,
            "ms_per_image": 1e3 * wall / n, "stages_ms_per_image": {s: 1e3 * v / n for s, v in timings.seconds.items()},
            "peak_rss_bytes": mem.peak, "rss_increase_bytes": mem.delta, "codes_bytes": n * centres.size * 4}


#: The scaling series, one PNG each (``scaling_<series>.png``).
SERIES = ("images", "density", "k", "image_size")


def plot_files(folder: str | Path) -> list[Path]:
    """The PNG files ``plot_scaling`` writes into ``folder``."""
    return [Path(folder) / f"scaling_{series}.png" for series in SERIES]


def run_scaling(sources: Sequence[ImageSource], backbone: Backbone, settings: EncoderSettings, k: int,
                backend: Backend, n_images: int, n_small: int, seed: int) -> list[dict[str, Any]]:
    """All four series, varying one parameter of ``settings``/``k`` at a time."""
    rng = np.random.default_rng(seed)
    pool = centre_pool(sources[0], backbone, settings, backend)

    def centres(kk: int) -> np.ndarray:
        return pool[rng.choice(len(pool), size=kk, replace=len(pool) < kk)]

    small = list(sources[:n_small])
    base = centres(k)
    # Warm-up: ONNX Runtime's arena and the workspace reach their steady size before the first point.
    Encoder(settings, backend, backbone, centres=base).encode(small[: backend.batch_size])
    points = [_point("images", n, sources[:n], backbone, base, settings, backend)
              for n in image_counts(n_images, backend.batch_size)]
    points += [_point("density", d, small, backbone, base, dataclasses.replace(settings, density=d), backend)
               for d in DENSITIES]
    points += [_point("k", kk, small, backbone, centres(kk), settings, backend) for kk in KS]
    points += [_point("image_size", "native" if s is None else f"{s[0]}x{s[1]}", small, backbone, base,
                      dataclasses.replace(settings, image_size=s), backend) for s in SIZES]
    return points


def streaming_growth(points: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Growth of peak RSS from the fewest to the most images, with and without the codes matrix.

    ``Encoder.encode`` holds the (n, k·dim) codes twice at the end (the matrix and its
    readable rows), so the working memory is the RSS increase minus twice the codes."""
    series = sorted((p for p in points if p["series"] == "images"), key=lambda p: p["images"])
    first, last = series[0], series[-1]
    working = [p["rss_increase_bytes"] - 2 * p["codes_bytes"] for p in (first, last)]
    return {"images_from": first["images"], "images_to": last["images"],
            "peak_rss_growth_bytes": last["peak_rss_bytes"] - first["peak_rss_bytes"],
            "codes_growth_bytes": 2 * (last["codes_bytes"] - first["codes_bytes"]),
            "working_growth_bytes": working[1] - working[0]}


def plot_scaling(points: Sequence[dict[str, Any]], folder: str | Path) -> list[Path]:
    """One PNG per series: ms per image (left axis) and RSS increase in MB (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for series in dict.fromkeys(p["series"] for p in points):
        rows = [p for p in points if p["series"] == series]
        labels = [str(p["value"]) for p in rows]
        x = np.arange(len(rows)) if series == "image_size" else [float(p["value"]) for p in rows]
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        ax.plot(x, [p["ms_per_image"] for p in rows], "o-", color="tab:blue", label="ms per image")
        ax.set_xlabel(series.replace("_", " "))
        ax.set_ylabel("ms per image", color="tab:blue")
        if series == "image_size":
            ax.set_xticks(x, labels)
        right = ax.twinx()
        right.plot(x, [p["rss_increase_bytes"] / MB for p in rows], "s--", color="tab:red", label="RSS increase")
        if series == "images":
            right.plot(x, [2 * p["codes_bytes"] / MB for p in rows], ":", color="gray", label="2 × codes matrix")
            right.legend(loc="upper left", fontsize=8)
        right.set_ylabel("peak RSS increase (MB)", color="tab:red")
        right.set_ylim(bottom=0)
        ax.set_ylim(bottom=0)
        ax.set_title(f"encoding vs {series.replace('_', ' ')}")
        fig.tight_layout()
        path = Path(folder) / f"scaling_{series}.png"  # one of plot_files(folder)
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
        plt.close(fig)
        written.append(path)
    return written
