"""Why an image got its label: the codeword of every sampled pixel and what each codeword contributed.

XGBoost's exact TreeSHAP contributions (``pred_contribs``) are per feature of the VLAD code.
The code is codeword-major — k blocks of ``dim = code_width // k`` features (see
``vlad.normalise``) — so summing a block gives that codeword's contribution to a class's raw
margin, and the k sums plus the bias equal the margin exactly (up to float rounding).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import checks, config, progress
from ._files import folder_atomic, write_bytes_atomic
from .classifier import LinearHead
from .encoder import EncodedBatch, Encoder
from .errors import NotFittedError, ParameterError
from .images import CAFFE_MEAN_BGR, ImageSource, read, to_rgb255

log = logging.getLogger("fastvlad")


@dataclass
class Explanation:
    """One image's sampled points, their codewords, and the per-codeword contributions."""

    image: np.ndarray  # (H, W, 3) uint8, the image as read (its own size)
    grid: tuple[int, int]  # (h, w) network input size; the points live in this grid
    points: np.ndarray  # (S, 2) int32 [row, col]
    codewords: np.ndarray  # (S,) int32 nearest centre of each point
    classes: list[str]
    proba: np.ndarray  # (C,) float32
    target: int  # index of the explained class (the predicted one unless asked otherwise)
    contributions: np.ndarray  # (C, k) float32: codeword j's share of class c's raw margin
    bias: np.ndarray  # (C,) float32
    margin: np.ndarray  # (C,) float32 raw margin (``output_margin=True``)

    @property
    def support(self) -> np.ndarray:
        """(k,) contributions to the explained class: > 0 supports it, < 0 argues against it."""
        return self.contributions[self.target]


