"""Which VLAD aggregation keeps its answers under an acquisition change: hard or soft assignment,
and the per-centre normalisation with a floor.

    python benchmarks/vlad_check.py [--data ../shared/datasets/nanofiber-sem] [--seed 0] [--cache DIR] [--out F]

An image's 5,000 points are spread over 100 centres, so some centres hold a handful; the default's
per-centre (intra) normalisation gives each such centre's residual sum unit length, and hard
assignment moves a point across a Voronoi border whole. Both make a code jump under a small change.
Measured here on one set of points: the default estimator's codebook (PCA and k-means fitted as
``evaluate.encode_images`` fits them, the codebook shared by the folds) and every image's projected
hypercolumns at its points ``(S, p)``, taken once for the images, their mirror (the default's second
view), their jittered copies at 1.2× (the default's training copies) and the shift check's 200 images
(``evaluate.shift_sample`` at seed 0) under every change of ``intensity.SHIFTS`` and the control, at
both views. Each aggregation makes codes from those same points, and the default's head (ridge,
alpha 20, or the alpha named) is fitted per fold under leave-one-series-out and grouped 5-fold, re-predicting the 200
images under each change (``head_check.scored``).

Aggregations (``aggregate``):

- ``hard``: the default (nearest centre; residual sums; each centre's sum to unit length; global L2);
- ``soft b``: each point's weight on centre j ∝ exp(−b·d²_j / s), s the median squared distance of a
  point to its nearest centre over the training images' points (b → ∞ is ``hard``);
- ``floor g``: hard assignment, each centre's sum v_j divided by √(‖v_j‖² + c²), c = g times the
  median ‖v_j‖ over the non-empty centres of the training images (g = 0 is ``hard``);
- ``soft b, floor g``: both;
- ``soft b, power, no intra`` / ``power and intra`` / ``global L2 only``: the soft sums normalised
  otherwise (the signed square root of every element, with or without the per-centre L2; or only the
  global L2);
- ``…, alpha a``: the ridge head at alpha a instead of 20.

The points are kept as float16 (``--cache`` saves them, and a later run with the same seed reads them);
``hard`` on them reproduces the library's codes to about 1e-3 (printed) and its row of
``benchmarks/head_check.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from head_check import (
    command_line,
    estimator_head,
    scored,
    shift_data,
    table_row,
    write,
)

from fastvlad import intensity, vlad
from fastvlad.encoder import Encoder, Timings, View, Workspace, zoom_sources
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import folds
from fastvlad.images import AnySource, Transformed, flipped

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nanofiber-sem"


@dataclass(frozen=True)
class Aggregation:
    """One row of the table: softness b (None: hard), floor g, the ridge head's alpha, and which of the
    per-centre L2 (``intra``) and the signed square root (``power``) normalise the sums."""

    name: str
    soft: float | None = None
    floor: float = 0.0
    alpha: float = 20.0
    intra: bool = True
    power: bool = False


#: The rows of the table, the default of run 68's time first.
AGGREGATIONS: list[Aggregation] = [
    Aggregation("hard (the default)"),
    *(Aggregation(f"soft {b:g}", b) for b in (100.0, 30.0, 10.0, 3.0)),
    *(Aggregation(f"floor {g:g}", None, g) for g in (0.5, 1.0, 2.0)),
    *(Aggregation(f"soft {b:g}, floor {g:g}", b, g) for b in (10.0,) for g in (0.5, 1.0)),
    *(Aggregation(f"soft {b:g}, alpha {a:g}", b, alpha=a) for b in (30.0, 10.0) for a in (5.0, 10.0, 30.0, 40.0)),
    Aggregation("soft 10, power, no intra", 10.0, intra=False, power=True),
    Aggregation("soft 10, power and intra", 10.0, power=True),
    Aggregation("soft 10, global L2 only", 10.0, intra=False),
    *(Aggregation(f"soft 10, power, no intra, alpha {a:g}", 10.0, alpha=a, intra=False, power=True)
      for a in (5.0, 40.0)),
]


def points_of(encoder: Encoder, sources: list[AnySource], view: View) -> np.ndarray:
    """Every image's projected hypercolumns at its points as ``view`` shows it: ``(n, S, p)`` float16."""
    enc = encoder if view.zoom == 1.0 else replace(encoder, settings=encoder.settings.zoomed(view.zoom))
    shown: list[AnySource] = list(flipped(sources, view.op)) if view.op else sources
    proj = enc.projection
    assert proj is not None and enc.centres is not None  # the default has a PCA
    out = np.zeros((len(shown), enc.settings.n_points, proj.components), np.float16)
    workspace, timings = Workspace(enc.backend), Timings()
    for batch in enc.batches(shown):
        if batch.failed or batch.points is None:
            sys.exit(f"every image must read: {batch.failed[:1]}")
        taps, points = enc.taps(batch.pixels, batch.points, timings)
        out[batch.indices] = enc.backend.to_numpy(enc.hypercolumns(taps, points, batch.grid, workspace, timings, proj))
    return out


