"""Intensity normalisation of a micrograph before the CNN, and the acquisition changes it must survive.

Material series differ in brightness and contrast (detector gain, offset, beam current): a model
that sees raw gray levels learns the series, not the fibres. Each normalisation below maps an
image to 0..255 in a way that does not depend on a global gain (> 0) or offset of its gray levels:
``stretch`` exactly (its percentiles move with the image), ``equalize`` and ``clahe`` up to the
quantisation of their histograms. They are scikit-image's ``exposure`` functions.

Images arrive as ``images.to_255`` makes them: float32 0..255, ``(H, W)`` or ``(H, W, C)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from .errors import MissingDependencyError, ParameterError

#: Percentiles of the ``stretch`` normalisation: mapped to 0 and 255, what lies beyond is clipped.
STRETCH_PERCENTILES = (1.0, 99.0)


def _flat(values: np.ndarray) -> bool:
    return float(values.max()) - float(values.min()) <= 1e-6 * max(1.0, float(np.abs(values).max()))


def stretch(values: np.ndarray) -> np.ndarray:
    """The 1st–99th percentiles of the image's gray levels → 0..255 (clipped beyond).

    An 8-bit image (whole gray levels 0..255, as most detectors write) takes its percentiles from
    its histogram and the map as a table of its 256 levels: the same bits as mapping every pixel,
    in half its time (``benchmarks/stretch_8bit.py``), on the decoding thread of every image."""
    levels = eight_bit(values)
    if levels is None:
        return stretch_pixelwise(values)
    lo, hi = level_percentiles(levels, STRETCH_PERCENTILES)
    return stretched_between(np.arange(256, dtype=values.dtype), float(lo), float(hi))[levels]


def stretch_pixelwise(values: np.ndarray) -> np.ndarray:
    """``stretch`` of any image: NumPy's percentiles of every pixel, every pixel mapped."""
    lo, hi = np.percentile(values, STRETCH_PERCENTILES)
    return stretched_between(values, float(lo), float(hi))


def eight_bit(values: np.ndarray) -> np.ndarray | None:
    """``values`` as uint8 when every one is a whole number 0..255 (an 8-bit image), else None."""
    with np.errstate(invalid="ignore"):  # NaN or out-of-range levels: not 8-bit, caught just below
        levels = values.astype(np.uint8)
    return levels if values.size and np.array_equal(levels, values) else None


def level_percentiles(levels: np.ndarray, q: tuple[float, ...]) -> np.ndarray:
    """``np.percentile`` of 8-bit gray levels (any shape, uint8) read from their histogram, to
    NumPy's bits: ``(len(q),)`` float64, without NumPy's partition of every pixel."""
    below = np.cumsum(np.bincount(levels.ravel(), minlength=256))  # below[v]: pixels at levels ≤ v
    n = levels.size
    # NumPy's own steps from here: the virtual index (n − 1)·q/100 between two order statistics,
    # their interpolation by np.quantile on each pair (which takes its fraction g as it is: (2 − 1)·g).
    at = (n - 1) * np.true_divide(np.asarray(q, dtype=np.float64), 100)
    first = np.floor(at).astype(np.int64)
    pairs = np.searchsorted(below, np.stack([first, np.minimum(first + 1, n - 1)]), side="right")
    return np.diagonal(np.quantile(pairs.astype(np.float64), at - first, axis=0)).copy()


