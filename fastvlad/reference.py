"""The paper's method in plain NumPy, written the way its notebook did it.

Slow on purpose and kept readable: every fast kernel in fastvlad is tested against
these functions, and ``fastvlad bench`` uses them as the baseline. Nothing here is
used on the production path, and nothing here calls a kernel: the oracles stay independent
of what they check.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

#: Written out here, not imported from ``images``: the oracle must not share the code it checks.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def caffe_preprocess(rgb: np.ndarray) -> np.ndarray:
    """Keras ``vgg16.preprocess_input`` (caffe): (H, W, 3) RGB 0..255 → (3, H, W) BGR minus mean."""
    bgr = rgb[..., ::-1].astype(np.float32) - CAFFE_MEAN_BGR
    return np.ascontiguousarray(bgr.transpose(2, 0, 1))


def source_coords(out_size: int, in_size: int, mode: str = "half_pixel") -> np.ndarray:
    """Continuous source coordinate of every output pixel along one axis, (out_size,) float64.

    ``half_pixel``: pixel centres aligned (TF2 ``tf.image.resize``, PyTorch
    ``align_corners=False``); ``asymmetric``: the legacy TF1 ``resize_images`` mapping.
    """
    scale = in_size / out_size
    dst = np.arange(out_size, dtype=np.float64)
    src = (dst + 0.5) * scale - 0.5 if mode == "half_pixel" else dst * scale
    return np.clip(src, 0.0, in_size - 1)


def upsample_bilinear(tap: np.ndarray, out_hw: tuple[int, int], mode: str = "half_pixel") -> np.ndarray:
    """Bilinear upsampling of one feature map: (h, w, C) → (H, W, C) float32."""
    h, w, _ = tap.shape
    sy = source_coords(out_hw[0], h, mode)
    sx = source_coords(out_hw[1], w, mode)
    y0 = np.floor(sy).astype(np.intp)
    x0 = np.floor(sx).astype(np.intp)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (sy - y0).astype(np.float32)[:, None, None]
    wx = (sx - x0).astype(np.float32)[None, :, None]
    t = tap.astype(np.float32)
    top = (1 - wx) * t[y0][:, x0] + wx * t[y0][:, x1]
    bottom = (1 - wx) * t[y1][:, x0] + wx * t[y1][:, x1]
    return (1 - wy) * top + wy * bottom


def hypercolumn_map(taps: Sequence[np.ndarray], mode: str = "half_pixel") -> np.ndarray:
    """Every tap (h_l, w_l, C_l) upsampled to the first tap's size and concatenated: (H, W, D)."""
    out_hw = taps[0].shape[:2]
    return np.concatenate([upsample_bilinear(t, out_hw, mode) for t in taps], axis=-1)


def sample_hypercolumns(taps: Sequence[np.ndarray], points: np.ndarray, mode: str = "half_pixel") -> np.ndarray:
    """The notebook's way: build the full (H, W, D) map, then index it at ``points`` (S, 2) [row, col]."""
    full = hypercolumn_map(taps, mode)
    return full[points[:, 0], points[:, 1]]


def assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Nearest centre of every point by exact squared distances: (m, D), (k, D) → (m,) int64."""
    d2 = ((x[:, None, :].astype(np.float64) - centres[None, :, :]) ** 2).sum(axis=-1)
    return d2.argmin(axis=1)


def vlad(x: np.ndarray, centres: np.ndarray, intra: bool = True, power: bool = False,
         labels: np.ndarray | None = None) -> np.ndarray:
    """VLAD of one image with a per-centre loop: (S, D) points → (k·D,) float32.

    Hard assignment (exact distances unless ``labels`` are given); per-centre residual sum;
    optional signed square root; per-centre L2 (an empty centre stays zero); global L2.
    """
    labels = assign(x, centres) if labels is None else labels
    k, dim = centres.shape
    v = np.zeros((k, dim), dtype=np.float64)
    for j in range(k):
        members = x[labels == j]
        if len(members):
            v[j] = (members.astype(np.float64) - centres[j]).sum(axis=0)
    return _normalised(v, intra, power)


def vlad_soft(x: np.ndarray, centres: np.ndarray, softness: float, intra: bool = True,
              power: bool = False) -> np.ndarray:
    """Soft-assignment VLAD of one image with a per-point loop, float64: (S, D) points → (k·D,) float32.

    Unit u: the median over centres of the squared distance to the nearest other centre. Each
    point's weight on centre j is exp(−softness·(d²_j − min d²)/u), zero where the exponent is below
    −30, normalised over j; the per-centre sum of weighted residuals; then the normalisations of ``vlad``.
    """
    c = centres.astype(np.float64)
    k, dim = c.shape
    between = ((c[:, None, :] - c[None, :, :]) ** 2).sum(axis=-1)
    np.fill_diagonal(between, np.inf)
    unit = float(np.median(between.min(axis=1))) or 1.0
    v = np.zeros((k, dim), dtype=np.float64)
    for point in x.astype(np.float64):
        d2 = ((point - c) ** 2).sum(axis=1)
        z = softness * (d2 - d2.min()) / unit
        w = np.where(z <= 30.0, np.exp(-np.minimum(z, 30.0)), 0.0)
        v += (w / w.sum())[:, None] * (point - c)
    return _normalised(v, intra, power)


def _normalised(v: np.ndarray, intra: bool, power: bool) -> np.ndarray:
    """Per-centre residual sums (k, D) float64 → the code: optional signed square root; per-centre L2
    (a zero centre stays zero); global L2. (k·D,) float32."""
    if power:
        v = np.sign(v) * np.sqrt(np.abs(v))
    if intra:
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        v = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
    flat = v.ravel()
    norm = np.linalg.norm(flat)
    return (flat / norm if norm > 0 else flat).astype(np.float32)


def minibatch_kmeans_sklearn(point_sets: Sequence[np.ndarray], k: int, random_state: int = 0,
                             seconds: list[float] | None = None) -> np.ndarray:
    """The paper's codebook: scikit-learn ``MiniBatchKMeans``, ``partial_fit`` one image's points
    ``(S, D)`` at a time → centres ``(k, D)`` float32; each call's seconds appended to ``seconds``."""
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=k, random_state=random_state, n_init=1)
    for pts in point_sets:
        t = time.perf_counter()
        km.partial_fit(pts)
        if seconds is not None:
            seconds.append(time.perf_counter() - t)
    return km.cluster_centers_.astype(np.float32)


