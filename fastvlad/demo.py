"""Seeded synthetic TEM-like micrographs of the four classes of Luo, Holm & Wang (2021).

The paper's data set (carbon nanotube/nanofibre TEM images in four morphology classes)
is not redistributable, so examples, tests and benchmarks use this generator instead.
It draws the classes procedurally so that they differ in *morphology* (what the
hypercolumn + VLAD pipeline is meant to pick up) while brightness, contrast,
illumination, scale, blur and noise are randomised so that raw pixels alone do not
separate them trivially:

* ``"CNT-Cluster"``: tangled agglomerates of many curly thin fibres in one to three clumps;
* ``"CNT-fiber"``: one to a few isolated long, gently curved fibres on background;
* ``"CNT-Matrix"``: a large amorphous blob with darker specks and short fragments inside;
* ``"CNT-MatrixSurface"``: a blob with fibres sticking out of its surface.

Image formation follows bright-field TEM loosely: every object contributes a projected
absorbance ``A >= 0`` (additive, so crossing fibres are darker where they overlap) and
the recorded intensity is ``B * illumination * exp(-A)`` plus a slight under-focus
(Fresnel) halo and shot/read noise. One 224×224 image takes ~5-8 ms on one CPU core:
curves are rasterised by bilinear splatting of densely sampled points (no per-disc
stamping), and every blur (fibre widths, hollow-tube cores, the halo) is one transfer
function applied in a single shared Fourier pass.

``scipy`` (already required by scikit-learn) provides the FFT and a 1-D filter.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import numpy as np
from scipy import fft as sfft
from scipy.ndimage import gaussian_filter1d

from fastvlad.errors import ParameterError

__all__ = ["CLASSES", "make_image", "make_dataset", "write_dataset"]

#: The four class names, in the paper's order; integer labels index this tuple.
CLASSES: tuple[str, ...] = ("CNT-Cluster", "CNT-fiber", "CNT-Matrix", "CNT-MatrixSurface")

#: Smallest side accepted: below this the objects (a few px wide) no longer fit.
MIN_SIZE = 32
#: Arc-length spacing (px) of the points that rasterise a curve; 0.5 px leaves no gaps.
_STEP = 0.5
#: Reference field side (px): object sizes are specified for a 224-px image and scaled.
_REF = 224.0
#: Angular resolution of the blob outline look-up table (cheaper than cos() per pixel).
_N_ANGLES = 720


# --------------------------------------------------------------------------- validation


def _check_label(label: str | int) -> int:
    """Return the class index of ``label`` (a name from CLASSES or an index 0..3)."""
    if isinstance(label, (bool, np.bool_)):
        raise ParameterError(f"label must be a class name or index, got bool {label!r}")
    if isinstance(label, (int, np.integer)):
        if 0 <= int(label) < len(CLASSES):
            return int(label)
        raise ParameterError(f"label index {int(label)} out of range 0..{len(CLASSES) - 1}; classes are {CLASSES}")
    if isinstance(label, str):
        if label in CLASSES:
            return CLASSES.index(label)
        raise ParameterError(f"unknown label {label!r}; expected one of {CLASSES} or an index 0..{len(CLASSES) - 1}")
    raise ParameterError(f"label must be a class name (str) or index (int), got {type(label).__name__}")


def _check_size(size: tuple[int, int] | int) -> tuple[int, int]:
    """Return ``(H, W)`` from an int or a pair, each at least MIN_SIZE."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, (bool, np.bool_)):
        hw = (int(size), int(size))
    elif (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) for s in size)
    ):
        hw = (int(size[0]), int(size[1]))
    else:
        raise ParameterError(f"size must be an int or a pair of ints (H, W), got {size!r}")
    if min(hw) < MIN_SIZE:
        raise ParameterError(f"size {hw} too small: each side must be >= {MIN_SIZE} px")
    return hw


