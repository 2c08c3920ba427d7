"""What reading a gray picture stored as RGB as gray costs, or saves: ``Preprocess`` (the default's
stretch, 112 px on the short side) of a 448×306 tile given as gray, as RGB with three equal channels
(now read as gray after one comparison of the channels), and as that RGB with the comparison switched
off (the reference: the three channels carried to the resize, as before). Rounds interleaved; medians
and ranges of the per-image milliseconds.

    python benchmarks/equal_channels.py [--rounds 15] [--images 40]
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np

from fastvlad import demo, images


def per_image_ms(prep: images.Preprocess, arrays: list[np.ndarray], compare: bool = True) -> float:
    """Milliseconds per image of ``prep`` over ``arrays`` (the channel comparison on or off)."""
    with mock.patch.object(images, "equal_channels", images.equal_channels if compare else lambda a: False):
        t = time.perf_counter()
        for a in arrays:
            prep(a)
        return 1e3 * (time.perf_counter() - t) / len(arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args()
    gray = [demo.make_image(i % len(demo.CLASSES), (306, 448), np.random.default_rng([7, i])) for i in range(args.images)]
    rgb = [np.dstack([g] * 3) for g in gray]
    prep = images.Preprocess((112, 112), normalize="stretch", keep_aspect=True)
    np.testing.assert_array_equal(prep(rgb[0]), prep(gray[0]))  # the same network input
    runs: dict[str, list[float]] = {"gray": [], "rgb, read as gray": [], "rgb, three channels (reference)": []}
    for _ in range(args.rounds):
        runs["gray"].append(per_image_ms(prep, gray))
        runs["rgb, read as gray"].append(per_image_ms(prep, rgb))
        runs["rgb, three channels (reference)"].append(per_image_ms(prep, rgb, compare=False))
    ref = np.array(runs["rgb, three channels (reference)"])
    for name, ms in runs.items():
        a = np.array(ms)
        ratio = ref / a
        print(f"{name:<34} {np.median(a):6.3f} ms/image ({a.min():.3f}–{a.max():.3f}); reference / this "
              f"{np.median(ratio):.2f}× ({ratio.min():.2f}–{ratio.max():.2f})")


if __name__ == "__main__":
    main()