def stretched_between(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Gray levels ``lo``..``hi`` → 0..255, clipped beyond (float32); a flat range → 128."""
    from skimage import exposure

    if hi - lo <= 1e-6 * max(1.0, abs(float(hi))):
        return np.full_like(values, 128.0)
    return exposure.rescale_intensity(values, in_range=(float(lo), float(hi)), out_range=(0.0, 255.0)).astype(
        np.float32)


def equalize(values: np.ndarray) -> np.ndarray:
    """Histogram equalisation over the image's own range (256 bins) → 0..255."""
    from skimage import exposure

    if _flat(values):
        return np.full_like(values, 128.0)
    return (exposure.equalize_hist(values, nbins=256) * 255.0).astype(np.float32)


def clahe(values: np.ndarray) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (scikit-image defaults: tiles of 1/8 of each
    side, clip limit 0.01) of the min–max stretched image → 0..255; colour channels one by one."""
    from skimage import exposure

    if _flat(values):
        return np.full_like(values, 128.0)
    unit = (values - values.min()) / (values.max() - values.min())
    if unit.ndim == 3:
        out = np.stack([exposure.equalize_adapthist(unit[..., c]) for c in range(unit.shape[2])], axis=2)
    else:
        out = exposure.equalize_adapthist(unit)
    return (out * 255.0).astype(np.float32)


#: Name → function ``(H, W[, C]) float32 0..255 → same``. ``none`` passes the image through.
NORMALIZATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda values: values, "stretch": stretch, "equalize": equalize, "clahe": clahe}


def normalize(values: np.ndarray, method: str) -> np.ndarray:
    """``values`` normalised by ``method`` (one of ``NORMALIZATIONS``; its library checked once, by
    ``check``, before any image)."""
    return NORMALIZATIONS[_known(method)](values)


def _known(method: object) -> str:
    if not isinstance(method, str) or method not in NORMALIZATIONS:
        raise ParameterError(f"normalize={method!r} is unknown; use one of {tuple(NORMALIZATIONS)}")
    return method


def check(method: object) -> str:
    """``method`` if it is a known normalisation whose library is installed (checked before any image)."""
    name = _known(method)
    if name != "none":
        try:
            import skimage.exposure  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError(
                f"normalize={method!r} needs scikit-image, which cannot be imported ({exc}); install it with "
                "'pip install scikit-image' (a dependency of fastvlad: reinstall with 'pip install -e .'), or set "
                "normalize='none'") from None
    return name


# -- acquisition changes: the shift check and the augmentation at fit -------------------------------
def gain(values: np.ndarray, factor: float) -> np.ndarray:
    """A detector gain: gray levels × ``factor``, saturating at 255."""
    return np.clip(values * np.float32(factor), 0, 255)


def offset(values: np.ndarray, levels: float) -> np.ndarray:
    """A black-level offset of ``levels`` gray levels, clipped to 0..255."""
    return np.clip(values + np.float32(levels), 0, 255)


def gamma(values: np.ndarray, exponent: float) -> np.ndarray:
    """255·(v/255)^exponent: the mid-tones moved, black and white kept. Computed in float64 and
    rounded to float32 once: NumPy's float32 ``power`` differs in the last bit between its SIMD
    levels (AVX2, AVX-512), so the same copy would differ between machines."""
    return (255.0 * (np.clip(values, 0, 255).astype(np.float64) / 255.0) ** exponent).astype(np.float32)


def blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """A slightly defocused image: a Gaussian of ``sigma`` pixels over the rows and columns."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(values, sigma=(sigma, sigma) + (0,) * (values.ndim - 2)).astype(np.float32)


def noise(values: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Gaussian noise of ``sigma`` gray levels (seeded), clipped to 0..255."""
    rng = np.random.default_rng(seed)
    return np.clip(values + rng.normal(0.0, sigma, values.shape).astype(np.float32), 0, 255)


#: The acquisition changes of the shift check (``evaluate --shift``): name → transform of one
#: image (float32 0..255, before normalisation). A model whose answers hold on new samples should
#: give the same label under each.
SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gain ×0.8": lambda v: gain(v, 0.8), "gain ×1.2": lambda v: gain(v, 1.2),
    "offset −20": lambda v: offset(v, -20), "offset +20": lambda v: offset(v, 20),
    "gamma 0.8": lambda v: gamma(v, 0.8), "gamma 1.25": lambda v: gamma(v, 1.25),
    "blur σ=1 px": lambda v: blur(v, 1.0), "noise σ=5": lambda v: noise(v, 5.0),
}


def one_pixel(values: np.ndarray) -> np.ndarray:
    """``values`` with one gray level more (less, if white) at the top-left pixel: the image all but
    unchanged, but with ``points="per_image"`` its points are drawn anew."""
    out = np.array(values, dtype=np.float32)
    out[0, 0] += np.where(out[0, 0] < 255, 1, -1).astype(np.float32)
    return out


#: The shift check's control, reported beside the changes but not one of them: what drawing an
#: image's points anew flips on its own (every change above also re-draws them, unless the points
#: are shared by every image of a size).
CONTROLS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"control: one pixel ±1": one_pixel}


def magnified(values: np.ndarray, z: float) -> np.ndarray:
    """The centre ``1/z`` of an image ``(H, W)`` or ``(H, W, C)`` on each side (``z`` ≥ 1; at least
    1 px): once the encoder brings it to its input size, the field as ``z`` times the magnification
    would show it in the same number of pixels (fibres ``z`` times wider, ``z²`` less of the field).
    Only a higher magnification can be made from an image; a lower one needs field it lacks."""
    if not z >= 1:
        raise ParameterError(f"magnification {z}: give 1 or more (a lower one needs field the image lacks)")
    h, w = values.shape[:2]
    ch, cw = max(1, round(h / z)), max(1, round(w / z))
    top, left = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(values[top:top + ch, left:left + cw])


def magnifications(levels: tuple[float, ...]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Shift-check changes, name → ``magnified`` at each of ``levels`` (e.g. "magnification ×1.5")."""
    return {f"magnification ×{z:g}": functools.partial(magnified, z=z) for z in levels}


#: The shift check's magnifications (``evaluate --shift-magnification``), reported beside the
#: acquisition changes but not among them: a new series at another magnification. Where the files
#: carry a pixel size, ``scale_nm_per_px`` takes magnification out instead.
MAGNIFICATIONS = magnifications((1.25, 1.5, 2.0))


def dihedral(values: np.ndarray, op: int) -> np.ndarray:
    """One of the flips that keep an image's shape: 0 none, 1 left–right, 2 up–down, 3 both (180°)."""
    if op & 1:
        values = values[:, ::-1]
    if op & 2:
        values = values[::-1]
    return np.ascontiguousarray(values)


def jitter_seeded(values: np.ndarray, seed: tuple[int, ...]) -> np.ndarray:
    """``jitter`` with a generator seeded by ``seed`` (the model's seed, the image, the copy)."""
    return jitter(values, np.random.default_rng(list(seed)))


def jitter(values: np.ndarray, rng: np.random.Generator,
           gamma_range: tuple[float, float] = (0.8, 1.25)) -> np.ndarray:
    """A random flip and a random acquisition: gain in [0.8, 1.2], offset in [−20, 20] gray levels,
    gamma in ``gamma_range`` (log-uniform), in that order."""
    values = dihedral(values, int(rng.integers(4)))
    values = offset(gain(values, rng.uniform(0.8, 1.2)), rng.uniform(-20.0, 20.0))
    lo, hi = gamma_range
    return gamma(values, math.exp(rng.uniform(math.log(lo), math.log(hi))))