#: the stretch of points cached before ``Points`` recorded it
DEFAULT_STRETCH = (1.0, 99.0)


@dataclass
class Points:
    """The points behind every code the check needs (each ``(n, S, p)`` float16)."""

    images: np.ndarray
    mirror: np.ndarray
    copies: np.ndarray  # the jittered copies at 1.2×, one per image, in image order
    changed: dict[str, list[np.ndarray]]  # per change: [the 200 images, their mirror]

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "stretch.json").write_text(json.dumps(list(intensity.STRETCH_PERCENTILES)))
        np.save(folder / "images.npy", self.images)
        np.save(folder / "mirror.npy", self.mirror)
        np.save(folder / "copies.npy", self.copies)
        for i, name in enumerate(self.changed):
            for v, arr in enumerate(self.changed[name]):
                np.save(folder / f"changed{i}_{v}.npy", arr)

    @classmethod
    def load(cls, folder: Path, names: list[str]) -> Points:
        """The points saved in ``folder``; refused when they were made with other stretch percentiles
        than ``intensity.STRETCH_PERCENTILES`` now (folders saved without a record: the default 1–99)."""
        record = folder / "stretch.json"
        made = tuple(json.loads(record.read_text())) if record.is_file() else DEFAULT_STRETCH
        if made != tuple(intensity.STRETCH_PERCENTILES):
            now = intensity.STRETCH_PERCENTILES
            raise SystemExit(f"{folder} holds points of the stretch {made[0]:g}–{made[1]:g}, not {now[0]:g}–{now[1]:g}: "
                             "give another --cache")
        changed = {n: [np.load(folder / f"changed{i}_{v}.npy") for v in (0, 1)] for i, n in enumerate(names)}
        return cls(np.load(folder / "images.npy"), np.load(folder / "mirror.npy"), np.load(folder / "copies.npy"),
                   changed)


def cached_points(data: Path, cache: Path, seed: int, names: list[str]) -> Points:
    """The default's ``Points`` of ``seed`` from ``cache`` (made there first by this script's ``main``,
    with no row scored, when missing); ``names``: the changes, in ``intensity`` order."""
    folder = cache / f"seed{seed}"
    if not (folder / "images.npy").is_file():
        main(["--data", str(data), "--seed", str(seed), "--cache", str(cache), "--only", "no row"])
    return Points.load(folder, names)


def take_points(encoder: Encoder, X: list[str], rows: np.ndarray, seed: int, changes: dict) -> Points:  # type: ignore[type-arg]
    """``Points`` of the default estimator (``zoom=(1.2,)`` jittered, the mirror as second view)."""
    copies = zoom_sources(X, np.arange(len(X)), True, seed)
    changed = {}
    for name, fn in changes.items():
        sources: list[AnySource] = [Transformed(X[int(r)], fn, name) for r in rows]
        changed[name] = [points_of(encoder, sources, View(0)), points_of(encoder, sources, View(1))]
    return Points(points_of(encoder, list(X), View(0)), points_of(encoder, list(X), View(1)),
                  points_of(encoder, copies, View(0, 1.2)), changed)


