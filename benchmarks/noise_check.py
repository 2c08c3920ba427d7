"""Issue 14: does noise σ = 5 change the default's answers through the stretch or through the pixels?

    python benchmarks/noise_check.py [--data ../shared/datasets/nanofiber-sem] [--seed 0]

Noise widens an image's 1st–99th percentiles, so the stretch (``intensity.stretch``) maps a noisy
image with a little less contrast, and it also moves every pixel the CNN sees. The shift check
(``evaluate.shift_check``, 200 out-of-fold leave-one-series-out images, one codebook shared by the
folds as in ``benchmarks/accuracy.py``) is run with three changes: the shift check's noise σ = 5;
the same noise with the noisy image's percentiles mapped back onto the clean image's (the stretch
then uses the clean image's contrast: only the pixels change); and blur σ = 1 px. Per change: the
share of predictions changed, of the right ones made wrong, and where they fall per held-out series.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fastvlad import FastVLAD, datasets, intensity
from fastvlad.evaluate import cross_validate, encode_images, shift_check

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nanofiber-sem"


def noise_percentiles_kept(values: np.ndarray) -> np.ndarray:
    """The shift check's noise σ = 5, then mapped so that its 1st and 99th percentiles are the clean
    image's: ``intensity.stretch`` of the result is the noisy pixels at the clean image's contrast."""
    noisy = intensity.noise(values, 5.0)
    lo, hi = np.percentile(values, intensity.STRETCH_PERCENTILES)
    nlo, nhi = np.percentile(noisy, intensity.STRETCH_PERCENTILES)
    if nhi - nlo <= 1e-6:
        return noisy
    return ((noisy - nlo) * np.float32((hi - lo) / (nhi - nlo)) + np.float32(lo)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data}: the nanofiber set is not there (see ../shared/datasets/README.md); "
                         "give its folder with --data")
    ds = datasets.load(args.data)
    X, y, series = [str(p) for p in ds.paths], np.asarray(ds.y), ds.column("series")
    est = FastVLAD(random_state=args.seed)
    t = time.perf_counter()
    codes = encode_images(est, X)
    res = cross_validate(est, X, y, split=series, split_name="series", codes=codes)
    print(f"the default, seed {args.seed}: leave-one-series-out mean {res.accuracy:.3f} "
          f"(encoded in {time.perf_counter() - t:.0f} s)")
    shifts = {"noise σ=5": intensity.SHIFTS["noise σ=5"], "noise σ=5, percentiles kept": noise_percentiles_kept,
              "blur σ=1 px": intensity.SHIFTS["blur σ=1 px"]}
    check = shift_check(res, X, n_images=200, shifts=shifts, random_state=0)
    print(f"\n| change | changed | right ones made wrong | accuracy (unchanged {check.accuracy:.3f}) | "
          "changed per held-out series |\n|---|---|---|---|---|")
    for c in check.changes:
        where = ", ".join(f"{g} {k}/{n}" for g, (k, n) in sorted(c["by_group"].items()) if k) or "none"
        print(f"| {c['name']} | {c['flipped']:.3f} | {c['lost']:.3f} | {c['accuracy']:.3f} | {where} |")
    per = {f["held_out"]: f["accuracy"] for f in res.per_fold()}
    print("\nheld-out accuracy per series: " + ", ".join(f"{g} {a:.2f}" for g, a in sorted(per.items())))


if __name__ == "__main__":
    main()