def _check_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        if rng is not None and int(rng) < 0:
            raise ParameterError(f"rng seed must be >= 0, got {int(rng)}")
        return np.random.default_rng(rng)
    raise ParameterError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def _check_count(name: str, value: int, low: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ParameterError(f"{name} must be an int, got {type(value).__name__}")
    if int(value) < low:
        raise ParameterError(f"{name} must be >= {low}, got {int(value)}")
    return int(value)


# --------------------------------------------------------------------------- primitives


class _Canvas:
    """Absorbance accumulators of one image, on a grid padded by ``pad`` px on every side.

    Objects are drawn in image coordinates; the padding lets blurs and halos near the
    border see what lies just outside the field (no dark or bright edge artefacts) and
    absorbs the wrap-around of the FFT blur.
    """

    def __init__(self, h: int, w: int, pad: int = 12) -> None:
        self.h, self.w, self.pad = h, w, pad
        self.hp = sfft.next_fast_len(h + 2 * pad, real=True)
        self.wp = sfft.next_fast_len(w + 2 * pad, real=True)
        self.dense = np.zeros((self.hp, self.wp), np.float32)  # already-smooth contributions
        self._splats: dict[tuple[float, float, float], np.ndarray] = {}
        self._f2: np.ndarray | None = None

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Image (y, x) coordinates of the padded grid as broadcastable float32 column/row."""
        p = self.pad
        return (np.arange(self.hp, dtype=np.float32) - p)[:, None], (np.arange(self.wp, dtype=np.float32) - p)[None, :]

    def splat(self, ys: np.ndarray, xs: np.ndarray, wts: np.ndarray, key: tuple[float, float, float]) -> None:
        """Bilinearly deposit point weights (image coords) into the buffer blurred with ``key``.

        Bilinear splatting keeps sub-pixel positions, so a curve sampled every 0.5 px
        becomes a smooth line density after the blur; bincount is much faster than
        np.add.at and sums repeated indices the same way.
        """
        hp, wp, p = self.hp, self.wp, self.pad
        xs = xs + p
        ys = ys + p
        keep = (xs >= 0) & (xs < wp - 1) & (ys >= 0) & (ys < hp - 1)
        if not keep.any():
            return
        xs, ys, wts = xs[keep], ys[keep], wts[keep]
        x0 = xs.astype(np.intp)
        y0 = ys.astype(np.intp)
        fx = xs - x0
        fy = ys - y0
        idx = y0 * wp + x0
        flat = np.concatenate([idx, idx + 1, idx + wp, idx + wp + 1])
        vals = np.concatenate([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy]) * np.tile(wts, 4)
        acc = np.bincount(flat, weights=vals, minlength=hp * wp).reshape(hp, wp)
        if key in self._splats:
            self._splats[key] += acc
        else:
            self._splats[key] = acc

    def freq2(self) -> np.ndarray:
        """``2·pi²·|f|²`` on the rfft2 grid: a Gaussian of sd ``s`` has transfer ``exp(-freq2·s²)``."""
        if self._f2 is None:
            fy = sfft.fftfreq(self.hp).astype(np.float32)[:, None] ** 2
            fx = sfft.rfftfreq(self.wp).astype(np.float32)[None, :] ** 2
            self._f2 = (2 * np.pi**2) * (fy + fx)
        return self._f2

    def render(self, halo: float, halo_sigma: float) -> np.ndarray:
        """Blurred sum of all contributions, cropped to (H, W) float32 absorbance.

        Every blur (one per width group, the hollow-tube core, the Fresnel halo) is a
        linear filter, so all are applied as transfer functions in one Fourier domain:
        one rfft2 per buffer and a single inverse, ~3x cheaper than ndimage blurs.
        ``halo`` > 0 overshoots the absorbance at edges (under-focus fringe: a bright
        rim outside dark objects).
        """
        f2 = self.freq2()
        total = sfft.rfft2(self.dense)
        for (s_out, s_in, k), acc in self._splats.items():
            tf = np.exp(-f2 * (s_out * s_out))
            if k > 0:
                # Hollow tube: the projected wall is thickest at the tube's edges, so
                # subtracting a narrower blur leaves two dark walls and a lighter core.
                tf -= k * np.exp(-f2 * (s_in * s_in))
            total += sfft.rfft2(acc.astype(np.float32)) * tf
        if halo > 0:
            total *= (1 + halo) - halo * np.exp(-f2 * (halo_sigma * halo_sigma))
        out = sfft.irfft2(total, s=(self.hp, self.wp))
        p = self.pad
        return out[p : p + self.h, p : p + self.w]


def _profile_peak(s_out: float, s_in: float, k: float) -> float:
    """Peak of the cross-section of a unit-density line blurred by ``(s_out, s_in, k)``.

    Used to turn a wanted peak absorbance into a weight per splatted point.
    """
    x = np.linspace(0, 3 * s_out, 64)
    p = np.exp(-0.5 * (x / s_out) ** 2) / (np.sqrt(2 * np.pi) * s_out)
    if k > 0:
        p = p - k * np.exp(-0.5 * (x / s_in) ** 2) / (np.sqrt(2 * np.pi) * s_in)
    return float(max(p.max(), 1e-6))


def _width_key(rng: np.random.Generator, width: float, hollow_ok: bool = True) -> tuple[float, float, float]:
    """Blur parameters for a fibre of apparent width ``width`` px (FWHM-like)."""
    s_out = width / 2.6
    # Only wide fibres can show a resolvable lumen; thin ones stay solid lines.
    k = float(rng.uniform(0.25, 0.45)) if (hollow_ok and width >= 2.8 and rng.random() < 0.6) else 0.0
    return (round(s_out, 2), round(s_out * 0.45, 2), round(k, 2))


def _curves(
    rng: np.random.Generator,
    starts: np.ndarray,
    angles: np.ndarray,
    lengths: np.ndarray,
    bend_sd: np.ndarray | float,
    bend_corr: float,
    bias: np.ndarray | float = 0.0,
    anchor_middle: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample ``n`` smooth random curves every _STEP px, all at once.

    The heading is the integral of a curvature that is smoothed white noise (sd
    ``bend_sd`` rad/px, correlation ``bend_corr`` px) plus a constant ``bias`` that
    makes curly, looping fibres; the position is the integral of the heading. This is
    a vectorised stand-in for a persistent random walk / spline.

    Returns ``(ys, xs, fibre_index)`` float arrays of the valid points.
    """
    n = len(starts)
    n_steps = max(int(np.ceil(lengths.max() / _STEP)), 2)
    # Curvature is drawn on a 4x coarser arc-length grid (2 px) and held constant in
    # between: the heading, its integral, stays continuous, and it is 4x less work.
    rep = 4
    noise = rng.standard_normal((n, -(-n_steps // rep))).astype(np.float32)
    sig = max(bend_corr / (_STEP * rep), 0.5)
    # Smoothing white noise shrinks its sd by sqrt(2·sqrt(pi)·sigma); undo that.
    curv = gaussian_filter1d(noise, sig, axis=1, truncate=3.0) * np.float32(np.sqrt(2 * np.sqrt(np.pi) * sig))
    curv = np.repeat(curv, rep, axis=1)[:, :n_steps]
    curv = curv * np.reshape(bend_sd, (-1, 1)) + np.reshape(bias, (-1, 1))
    theta = angles[:, None] + np.cumsum(curv * _STEP, axis=1)
    xs = np.cumsum(np.cos(theta) * _STEP, axis=1)
    ys = np.cumsum(np.sin(theta) * _STEP, axis=1)
    steps = np.arange(n_steps)
    valid = steps[None, :] * _STEP < lengths[:, None]
    if anchor_middle:
        # Put the curve's midpoint (not its start) on the anchor so it crosses the field.
        mid = np.minimum((lengths / _STEP / 2).astype(int), n_steps - 1)
        xs -= xs[np.arange(n), mid][:, None]
        ys -= ys[np.arange(n), mid][:, None]
    xs += starts[:, 1:2]
    ys += starts[:, 0:1]
    fib = np.broadcast_to(np.arange(n)[:, None], (n, n_steps))
    return ys[valid], xs[valid], fib[valid]


def _draw_fibres(
    rng: np.random.Generator,
    cv: _Canvas,
    starts: np.ndarray,
    angles: np.ndarray,
    lengths: np.ndarray,
    bend_sd: np.ndarray | float,
    bend_corr: float,
    widths: tuple[float, float],
    peak: tuple[float, float],
    bias: np.ndarray | float = 0.0,
    anchor_middle: bool = False,
    n_width_groups: int = 2,
) -> None:
    """Rasterise fibres, split into ≤ ``n_width_groups`` width groups (one blur each)."""
    n = len(starts)
    if n == 0:
        return
    ys, xs, fib = _curves(rng, starts, angles, lengths, bend_sd, bend_corr, bias, anchor_middle)
    # A sample's fibres come from one batch, so they share one or two diameters.
    group_widths = rng.uniform(widths[0], widths[1], size=n_width_groups)
    group_of = rng.integers(0, n_width_groups, size=n)
    peaks = rng.uniform(peak[0], peak[1], size=n)
    for g in range(n_width_groups):
        sel_f = group_of == g
        if not sel_f.any():
            continue
        key = _width_key(rng, float(group_widths[g]))
        # weight per point so that the blurred line reaches ``peak`` absorbance
        scale = _STEP / _profile_peak(*key)
        sel = sel_f[fib]
        cv.splat(ys[sel], xs[sel], (peaks * scale)[fib[sel]].astype(np.float64), key)


def _draw_specks(
    rng: np.random.Generator,
    cv: _Canvas,
    ys: np.ndarray,
    xs: np.ndarray,
    radius: float,
    peak: tuple[float, float],
) -> None:
    """Small roughly round dark particles (catalyst / debris) of about ``radius`` px."""
    if len(ys) == 0:
        return
    s = max(radius / 1.2, 0.6)
    key = (round(s, 2), 0.0, 0.0)
    # A unit point blurred by s peaks at 1/(2·pi·s²).
    wts = rng.uniform(peak[0], peak[1], size=len(ys)) * (2 * np.pi * s * s)
    cv.splat(ys.astype(np.float64), xs.astype(np.float64), wts, key)


def _smooth_noise(rng: np.random.Generator, cv: _Canvas, cell: float) -> np.ndarray:
    """Zero-mean, unit-sd random field on the padded grid, correlation length ~``cell`` px.

    White noise low-passed by a Gaussian in the Fourier domain: two single-threaded
    FFTs, much cheaper than a wide ``ndimage`` blur or cubic ``zoom``, and, unlike a
    small BLAS product, not slowed down by thread start-up on a busy machine.
    """
    noise = rng.standard_normal((cv.hp, cv.wp), dtype=np.float32)
    s = 0.5 * max(float(cell), 2.0)
    field = sfft.irfft2(sfft.rfft2(noise) * np.exp(-cv.freq2() * (s * s)), s=(cv.hp, cv.wp))
    return (field / max(float(field.std()), 1e-12)).astype(np.float32)


class _Blob:
    """An amorphous matrix blob: union of 1-3 irregular lobes with a soft rim.

    ``thick`` is its normalised thickness (0..1) on the canvas' padded grid.
    """

    def __init__(self, rng: np.random.Generator, cv: _Canvas, center: np.ndarray, radius: float, n_lobes: int) -> None:
        self.cv = cv
        gy, gx = cv.grid()
        self.thick = np.zeros((cv.hp, cv.wp), np.float32)
        self.lobes: list[tuple[float, float, np.ndarray]] = []
        ang = np.linspace(-np.pi, np.pi, _N_ANGLES, endpoint=False)
        ks = np.arange(2, 9)
        for i in range(n_lobes):
            if i == 0:
                cy, cx, r0 = float(center[0]), float(center[1]), radius
            else:
                # Extra lobes overlap the first so the union stays one connected mass.
                a = rng.uniform(-np.pi, np.pi)
                dd = radius * rng.uniform(0.4, 0.85)
                cy, cx = float(center[0] + dd * np.sin(a)), float(center[1] + dd * np.cos(a))
                r0 = radius * rng.uniform(0.4, 0.75)
            # Outline r(θ) = r0·(1 + Σ a_k cos(kθ + φ_k)): decaying harmonics -> lumpy, not starry.
            amps = rng.normal(0, 0.2, size=len(ks)) / ks**1.2
            phases = rng.uniform(0, 2 * np.pi, size=len(ks))
            rt = r0 * (1 + (amps[:, None] * np.cos(ks[:, None] * ang[None, :] + phases[:, None])).sum(0))
            rt = np.maximum(rt, 0.3 * r0).astype(np.float32)
            self.lobes.append((cy, cx, rt))
            # Only the lobe's bounding box is evaluated (saves most of the per-pixel work).
            rmax = float(rt.max()) + 1
            y0, y1 = np.searchsorted(gy[:, 0], [cy - rmax, cy + rmax])
            x0, x1 = np.searchsorted(gx[0], [cx - rmax, cx + rmax])
            if y1 <= y0 or x1 <= x0:
                continue
            dy = gy[y0:y1] - cy
            dx = gx[:, x0:x1] - cx
            d = np.sqrt(dy * dy + dx * dx)
            ai = ((np.arctan2(dy, dx) + np.pi) * (_N_ANGLES / (2 * np.pi))).astype(np.intp) % _N_ANGLES
            r = rt[ai]
            # Flat-topped thickness with a soft rim ~ 20 % of the radius.
            t = np.clip((r - d) / (0.22 * r), 0, 1) ** 0.6
            sub = self.thick[y0:y1, x0:x1]
            np.maximum(sub, t, out=sub)

    def boundary_points(self, rng: np.random.Generator, n: int, depth: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        """``n`` (y, x) points at fraction ``depth`` of the outline radius, and their outward angles."""
        li = rng.integers(0, len(self.lobes), size=n)
        th = rng.uniform(-np.pi, np.pi, size=n)
        fr = rng.uniform(depth[0], depth[1], size=n)
        pts = np.empty((n, 2))
        for j in range(n):
            cy, cx, rt = self.lobes[li[j]]
            r = rt[int((th[j] + np.pi) * (_N_ANGLES / (2 * np.pi))) % _N_ANGLES] * fr[j]
            pts[j] = (cy + r * np.sin(th[j]), cx + r * np.cos(th[j]))
        return pts, th

    def inside_points(self, rng: np.random.Generator, n: int, min_thick: float = 0.5) -> np.ndarray:
        """``n`` random (y, x) image points where the blob is >= ``min_thick`` thick (fewer if none)."""
        cv, p = self.cv, self.cv.pad
        # Draw among qualifying pixels directly: rejection sampling starves on small blobs.
        idx = np.flatnonzero(self.thick[p : p + cv.h, p : p + cv.w] >= min_thick)
        if n <= 0 or idx.size == 0:
            return np.empty((0, 2))
        pick = idx[rng.integers(0, idx.size, size=n)]
        return np.stack([pick // cv.w, pick % cv.w], 1) + rng.uniform(0, 1, size=(n, 2))

    def area(self) -> float:
        """Blob area inside the image, in px."""
        p = self.cv.pad
        return float(self.thick[p : p + self.cv.h, p : p + self.cv.w].sum())


# --------------------------------------------------------------------------- classes


def _film(rng: np.random.Generator, cv: _Canvas, u: float, k: float) -> None:
    """Amorphous carbon support film: faint mottle everywhere, plus a little debris."""
    h, w = cv.h, cv.w
    cv.dense += rng.uniform(0.005, 0.02) * _smooth_noise(rng, cv, 8 * u)
    n_debris = rng.poisson(4 * h * w / _REF**2)
    _draw_specks(rng, cv, rng.uniform(0, h, n_debris), rng.uniform(0, w, n_debris), rng.uniform(0.8, 2.0), (0.15, 0.5))


# Class painters. ``u`` is the length of one reference pixel (a 224-px field at unit
# magnification) in output pixels, random magnification included, so ``_REF * u`` is
# the field size in "specimen" units; ``k`` = side / 224 without the magnification,
# used to keep object *counts* independent of the output size. Fibre widths stay in
# output pixels (1.5-4 px) so that thin fibres remain resolvable at every size.


def _cluster(rng: np.random.Generator, cv: _Canvas, u: float, k: float) -> None:
    h, w = cv.h, cv.w
    n_clumps = int(rng.choice([1, 1, 2, 2, 3]))
    gy, gx = cv.grid()
    for _ in range(n_clumps):
        radius = rng.uniform(0.13, 0.28) * _REF * u / n_clumps**0.3
        c = rng.uniform([0.2 * h, 0.2 * w], [0.8 * h, 0.8 * w])
        # Fibre count grows with the clump's area so every clump is densely packed. Widths
        # are fixed in px, so the count is scaled by k (not k²) to keep the coverage, and
        # hence how dark a clump gets, the same at every image size.
        n = int(np.clip(rng.uniform(0.025, 0.045) * (radius / k) ** 2 * k, 8, 160))
        mids = c + rng.normal(0, radius * 0.45, size=(n, 2))
        lengths = rng.uniform(0.8, 2.6, size=n) * radius
        # Curvature bias of about 1/radius curls fibres into loops that stay in the clump.
        bias = rng.choice([-1, 1], size=n) * rng.uniform(0.8, 2.2, size=n) / radius
        bend = rng.uniform(1.5, 3.0, size=n) / radius
        _draw_fibres(
            rng, cv, mids, rng.uniform(-np.pi, np.pi, n), lengths, bend, radius * 0.25,
            widths=(1.5, 2.8), peak=(0.2, 0.45), bias=bias, anchor_middle=True,
        )
        # Diffuse dark core: overlapping tubes and amorphous carbon binding the agglomerate.
        core = float(rng.uniform(0.05, 0.25))
        r2 = ((gy - float(c[0])) ** 2 + (gx - float(c[1])) ** 2) / float(2 * (0.5 * radius) ** 2)
        cv.dense += core * np.exp(-np.minimum(r2, 30.0))
    # A few stray fibres escaping the agglomerate, as in real dispersions.
    n_stray = rng.poisson(1.5)
    if n_stray:
        starts = rng.uniform([0, 0], [h, w], size=(n_stray, 2))
        _draw_fibres(
            rng, cv, starts, rng.uniform(-np.pi, np.pi, n_stray), rng.uniform(0.1, 0.35, n_stray) * _REF * u,
            1.0 / (0.15 * _REF * u), 8.0 * u, widths=(1.5, 3.0), peak=(0.3, 0.6),
        )


def _fiber(rng: np.random.Generator, cv: _Canvas, u: float, k: float) -> None:
    h, w = cv.h, cv.w
    n = int(rng.choice([1, 1, 2, 2, 3, 4]))
    # Anchor each fibre's midpoint inside the field so it crosses it rather than missing it.
    anchors = rng.uniform([0.15 * h, 0.15 * w], [0.85 * h, 0.85 * w], size=(n, 2))
    lengths = rng.uniform(0.7, 2.0, size=n) * _REF * u
    bend = rng.uniform(0.3, 1.5, size=n) / (0.5 * _REF * u)
    _draw_fibres(
        rng, cv, anchors, rng.uniform(-np.pi, np.pi, n), lengths, bend, 0.2 * _REF * u,
        widths=(1.8, 4.0), peak=(0.35, 0.8), anchor_middle=True,
    )
    # Catalyst particles / debris near the fibres.
    m = rng.poisson(3)
    if m:
        j = rng.integers(0, n, size=m)
        pts = anchors[j] + rng.normal(0, 0.25 * _REF * u, size=(m, 2))
        _draw_specks(rng, cv, pts[:, 0], pts[:, 1], rng.uniform(1.5, 3.5) * max(u, 0.6), (0.3, 0.8))


def _matrix_blob(rng: np.random.Generator, cv: _Canvas, u: float, big: bool) -> _Blob:
    h, w = cv.h, cv.w
    if big:
        radius = rng.uniform(0.28, 0.45) * _REF * u
        c = rng.uniform([0.3 * h, 0.3 * w], [0.7 * h, 0.7 * w])
    else:
        radius = rng.uniform(0.18, 0.3) * _REF * u
        c = rng.uniform([0.25 * h, 0.25 * w], [0.75 * h, 0.75 * w])
    blob = _Blob(rng, cv, c, radius, int(rng.integers(1, 4)))
    # Matrix (polymer / amorphous carbon) density varies: mottle its thickness.
    mottle = 1 + rng.uniform(0.1, 0.25) * _smooth_noise(rng, cv, rng.uniform(4, 10) * u)
    cv.dense += rng.uniform(0.35, 0.75) * blob.thick * mottle
    return blob


def _matrix(rng: np.random.Generator, cv: _Canvas, u: float, k: float) -> None:
    blob = _matrix_blob(rng, cv, u, big=True)
    area = blob.area() / (k * k)  # in reference pixels, so counts do not depend on size
    # Embedded particles / cross-sections of fibres: dark specks within the matrix.
    n_specks = int(np.clip(area / 900 * rng.uniform(1.5, 3.5), 3, 120))
    pts = blob.inside_points(rng, n_specks, 0.6)
    half = len(pts) // 2
    _draw_specks(rng, cv, pts[:half, 0], pts[:half, 1], rng.uniform(1.0, 2.0) * max(u, 0.6), (0.35, 0.9))
    _draw_specks(rng, cv, pts[half:, 0], pts[half:, 1], rng.uniform(1.8, 3.2) * max(u, 0.6), (0.3, 0.7))
    # Short fibre fragments buried in the matrix.
    n_frag = int(np.clip(area / 2500 * rng.uniform(0.5, 2.0), 1, 40))
    fp = blob.inside_points(rng, n_frag, 0.7)
    if len(fp):
        _draw_fibres(
            rng, cv, fp, rng.uniform(-np.pi, np.pi, len(fp)), rng.uniform(4, 14, len(fp)) * u,
            1.0 / (10 * u), 4.0 * u, widths=(1.5, 3.0), peak=(0.3, 0.7), anchor_middle=True,
        )


def _matrix_surface(rng: np.random.Generator, cv: _Canvas, u: float, k: float) -> None:
    blob = _matrix_blob(rng, cv, u, big=False)
    n = int(rng.integers(5, 16))
    # Fibres start inside the matrix and leave roughly along the outward normal.
    starts, th = blob.boundary_points(rng, n, (0.45, 0.9))
    angles = th + rng.normal(0, 0.45, size=n)
    lengths = (rng.uniform(0.12, 0.45, size=n) * _REF + 10) * u
    bend = rng.uniform(0.5, 2.0, size=n) / (0.3 * _REF * u)
    _draw_fibres(
        rng, cv, starts, angles, lengths, bend, 0.08 * _REF * u,
        widths=(1.5, 3.5), peak=(0.3, 0.75),
    )
    # A few specks in the matrix too, so "dark specks inside a blob" alone is not decisive.
    pts = blob.inside_points(rng, int(rng.integers(0, 8)), 0.6)
    _draw_specks(rng, cv, pts[:, 0], pts[:, 1], rng.uniform(1.0, 2.5) * max(u, 0.6), (0.3, 0.7))


_DRAW = (_cluster, _fiber, _matrix, _matrix_surface)


# --------------------------------------------------------------------------- public API


def make_image(
    label: str | int,
    size: tuple[int, int] | int = 224,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """One synthetic TEM-like micrograph of class ``label``.

    Parameters
    ----------
    label : a name from :data:`CLASSES` or its index 0..3.
    size : side ``S`` (square) or ``(H, W)``; each side >= 32.
    rng : a numpy ``Generator`` (advanced in place), an int seed, or None (fresh entropy).

    Returns
    -------
    (H, W) uint8 array: bright background (~200-230 before contrast jitter), dark objects.
    """
    cls = _check_label(label)
    h, w = _check_size(size)
    rng = _check_rng(rng)
    k = min(h, w) / _REF
    # Random magnification: object sizes relative to the field vary by ~1.7x across images.
    u = float(rng.uniform(0.75, 1.3)) * k
    cv = _Canvas(h, w)
    _film(rng, cv, u, k)
    _DRAW[cls](rng, cv, u, k)
    # Under-focus Fresnel fringe strength and width (applied inside render's Fourier pass).
    a = cv.render(halo=float(rng.uniform(0.0, 0.5)), halo_sigma=float(rng.uniform(1.5, 3.0)))
    a *= rng.uniform(0.8, 1.3)  # specimen contrast / objective aperture

    # Slow illumination gradient plus slight vignetting of the beam.
    yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    # Python floats, not NumPy float64 scalars, so the image math stays in float32.
    gy, gx = (float(v) for v in rng.uniform(-0.08, 0.08, size=2))
    vig = rng.uniform(0.0, 0.08)
    illum = 1 + gy * yy + gx * xx - vig * (yy * yy + xx * xx) / 2
    bright = rng.uniform(200, 232)
    img = (bright * illum) * np.exp(-a)

    # Random contrast stretch about the background level (detector gain / display).
    gain = rng.uniform(0.85, 1.2)
    img = bright + (img - bright) * gain + rng.uniform(-10, 6)
    # Shot noise (variance ∝ intensity) and read noise, in one Gaussian draw.
    shot = rng.uniform(0.1, 0.6)
    read = rng.uniform(2.0, 7.0)
    sd = np.sqrt(shot * np.maximum(img, 0) + read * read)
    img = img + sd * rng.standard_normal((h, w), dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_dataset(
    n_per_class: int,
    size: tuple[int, int] | int = 224,
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` images of every class, classes interleaved (0, 1, 2, 3, 0, 1, ...).

    Image ``i`` is drawn from ``np.random.default_rng([random_state, i])``, so any
    subset can be regenerated alone and results do not depend on generation order.

    Returns
    -------
    images : (4·n_per_class, H, W) uint8.
    labels : (4·n_per_class,) ``<U`` str array of class names.
    """
    n = _check_count("n_per_class", n_per_class, 1)
    h, w = _check_size(size)
    seed = _check_count("random_state", random_state, 0)
    total = n * len(CLASSES)
    images = np.empty((total, h, w), np.uint8)
    for i in range(total):
        images[i] = make_image(i % len(CLASSES), (h, w), np.random.default_rng([seed, i]))
    labels = np.array([CLASSES[i % len(CLASSES)] for i in range(total)])
    return images, labels


def write_dataset(
    folder: str | os.PathLike[str],
    n_per_class: int,
    size: tuple[int, int] | int = 224,
    random_state: int = 0,
    groups: int = 4,
) -> Path:
    """Write the :func:`make_dataset` images as PNGs plus a ``manifest.csv``; return its path.

    Layout: ``folder/<class>/<class>_<j:04d>.png`` (``j`` = index within the class; the
    pixels equal ``make_dataset(...)[0][4*j + class_index]``). The manifest has columns
    ``path,label,group``: ``path`` relative to the manifest, ``group`` a synthetic
    "source micrograph" id ``<class>/g<k>`` with the class's images split into
    ``min(groups, n_per_class)`` contiguous, near-equal blocks ``g0, g1, ...``, so
    grouped cross-validation can be exercised.
    """
    from PIL import Image

    n = _check_count("n_per_class", n_per_class, 1)
    h, w = _check_size(size)
    seed = _check_count("random_state", random_state, 0)
    # More groups than images would leave some empty: cap at one image per group.
    n_groups = min(_check_count("groups", groups, 1), n)
    root = Path(folder)
    rows: list[tuple[str, str, str]] = []
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(CLASSES):
        for j in range(n):
            i = j * len(CLASSES) + c  # same global index as make_dataset
            img = make_image(c, (h, w), np.random.default_rng([seed, i]))
            rel = f"{name}/{name}_{j:04d}.png"
            Image.fromarray(img).save(root / rel)
            rows.append((rel, name, f"{name}/g{j * n_groups // n}"))
    # Manifest last and atomically: its presence means every listed image is complete.
    manifest = root / "manifest.csv"
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".csv.tmp", dir=root)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            wr = csv.writer(fh)
            wr.writerow(("path", "label", "group"))
            wr.writerows(rows)
        os.replace(tmp, manifest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return manifest