def aggregate(P: np.ndarray, centres: np.ndarray, soft: float | None, floor: float, scale: float,
              norm: float, batch: int = 32, intra: bool = True, power: bool = False) -> np.ndarray:
    """VLAD codes of points ``(n, S, p)`` with centres ``(k, p)``: ``(n, k·p)`` float32 (see the module's
    docstring; ``scale`` the squared-distance unit of ``soft``, ``norm`` the residual norm unit of ``floor``)."""
    C = centres.astype(np.float32)
    cc = (C * C).sum(axis=1)
    out = np.zeros((len(P), C.size), np.float32)
    for a in range(0, len(P), batch):
        x = P[a:a + batch].astype(np.float32)  # (b, S, p)
        d2 = (x * x).sum(axis=2)[:, :, None] - 2.0 * (x @ C.T) + cc  # (b, S, k)
        if soft is None:
            w = np.zeros_like(d2)
            np.put_along_axis(w, d2.argmin(axis=2)[:, :, None], 1.0, axis=2)
        else:
            z = -soft * (d2 - d2.min(axis=2, keepdims=True)) / scale
            w = np.exp(z)
            w /= w.sum(axis=2, keepdims=True)
        v = np.matmul(w.transpose(0, 2, 1), x) - w.sum(axis=1)[:, :, None] * C  # (b, k, p)
        if floor:  # the per-centre L2 with a floor in its place (no row combines it with ``power``)
            v = v / np.sqrt((v * v).sum(axis=2, keepdims=True) + (floor * norm) ** 2)
        out[a:a + batch] = vlad.normalise(v, intra and not floor, power)  # the library's normalisations
    return out


def units(P: np.ndarray, centres: np.ndarray, n_images: int = 50) -> tuple[float, float]:
    """``scale`` (median squared distance to the nearest centre) and ``norm`` (median per-centre residual
    norm over the non-empty centres) of the first ``n_images`` images' points."""
    x = P[:n_images].astype(np.float32)
    C = centres.astype(np.float32)
    d2 = (x * x).sum(axis=2)[:, :, None] - 2.0 * (x @ C.T) + (C * C).sum(axis=1)
    lab = d2.argmin(axis=2)
    norms = []
    for i in range(len(x)):
        v = np.zeros_like(C)
        np.add.at(v, lab[i], x[i] - C[lab[i]])
        n = np.linalg.norm(v, axis=1)
        norms.append(n[n > 0])
    return float(np.median(d2.min(axis=2))), float(np.median(np.concatenate(norms)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="save the points here, or read them when there")
    ap.add_argument("--only", nargs="+", default=[""], help="the aggregations whose name contains one of these")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = ap.parse_args(argv)
    X, y, groups, series, rows = shift_data(args.data)
    changes = {**intensity.SHIFTS, **intensity.CONTROLS}
    t = time.perf_counter()
    est = FastVLAD(random_state=args.seed, softness=None)  # the hard codes the check compares with
    encoder = Encoder.of(est).fit_codebook(X, int(est.k), int(est.codebook_images))
    cache = args.cache / f"seed{args.seed}" if args.cache else None
    if cache is not None and (cache / "images.npy").is_file():
        pts = Points.load(cache, list(changes))
    else:
        pts = take_points(encoder, X, rows, args.seed, changes)
        if cache is not None:
            pts.save(cache)
    centres = np.asarray(encoder.centres)
    check = encoder.encode(X[:16]).codes
    print(f"seed {args.seed}: points in {time.perf_counter() - t:.0f} s; hard on float16 points against the "
          f"library's codes: max |diff| {np.abs(aggregate(pts.images[:16], centres, None, 0.0, 1.0, 1.0) - check).max():.1e}",
          file=sys.stderr, flush=True)
    scale, norm = units(pts.images, centres)
    splits = {"leave-one-series-out": np.unique(series, return_inverse=True)[1],
              "grouped 5-fold": folds(y, groups, 5, args.seed, None)}
    names = list(changes)
    lines = [f"`{command_line('vlad_check.py', argv)}` — "
             f"{platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}; units: s = {scale:.4g}, norm = {norm:.4g}", "",
             "| aggregation | split | accuracy | max flip | mean flip | max right→wrong | " + " | ".join(names) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(names)]
    for agg in AGGREGATIONS:
        if not any(o in agg.name for o in args.only):
            continue

        def codes(P: np.ndarray) -> np.ndarray:
            return aggregate(P, centres, agg.soft, agg.floor, scale, norm, intra=agg.intra, power=agg.power)  # noqa: B023

        cs = argparse.Namespace(codes=codes(pts.images), augmented=codes(pts.copies),
                                augmented_of=np.arange(len(X)), views=[codes(pts.mirror)])
        changed = {n: [codes(v) for v in pair] for n, pair in pts.changed.items()}
        for split_name, fold in splits.items():
            r = scored(functools.partial(estimator_head, classifier="ridge", alpha=agg.alpha), cs, y, fold, rows, changed)
            lines.append(table_row(agg.name, split_name, r, names))
            print(lines[-1], file=sys.stderr, flush=True)
    write(lines, args.out)


if __name__ == "__main__":
    main()