def soft_weights(cross: np.ndarray, c_sq: np.ndarray, scale: float, cutoff: float) -> np.ndarray:
    """Soft assignment's weights point by point in float64, from the cross term x·cᵀ ``(n, S, k)`` and
    the centres' squared norms ``(k,)``: ``e_j = exp(−z_j)`` with ``z_j = scale·(d²_j − min d²)``
    (‖x‖² cancels), ``e_j = 0`` where ``z_j > cutoff``, divided by their sum (a NaN point: NaN).
    Centre-major: ``(n, k, S)`` float32."""
    n, s_count, k = cross.shape
    out = np.empty((n, k, s_count), dtype=np.float32)
    c_sq64 = c_sq.astype(np.float64)
    for i in range(n):
        for s in range(s_count):
            d2 = c_sq64 - 2.0 * cross[i, s].astype(np.float64)
            z = scale * (d2 - d2.min())
            with np.errstate(invalid="ignore"):
                e = np.where(z <= cutoff, np.exp(-np.minimum(z, cutoff)), 0.0)
                out[i, :, s] = e / e.sum()
    return out


def minibatch_update(batch: np.ndarray, labels: np.ndarray, centres: np.ndarray,
                     counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One mini-batch k-means step (Sculley; scikit-learn's batch mean): each centre ``(k, D)`` moves
    to the count-weighted mean of itself and its new points of ``batch`` ``(b, D)`` (``labels``
    ``(b,)``); a centre without points stays. New centres float32 and counts ``(k,)`` float64."""
    new_c, new_n = centres.astype(np.float64), counts.astype(np.float64)
    for j in range(len(centres)):
        members = batch[labels == j].astype(np.float64)
        if len(members):
            new_c[j] = (new_c[j] * new_n[j] + members.sum(axis=0)) / (new_n[j] + len(members))
            new_n[j] += len(members)
    return new_c.astype(np.float32), new_n


# -- vectorised NumPy twins of the kernels: oracles for the tests, each checked against the loops above --


def gather(taps: Sequence[np.ndarray], points: np.ndarray, mode: str = "half_pixel",
           out_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Bilinear samples of every tap ``(n, h_l, w_l, C_l)`` at the points ``(n, S, 2)`` of the
    ``out_hw`` grid (default: the first tap's), evaluated at the points only: ``(n, S, ΣC_l)`` float32."""
    out_h, out_w = out_hw or taps[0].shape[1:3]
    rows, cols = points[..., 0], points[..., 1]
    img = np.arange(points.shape[0])[:, None]
    parts = []
    for tap in taps:
        sy, sx = source_coords(out_h, tap.shape[1], mode)[rows], source_coords(out_w, tap.shape[2], mode)[cols]
        y0, x0 = np.floor(sy).astype(np.intp), np.floor(sx).astype(np.intp)
        y1, x1 = np.minimum(y0 + 1, tap.shape[1] - 1), np.minimum(x0 + 1, tap.shape[2] - 1)
        wy, wx = (sy - y0).astype(np.float32)[..., None], (sx - x0).astype(np.float32)[..., None]
        t = tap.astype(np.float32)
        one = np.float32(1)
        top = (one - wx) * t[img, y0, x0] + wx * t[img, y0, x1]
        bottom = (one - wx) * t[img, y1, x0] + wx * t[img, y1, x1]
        parts.append((one - wy) * top + wy * bottom)
    return np.concatenate(parts, axis=2) if parts else np.zeros((*points.shape[:2], 0), np.float32)


def residual_sums(x: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Per-centre sums of ``x − c_label`` by one-hot matrix products: ``(n, S, D)``, ``(n, S)`` →
    ``(n, k, D)`` float64 (labels outside [0, k) count for no centre)."""
    k = centres.shape[0]
    out = np.zeros((x.shape[0], k, x.shape[2]))
    for i in range(x.shape[0]):
        onehot = (labels[i][None, :] == np.arange(k)[:, None]).astype(np.float64)
        out[i] = onehot @ x[i].astype(np.float64) - onehot.sum(axis=1)[:, None] * centres.astype(np.float64)
    return out