def codeword_contributions(head: Any, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature contributions summed per codeword: codes ``(n, k·dim)`` → ``(n, C, k)``, bias ``(n, C)``.

    An XGBoost booster's are its exact TreeSHAP values; a ``LinearHead``'s are exact too, ``coef·x``
    (bias: the intercept). A single-output (binary) booster is returned as two classes, the first
    the negation of the second."""
    import xgboost as xgb

    if codes.shape[1] % k:
        raise ParameterError(f"code width {codes.shape[1]} is not a multiple of k = {k}; the model file is inconsistent")
    if isinstance(head, LinearHead):
        contribs = np.concatenate([head.contributions(codes), np.broadcast_to(
            head.intercept[None, :, None], (len(codes), len(head.intercept), 1))], axis=2)
    else:
        contribs = head.predict(xgb.DMatrix(codes), pred_contribs=True)
    if contribs.ndim == 2:
        contribs = np.stack([-contribs, contribs], axis=1)
    n, c, _ = contribs.shape
    per_codeword = contribs[:, :, :-1].reshape(n, c, k, -1).sum(axis=3, dtype=np.float64)
    return per_codeword.astype(np.float32), contribs[:, :, -1].astype(np.float32)


def raw_margin(head: Any, codes: np.ndarray) -> np.ndarray:
    """Untransformed scores ``(n, C)`` float32 (binary boosters as ``[-m, m]``, like ``codeword_contributions``)."""
    import xgboost as xgb

    if isinstance(head, LinearHead):
        return head.margin(codes).astype(np.float32)
    m = head.predict(xgb.DMatrix(codes), output_margin=True)
    return (np.stack([-m, m], axis=1) if m.ndim == 1 else m).astype(np.float32)


def _encode_batches(model: Any, sources: Sequence[ImageSource]) -> Iterator[EncodedBatch]:
    """The model's encoding, batch by batch, with every point's label and distance: the labels are
    the ones behind ``predict``'s codes (``Encoder.encode_batches``)."""
    if not hasattr(model, "head_"):
        raise NotFittedError("this FastVLAD has no classifier yet; fit it or fastvlad.load(path) first")
    return Encoder.of(model).encode_batches(sources, keep=True)


def explain(model: Any, source: ImageSource, target: str | None = None) -> Explanation:
    """Explain a fitted ``FastVLAD``'s prediction for one image (path or array).

    ``target``: a class name to explain instead of the predicted class."""
    enc = next(_encode_batches(model, [source]), None)
    if enc is None or not enc.batch.indices:
        raise ParameterError(f"{source if not isinstance(source, np.ndarray) else 'array'}: the image could not be read")
    k = model.codebook_.shape[0]
    contributions, bias = codeword_contributions(model.head_, enc.codes, k)
    proba = model.predict_proba_codes(enc.codes)[0]
    classes = [str(c) for c in model.classes_]
    if target is not None and target not in classes:
        raise ParameterError(f"class {target!r} is not one of the model's classes {classes}")
    t = classes.index(target) if target is not None else int(proba.argmax())
    image = np.clip(to_rgb255(read(source)), 0, 255).astype(np.uint8)
    pixels, points = enc.batch.pixels, enc.batch.points
    return Explanation(image, (pixels.shape[2], pixels.shape[3]), points[0], enc.labels[0],  # type: ignore[index]
                       classes, proba, t, contributions[0], bias[0], raw_margin(model.head_, enc.codes)[0])


def save_overlay(expl: Explanation, path: str | Path) -> tuple[Path, Path]:
    """Two PNGs of the image's own size: ``path`` the codeword of every sampled pixel (a colour
    each), ``<stem>.support.png`` each pixel's nearest-point region shaded by its codeword's
    contribution to the explained class (red supports, blue opposes)."""
    from . import plots

    path = Path(path)
    support = support_path(path)
    k = len(expl.support)
    plots.write_png(path, plots.codeword_panel(expl.image, expl.grid, expl.points, expl.codewords, k))
    plots.write_png(support, plots.support_panel(expl.image, expl.grid, expl.points, expl.support[expl.codewords]))
    return path, support


def support_path(path: str | Path) -> Path:
    """Where ``save_overlay`` puts the support overlay of an overlay at ``path``: ``<stem>.support.<ext>``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.support{path.suffix or '.png'}")


@dataclass
class CodewordRanking:
    """Codewords ranked per class by mean |contribution| over a set of images, with example patches."""

    classes: list[str]
    mean_abs: np.ndarray  # (C, k) float64 mean |contribution| to each class's margin
    mean: np.ndarray  # (C, k) float64 signed mean
    patches: np.ndarray  # (k, M, P, P, 3) uint8: the M points nearest each centre, one per image at most
    patch_dist: np.ndarray  # (k, M) float32 squared distance of each patch's point; inf = no patch
    n_images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, why) of images that could not be read

    def top(self, cls: str, n: int) -> np.ndarray:
        """Indices of the (at most ``n``) codewords with the largest non-zero mean |contribution| to ``cls``."""
        score = self.mean_abs[self.classes.index(cls)]
        order = np.argsort(-score, kind="stable")[:n]
        return order[score[order] > 0]

    def to_dict(self, n: int) -> dict[str, Any]:
        return {"n_images": self.n_images, "classes": {
            c: [{"codeword": int(j), "mean_abs": float(self.mean_abs[i, j]), "mean": float(self.mean[i, j])}
                for j in self.top(c, n)] for i, c in enumerate(self.classes)}}


def _rgb_uint8(pixels: np.ndarray) -> np.ndarray:
    """Undo caffe normalisation: (3, h, w) BGR minus mean → (h, w, 3) RGB uint8."""
    return np.clip(pixels.transpose(1, 2, 0) + CAFFE_MEAN_BGR, 0, 255)[..., ::-1].astype(np.uint8)


def _nearest_per_codeword(labels: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For one image: codewords present ``(m,)`` and the index of their nearest point ``(m,)``."""
    order = np.lexsort((dist, labels))
    first = np.ones(len(order), dtype=bool)
    first[1:] = labels[order[1:]] != labels[order[:-1]]
    return labels[order[first]], order[first]


def _crop(padded: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    """A ``size``² patch centred on (row, col) of an image padded by ``size // 2`` on each side."""
    return padded[row : row + size, col : col + size]


def rank_codewords(model: Any, sources: Sequence[ImageSource], n_patches: int = 6, patch: int = 32) -> CodewordRanking:
    """Mean |per-codeword contribution| to every class over ``sources``, and for every codeword
    the ``n_patches`` points nearest its centre (one per image) as ``patch``² crops of the network input."""
    # np.zeros would refuse a negative count only as "negative dimensions", and 0 patches has no grid to draw
    n_patches = checks.integer("n_patches", n_patches, 1, hi=config.MAX_PATCHES)
    patch = checks.integer("patch", patch, 1, hi=config.MAX_PATCHES * 4)
    k = model.codebook_.shape[0]
    n_cls = len(model.classes_)
    sum_abs = np.zeros((n_cls, k))
    sum_signed = np.zeros((n_cls, k))
    patches = np.zeros((k, n_patches, patch, patch, 3), dtype=np.uint8)
    best = np.full((k, n_patches), np.inf, dtype=np.float32)
    n_seen = 0
    skipped: list[tuple[str, str]] = []
    with progress.bar(len(sources), "explaining") as bar:
        for enc in _encode_batches(model, sources):
            bar.advance(len(enc.batch.indices) + len(enc.batch.failed))
            skipped += [(str(sources[i]), str(err)) for i, err in enc.batch.failed]
            if not enc.batch.indices:
                continue
            contrib, _ = codeword_contributions(model.head_, enc.codes, k)
            sum_abs += np.abs(contrib).sum(axis=0)
            sum_signed += contrib.sum(axis=0)
            n_seen += len(enc.batch.indices)
            labels, dist, points = enc.labels, enc.dist, enc.batch.points
            for i in range(len(enc.batch.indices)):
                padded = np.pad(_rgb_uint8(enc.batch.pixels[i]), ((patch // 2,) * 2, (patch // 2,) * 2, (0, 0)),
                                mode="edge")
                for j, p in zip(*_nearest_per_codeword(labels[i], dist[i])):  # type: ignore[index]
                    slot = int(best[j].argmax())
                    if dist[i, p] < best[j, slot]:  # type: ignore[index]
                        best[j, slot] = dist[i, p]  # type: ignore[index]
                        patches[j, slot] = _crop(padded, int(points[i, p, 0]), int(points[i, p, 1]), patch)  # type: ignore[index]
    if n_seen == 0:
        raise ParameterError("no readable image to rank codewords on")
    order = np.argsort(best, axis=1, kind="stable")  # nearest first
    return CodewordRanking([str(c) for c in model.classes_], sum_abs / n_seen, sum_signed / n_seen,
                           np.take_along_axis(patches, order[:, :, None, None, None], axis=1),
                           np.take_along_axis(best, order, axis=1), n_seen, skipped)


def write_ranking(ranking: CodewordRanking, folder: str | Path, top: int = 5) -> list[Path]:
    """``codewords.json`` and one ``codewords_<n>_<class>.png`` grid per class into ``folder``
    (``ranking_paths`` lists them), all or none: they are made in a hidden folder and moved in,
    ``codewords.json`` last."""
    from . import plots

    top = checks.integer("top", top, 1)
    folder = Path(folder)
    json_path, *grid_paths = ranking_paths(folder, ranking.classes)
    written = [json_path]
    with folder_atomic(folder, last=json_path.name) as staging:
        write_bytes_atomic(staging / json_path.name, json.dumps(ranking.to_dict(top), indent=2).encode())
        for i, cls in enumerate(ranking.classes):
            rows = ranking.top(cls, top)
            if not len(rows):
                log.info("%s: no codeword contributes to this class; no patch grid written", cls)
                continue
            labels = [f"#{j}  mean |c| {ranking.mean_abs[i, j]:.3g}  mean {ranking.mean[i, j]:+.3g}" for j in rows]
            plots.patch_grid_png(ranking.patches[rows], ranking.patch_dist[rows] < np.inf, labels,
                                 f"{cls}: codewords that matter most", staging / grid_paths[i].name)
            written.append(grid_paths[i])
    return written


def ranking_paths(folder: str | Path, classes: Sequence[str]) -> list[Path]:
    """The files ``write_ranking`` may write into ``folder``: ``codewords.json``, then one grid per class."""
    from . import plots

    folder = Path(folder)
    return [folder / "codewords.json", *(folder / f"codewords_{i}_{plots.slug(c)}.png" for i, c in enumerate(classes))]
