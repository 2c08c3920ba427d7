"""The default stretch of 8-bit images, pixel by pixel and by the histogram and a table, in one run.

    python benchmarks/stretch_8bit.py [--data DATA] [--images 64] [--rounds 21]
        [--encode --precision fp32 int8 --encode-rounds 7]

The default ``normalize="stretch"`` maps every image's 1st–99th gray-level percentiles to 0..255 on
the decoding thread. ``every pixel`` (as before) partitions all pixels (``np.percentile``) and maps
each through skimage's ``rescale_intensity``; ``table`` (``intensity.stretch`` now) counts an 8-bit
image's 256 levels, interpolates the percentiles as NumPy does (``intensity.level_percentiles``)
and maps the 256 levels once, then gathers — the same bits (checked on every image before timing;
the tests check it too). Timed in turn, the order reversed every other round, the first round
dropped, on ``--images`` images of ``DATA`` (a dataset folder or manifest; demo images of 306×448
without one):

- ``percentiles``: the two percentiles alone;
- ``stretch``: the whole normalisation;
- ``prepare``: the decoding thread's whole work per image at the defaults (read, 0..255, stretch,
  resize to 112×164, caffe);
- with ``--encode``: the default estimator fitted on the images, its ``Encoder`` encoding them with
  each way in turn, at each ``--precision`` (images per second; the codes must be equal).

Printed: ms per image or images per second (median and range over rounds) and the per-round ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from collections.abc import Callable, Iterator

import numpy as np
from soft_weights import pick_images, report, timed

from fastvlad import intensity
from fastvlad.encoder import EncoderSettings
from fastvlad.estimator import FastVLAD
from fastvlad.images import Preprocess


@contextlib.contextmanager
def stretch_pixel_by_pixel() -> Iterator[None]:
    """``normalize="stretch"`` as before the table."""
    table = intensity.NORMALIZATIONS["stretch"]
    intensity.NORMALIZATIONS["stretch"] = intensity.stretch_pixelwise
    try:
        yield
    finally:
        intensity.NORMALIZATIONS["stretch"] = table


def histogram_percentiles(values: np.ndarray, q: tuple[float, ...]) -> np.ndarray:
    """The percentiles as ``stretch`` reads them from an 8-bit image (its levels found, then counted)."""
    levels = intensity.eight_bit(values)
    assert levels is not None, "not an 8-bit image"
    return intensity.level_percentiles(levels, q)


def before(run: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        with stretch_pixel_by_pixel():
            return run()
    return call


def encoder_rounds(images: list, labels: np.ndarray, precision: str, rounds: int) -> None:
    from fastvlad.encoder import Encoder
    from fastvlad.estimator import FastVLAD

    encoder = Encoder.of(FastVLAD(precision=precision, zoom=()).fit(images, labels))
    now = functools.partial(encoder.encode, images)
    codes = {"every pixel": before(now)().codes, "table": now().codes}  # type: ignore[attr-defined]
    assert np.array_equal(codes["every pixel"], codes["table"]), "the codes differ"
    seconds = timed({"every pixel": before(now), "table": now}, rounds)
    print(f"encoder, {precision}, {len(images)} images, {rounds - 1} rounds (codes equal):")
    for name, s in seconds.items():
        rate = len(images) / s
        print(f"  {name}: {np.median(rate):.2f} images/s (rounds {rate.min():.2f}–{rate.max():.2f})")
    ratio = seconds["every pixel"] / seconds["table"]
    print(f"  every pixel / table (time): {np.median(ratio):.3f} (rounds {ratio.min():.3f}–{ratio.max():.3f})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="dataset folder or manifest (default: demo images)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--encode", action="store_true", help="also time the default encoder")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "int8"])
    ap.add_argument("--encode-rounds", type=int, default=7)
    args = ap.parse_args(argv)
    images, labels = pick_images(args.data, args.images)
    prep = EncoderSettings.of(FastVLAD()).preprocess  # the default's, as the encoder builds it
    levels = [Preprocess(normalize="none").gray_levels(img, i) for i, img in enumerate(images)]  # 0..255
    q = intensity.STRETCH_PERCENTILES
    assert all(np.array_equal(histogram_percentiles(v, q), np.percentile(v, q)) for v in levels)
    assert all(np.array_equal(intensity.stretch(v), intensity.stretch_pixelwise(v)) for v in levels)
    print(f"{len(images)} images of {args.data or 'demo images (306×448)'}, {args.rounds - 1} rounds "
          "(percentiles and stretch equal on every image):")
    pairs = [("every pixel", "table")]
    print("percentiles (1st, 99th):")
    report(timed({"every pixel": lambda: [np.percentile(v, q) for v in levels],
                  "table": lambda: [histogram_percentiles(v, q) for v in levels]}, args.rounds), len(images), pairs)
    print("stretch:")
    report(timed({"every pixel": lambda: [intensity.stretch_pixelwise(v) for v in levels],
                  "table": lambda: [intensity.stretch(v) for v in levels]}, args.rounds), len(images), pairs)

    def prepare_all() -> list:
        return [prep.prepare(img, i) for i, img in enumerate(images)]

    print("prepare (the decoding thread's work per image at the defaults):")
    report(timed({"every pixel": before(prepare_all), "table": prepare_all}, args.rounds), len(images), pairs)
    for precision in args.precision if args.encode else ():
        encoder_rounds(images, labels, precision, args.encode_rounds)


if __name__ == "__main__":
    main()
