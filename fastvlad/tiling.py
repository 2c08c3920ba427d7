"""Micrographs as they come off the microscope: one physical scale, the data bar cut, tiles, and
answers per micrograph.

A micrograph is prepared once — read (``microscopy`` finds its pixel size), converted to 0..255
over the WHOLE micrograph (so its tiles share one intensity scaling), its bottom data bar cut
(``crop_bottom``: a number of file pixels, or ``"auto"``), resampled to ``scale_nm_per_px`` nm per
pixel — then cut into ``tile`` (height, width) tiles every ``tile_stride`` pixels. The last row
and column of tiles sit flush with the far edges, so every pixel is covered; a micrograph
smaller than a tile is one tile.

Each tile is an ``images.Derived`` source (``Tile``): the encoder decodes it like an image file,
on its decoding threads, and tiles of one micrograph share one prepared copy (a small cache), so
a micrograph is decoded once per pass, not once per tile. ``plan`` turns a list of micrographs
into tiles and remembers which micrograph each came from; ``Plan.aggregate`` turns tile
probabilities into micrograph answers: the mean of its tiles' probabilities and the share of
its tiles that each class wins.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import checks, config, images, microscopy
from .errors import ImageReadError, InvalidDatasetError
from .model_file import hash_file_into

log = logging.getLogger("fastvlad")

#: Prepared micrographs kept in memory (a 4096² one takes 64 MB as float32): enough for the
#: tiles of the micrographs that the decoding threads work on at once.
CACHE_MICROGRAPHS = 3
#: "auto" data bar: a bar row has at least this share of its pixels at the image's darkest or
#: brightest level (a flat bar with text), the bar is at least this share of the height …
BAR_ROW_EXTREME = 0.6
BAR_MIN_SHARE = 0.02
#: … and at most this share (more is a dark or saturated micrograph, not a data bar).
BAR_MAX_SHARE = 0.4
#: Non-bar rows tolerated inside a bar (anti-aliased logos, a thin grey frame).
BAR_GAP = 3
#: Tiles one micrograph may give. Generous: the largest image allowed (``config.MAX_IMAGE_PIXELS``,
#: a 16384² montage) cut into 224² tiles every 112 pixels gives 146² = 21,316. Far more is a mistake
#: (a 16² tile every pixel of a 306×448 image: 126,003 tiles), and the encoder would hold codes for
#: them all (6 GB for those).
MAX_TILES = 25_000


@dataclass(frozen=True)
class Settings:
    """How micrographs become network inputs before ``Preprocess``: scale, data bar, tiles."""

    scale_nm_per_px: float | None = None  # resample to this many nm per pixel (None: keep each file's)
    missing_scale: str = "raise"  # a file without a pixel size: "raise", or "ignore" (keep its own size)
    tile: tuple[int, int] | None = None  # (height, width) in pixels after resampling
    stride: tuple[int, int] | None = None  # (down, across); default: the tile (no overlap)
    crop_bottom: int | str | None = None  # file rows to cut at the bottom, or "auto"
    resample: str = "bilinear"

    @classmethod
    def of(cls, model: Any) -> Settings:
        """The settings of an estimator (absent parameters: an older model, nothing to do)."""
        checks.tiling(model)
        tile = checks.parse_shape("tile", getattr(model, "tile", None))
        crop = getattr(model, "crop_bottom", None)
        scale = getattr(model, "scale_nm_per_px", None)
        return cls(float(scale) if scale is not None else None, getattr(model, "missing_scale", "raise"), tile,
                   checks.parse_shape("tile_stride", getattr(model, "tile_stride", None)) or tile,
                   crop if crop in (None, checks.CROP_AUTO) else int(crop), model.resample)

    @property
    def active(self) -> bool:
        """True when micrographs are rescaled, cropped or tiled (else sources are used as they are)."""
        return self.scale_nm_per_px is not None or self.tile is not None or self.crop_bottom is not None


# -- sources ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Micrograph:
    """A micrograph file (or array) and its pixel size in nm when known from outside the file (a
    CSV's ``pixel_size_nm`` column): a source for ``FastVLAD`` like a path. The given size wins
    over the file's metadata."""

    source: str | Path | np.ndarray
    pixel_size_nm: float | None = None
    label: str = ""  # how messages and CSVs name it (default: the path as given)

    def __post_init__(self) -> None:
        if not isinstance(self.source, np.ndarray):
            # absolute: a Dask worker's working folder need not be the client's
            object.__setattr__(self, "label", self.label or str(self.source))
            object.__setattr__(self, "source", Path(os.path.abspath(self.source)))
        if self.pixel_size_nm is not None:
            checks.real("pixel_size_nm", self.pixel_size_nm, 0, lo_open=True, hint=f" nm ({self.name})")

    @property
    def name(self) -> str:
        return self.label or images.source_name(self.source)

    def pixels_255(self) -> np.ndarray:
        return images.to_255(images.read(self.source), self.name)

    def probe(self) -> None:
        images.probe(self.source, self.name)

    def digest(self) -> bytes:
        """SHA-256 of the file's bytes (or the array's) and the given pixel size: for the model's
        record of its training data (``model_file.data_sha256``)."""
        return _source_digest(self.source) + repr(self.pixel_size_nm).encode()


@dataclass(frozen=True, eq=False)
class Tile:
    """One tile of a prepared micrograph: ``box`` (top, left, height, width) in its pixels after
    cropping and resampling (None: the whole micrograph); ``factor``: prepared pixels per file pixel."""

    micrograph: Micrograph
    settings: Settings
    box: tuple[int, int, int, int] | None
    index: int = 0
    factor: float = 1.0

    @property
    def name(self) -> str:
        return self.micrograph.name if self.box is None else f"{self.micrograph.name} (tile {self.index})"

    def pixels_255(self) -> np.ndarray:
        values = prepared(self.micrograph, self.settings).values
        if self.box is None:
            return values
        top, left, h, w = self.box
        return np.ascontiguousarray(values[top:top + h, left:left + w])

    def probe(self) -> None:
        self.micrograph.probe()

    def file_box(self) -> tuple[float, float, float, float]:
        """The tile as (top, left, height, width) in the FILE's pixels (before resampling)."""
        if self.box is None:
            return (0.0, 0.0, float("nan"), float("nan"))
        return tuple(v / self.factor for v in self.box)  # type: ignore[return-value]

    def digest(self) -> bytes:
        return self.micrograph.digest() + f"{self.box}{self.settings}".encode()


_DIGESTS: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()


def _file_state(path: Path | str) -> tuple[int, int, int] | None:
    """A file's size, modification time and inode, which change when it is rewritten (None: it
    cannot be read): what keeps what was computed from it, its digest or its prepared pixels, valid."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def _source_digest(source: Path | str | np.ndarray) -> bytes:
    """SHA-256 of a file (cached by path and ``_file_state``: tiles of a micrograph share it) or an array."""
    h = hashlib.sha256()
    if isinstance(source, np.ndarray):
        h.update(f"{source.dtype}{source.shape}".encode())
        h.update(np.ascontiguousarray(source).tobytes())
        return h.digest()
    state = _file_state(source)
    if state is None:
        return hashlib.sha256(b"\0unreadable\0" + str(source).encode()).digest()
    key = (str(source), *state)
    with _LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    hash_file_into(h, source)
    with _LOCK:
        _DIGESTS[key] = h.digest()
        while len(_DIGESTS) > 1024:
            _DIGESTS.popitem(last=False)
    return h.digest()


# -- preparing a micrograph ---------------------------------------------------------------------
@dataclass(frozen=True)
class Prepared:
    """A micrograph ready to cut: ``values`` (H, W[, 3]) float32 0..255, cropped and resampled."""

    values: np.ndarray
    factor: float  # prepared pixels per file pixel (1.0 without a scale)
    crop: int  # rows cut from the bottom, in file pixels
    pixel_size_nm: float | None  # the pixel size used (given, or the file's), None if unknown


def read_micrograph(m: Micrograph) -> tuple[np.ndarray, float | None]:
    """The micrograph's pixels as stored and its pixel size in nm: the given one, else the file's."""
    if isinstance(m.source, np.ndarray):
        return m.source, m.pixel_size_nm
    path = Path(m.source)
    images.probe(path, m.name)  # exists, is a file, the right format, its reader installed
    if microscopy.is_instrument_file(path):
        decoded = microscopy.read_instrument(path)
        return decoded.pixels, m.pixel_size_nm or decoded.pixel_size_nm
    pixels = images.read(path)
    if m.pixel_size_nm is not None:
        return pixels, m.pixel_size_nm
    try:
        return pixels, microscopy.pixel_size_nm(path)
    except Exception as exc:  # metadata is optional: never let it make the pixels unreadable
        log.debug("%s: pixel size unreadable (%s)", path, exc)
        return pixels, None


def prepare(m: Micrograph, settings: Settings) -> Prepared:
    """Read ``m``, scale its values to 0..255, cut its data bar, resample it to the settings' scale.

    ``ImageReadError`` naming the file: unreadable, no pixel size with a scale set (unless
    ``missing_scale="ignore"``), or nothing left after the crop."""
    raw, pixel_size = read_micrograph(m)
    values = images.to_255(raw, m.name)
    crop = _crop_rows(values, settings.crop_bottom, m)
    if crop:
        values = values[: len(values) - crop]
    factor = 1.0
    if settings.scale_nm_per_px is not None:
        if pixel_size is None:
            if settings.missing_scale != "ignore":
                raise ImageReadError(m.name, "has no pixel size in its metadata and none was given, so it cannot be "
                                     f"resampled to {settings.scale_nm_per_px:g} nm per pixel",
                                     "add a pixel_size_nm column to the CSV, or keep such images at their own size "
                                     "with missing_scale='ignore' (CLI: --missing-scale ignore)")
            log.debug("%s: no pixel size; used at its stored size (missing_scale='ignore')", m.name)
        else:
            factor = pixel_size / settings.scale_nm_per_px
            values = images.resize(values, _resampled_size(m.name, values.shape[:2], pixel_size,
                                                           settings.scale_nm_per_px), settings.resample)
    if min(values.shape[:2]) < images.MIN_SIDE:
        raise ImageReadError(m.name, f"only {values.shape[1]}×{values.shape[0]} pixels are left after cropping "
                             f"{crop} rows and resampling by {factor:.3g}", "lower crop_bottom or scale_nm_per_px")
    return Prepared(np.ascontiguousarray(values, dtype=np.float32), factor, crop, pixel_size)


def _resampled_size(name: str, hw: tuple[int, ...], pixel_size: float, scale: float) -> tuple[int, int]:
    """(height, width) of an ``hw`` image of ``pixel_size`` nm pixels resampled to ``scale`` nm per
    pixel; ``ImageReadError`` naming ``name`` when that is over ``config.MAX_IMAGE_PIXELS``."""
    factor = pixel_size / scale
    h, w = hw[0] * factor, hw[1] * factor  # floats: rounding a huge or infinite side would overflow
    if not h * w <= config.MAX_IMAGE_PIXELS:  # `not <=`: also an infinite factor (a subnormal scale)
        raise ImageReadError(name, f"resampling its {pixel_size:g} nm pixels to {scale:g} nm per pixel "
                             f"(×{factor:.4g}) would make it {_count(h)}×{_count(w)} pixels (height × width), over the "
                             f"limit of {config.MAX_IMAGE_PIXELS:,}", "check its pixel size (pixel_size_nm or its "
                             "metadata), raise scale_nm_per_px (CLI: --scale), or raise fastvlad.config.MAX_IMAGE_PIXELS")
    return max(1, round(h)), max(1, round(w))


def _count(n: float) -> str:
    """A number of pixels for a message: 20,000, or 2e+13 where digits would not help."""
    return f"{n:,.0f}" if n < 1e9 else f"{n:.3g}"


def _crop_rows(values: np.ndarray, crop: int | str | None, m: Micrograph) -> int:
    """Rows to cut at the bottom: ``crop``, or for "auto" what the file's metadata says (FEI/Thermo
    SEM TIFFs), else what ``data_bar_rows`` sees."""
    name = m.name
    if crop is None or crop == 0:
        return 0
    if crop == checks.CROP_AUTO:
        said = None if isinstance(m.source, np.ndarray) else microscopy.data_bar_rows(m.source, len(values))
        rows = said if said is not None else data_bar_rows(values)
        if rows:
            log.debug("%s: data bar of %d rows %s and cut", name, rows,
                      "given by its metadata" if said is not None else "detected")
        return rows
    n = int(crop)
    if n >= len(values) - images.MIN_SIDE:
        raise ImageReadError(name, f"crop_bottom={n} leaves fewer than {images.MIN_SIDE} of its {len(values)} rows",
                             "lower crop_bottom")
    return n


def data_bar_rows(values: np.ndarray) -> int:
    """Height in rows of an SEM data bar at the bottom of ``values`` (H, W[, 3]) 0..255, or 0.

    A heuristic: instruments draw the bar as a flat band (black or white) with text and a scale
    bar in the opposite extreme, so most pixels of its rows sit at the image's darkest or
    brightest level, which few rows of a micrograph do. Bars under ``BAR_MIN_SHARE`` or over
    ``BAR_MAX_SHARE`` of the height are not taken (``crop_bottom=N`` cuts exactly N rows)."""
    gray = values.mean(axis=2) if values.ndim == 3 else values
    lo, hi = float(gray.min()), float(gray.max())
    if hi - lo < 1:
        return 0
    extreme = ((gray <= lo + 1) | (gray >= hi - 1)).mean(axis=1) >= BAR_ROW_EXTREME
    height, top, gap = len(gray), len(gray), 0
    for r in range(height - 1, -1, -1):
        if extreme[r]:
            top, gap = r, 0
        else:
            gap += 1
            if gap > BAR_GAP:
                break
    rows = height - top
    if rows < max(2, BAR_MIN_SHARE * height) or rows > BAR_MAX_SHARE * height:
        return 0
    return rows


_LOCK = threading.Lock()
_CACHE: OrderedDict[tuple[Any, ...], tuple[Any, Prepared]] = OrderedDict()
_INFLIGHT: dict[tuple[Any, ...], threading.Lock] = {}


def _cache_key(m: Micrograph, settings: Settings) -> tuple[Any, ...]:
    """What makes a prepared micrograph still valid: a file's path with its size and modification
    time (a microscope that rewrites one file between predictions must not get the first file's
    answers), or an array's ``Micrograph`` itself (each call wraps a bare array anew, so an array
    refilled in place between calls is read again); then the pixel size and the settings."""
    if isinstance(m.source, np.ndarray):
        return (id(m), m.pixel_size_nm, settings)
    # None when it cannot be read: preparing it raises the reader's own error
    return (str(m.source), _file_state(m.source), m.pixel_size_nm, settings)


def prepared(m: Micrograph, settings: Settings) -> Prepared:
    """``prepare(m, settings)``, shared by the tiles of ``m``: the last ``CACHE_MICROGRAPHS``
    micrographs stay in memory; two threads asking for the same one prepare it once."""
    key = _cache_key(m, settings)

    def cached() -> Prepared | None:  # under _LOCK
        hit = _CACHE.get(key)
        # an array's entry holds its Micrograph, so that id cannot have been reused by another
        if hit is None or (isinstance(m.source, np.ndarray) and hit[0] is not m):
            return None
        _CACHE.move_to_end(key)
        return hit[1]

    with _LOCK:
        result = cached()
        if result is not None:
            return result
        lock = _INFLIGHT.setdefault(key, threading.Lock())
    with lock:
        with _LOCK:
            result = cached()
        if result is not None:
            return result
        try:
            result = prepare(m, settings)
        finally:
            with _LOCK:
                _INFLIGHT.pop(key, None)
        with _LOCK:
            _CACHE[key] = (m, result)
            while len(_CACHE) > CACHE_MICROGRAPHS:
                _CACHE.popitem(last=False)
    return result


def clear_cache() -> None:
    """Forget prepared micrographs (files changed on disk, or to free memory)."""
    with _LOCK:
        _CACHE.clear()


# -- tiles -------------------------------------------------------------------------------------------
def boxes(height: int, width: int, tile: tuple[int, int],
          stride: tuple[int, int] | None = None) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of every tile of a ``height`` × ``width`` image, row by row.

    Tiles start every ``stride`` pixels (default: the tile, no overlap); a last tile flush with
    the far edge covers what the stride leaves, so ``ceil((H - th) / sh) + 1`` rows of tiles.
    A side shorter than the tile gives one tile of that side."""
    th, tw = min(tile[0], height), min(tile[1], width)
    sh, sw = stride or tile
    return [(top, left, th, tw) for top in _starts(height, th, sh) for left in _starts(width, tw, sw)]


def tile_count(height: int, width: int, tile: tuple[int, int], stride: tuple[int, int] | None = None) -> int:
    """``len(boxes(height, width, tile, stride))``, without making them."""
    th, tw = min(tile[0], height), min(tile[1], width)
    sh, sw = stride or tile
    return (-(-(height - th) // sh) + 1) * (-(-(width - tw) // sw) + 1)


def _tiles_of(m: Micrograph, p: Prepared, settings: Settings) -> list[tuple[int, int, int, int] | None]:
    """The boxes of ``m``'s tiles (``[None]``: untiled, the whole micrograph); ``ImageReadError``
    naming it when it would give more than ``MAX_TILES``."""
    if settings.tile is None:
        return [None]
    h, w = p.values.shape[:2]
    n = tile_count(h, w, settings.tile, settings.stride)
    if n > MAX_TILES:
        (th, tw), (sh, sw) = settings.tile, settings.stride or settings.tile
        raise ImageReadError(m.name, f"tiles of {th}×{tw} every {sh}×{sw} pixels would be {n:,} tiles of its {h}×{w} "
                             f"pixels (height × width), over the limit of {MAX_TILES:,} per micrograph",
                             "use a larger tile or tile_stride (CLI: --tile, --tile-stride); a saved model "
                             "cuts the tiles it was trained with, so retrain it, or its file was edited")
    return list(boxes(h, w, settings.tile, settings.stride))


def _starts(n: int, t: int, s: int) -> list[int]:
    starts = list(range(0, n - t + 1, s))
    if starts[-1] + t < n:
        starts.append(n - t)
    return starts


@dataclass
class Aggregate:
    """Answers per micrograph from its tiles' probabilities."""

    proba: np.ndarray  # (n, C) float32 mean of the readable tiles' probabilities; NaN rows: none readable
    share: np.ndarray  # (n, C) float32 share of the readable tiles that each class wins; NaN rows likewise
    tiles: np.ndarray  # (n,) int64 tiles planned
    readable: np.ndarray  # (n,) int64 tiles with a probability


@dataclass
class Plan:
    """The tiles of a list of micrographs: ``sources`` (one per tile), ``owner`` (the position of
    each tile's micrograph in that list), and the micrographs that could not be read at all."""

    sources: list[images.ImageSource]
    owner: np.ndarray  # (n_tiles,) int64
    n_inputs: int
    failed: list[tuple[int, ImageReadError]] = field(default_factory=list)

    def aggregate(self, proba: np.ndarray) -> Aggregate:
        """Tile probabilities ``(n_tiles, C)`` (NaN rows: unreadable tiles) → per micrograph."""
        n, c = self.n_inputs, proba.shape[1]
        ok = ~np.isnan(proba).any(axis=1)
        sums = np.zeros((n, c))
        wins = np.zeros((n, c))
        np.add.at(sums, self.owner[ok], proba[ok])
        np.add.at(wins, (self.owner[ok], proba[ok].argmax(axis=1)), 1)
        readable = np.bincount(self.owner[ok], minlength=n)
        tiles = np.bincount(self.owner, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (sums / readable[:, None]).astype(np.float32)
            share = (wins / readable[:, None]).astype(np.float32)
        return Aggregate(mean, share, tiles.astype(np.int64), readable.astype(np.int64))

    def failures(self, names: Sequence[str] | None = None) -> list[tuple[str, str]]:
        """(name, reason) of every micrograph that gave no tile."""
        return [(names[i] if names is not None else e.source, str(e)) for i, e in self.failed]


def plan(X: Sequence[images.ImageSource], settings: Settings, skip_errors: bool = False) -> Plan:
    """The tiles of every micrograph of ``X`` (paths, arrays, ``Micrograph``\\ s; a ``Tile`` is
    kept as it is). Each micrograph is read once here, to know its size after cropping and
    resampling. An unreadable one raises ``ImageReadError``, or with ``skip_errors`` is listed
    in ``Plan.failed`` and gives no tile."""
    sources: list[images.ImageSource] = []
    owner: list[int] = []
    failed: list[tuple[int, ImageReadError]] = []
    for i, src in enumerate(X):
        if isinstance(src, Tile):
            sources.append(src)
            owner.append(i)
            continue
        m = src if isinstance(src, Micrograph) else Micrograph(src, label=images.source_name(src, i))  # type: ignore[arg-type]
        try:
            p = prepared(m, settings)
            cut = _tiles_of(m, p, settings)
        except ImageReadError as exc:
            if not skip_errors:
                raise
            failed.append((i, exc))
            continue
        for j, box in enumerate(cut):
            sources.append(Tile(m, settings, box, j, p.factor))
            owner.append(i)
    return Plan(sources, np.asarray(owner, dtype=np.int64), len(X), failed)


def plan_for(model: Any, X: Sequence[images.ImageSource]) -> Plan | None:
    """``plan(X)`` with a model's settings and error policy, or None when the model neither
    rescales, crops nor tiles (and ``X`` holds no tiles): then ``X`` is used as it is. With
    ``on_error="raise"`` every micrograph's header is checked first, so all unreadable files
    are named in one error."""
    settings = Settings.of(model)
    if not settings.active:
        return None
    skip = model.on_error == "skip"
    if not skip:
        checks.readable([x for x in X if not isinstance(x, Tile)])
    return plan(X, settings, skip)


def training_set(model: Any, X: Sequence[images.ImageSource],
                 y: np.ndarray) -> tuple[Plan | None, Sequence[images.ImageSource], np.ndarray]:
    """What a fit of ``model`` trains on: ``plan_for(model, X)`` (or None), its inputs (every tile,
    or ``X`` as it is) and their labels ``(n_inputs,)`` (each tile its micrograph's ``y``). Raises
    ``InvalidDatasetError`` when none of ``X`` could be read."""
    plan = plan_for(model, X)
    if plan is None:
        return None, X, y
    if not plan.sources:
        raise InvalidDatasetError(f"none of the {len(X)} images could be read (e.g. {plan.failures()[0][1]})")
    return plan, plan.sources, y[plan.owner]


def sources_of(paths: Sequence[Path], pixel_size_nm: np.ndarray | None = None) -> list[images.ImageSource]:
    """A dataset's images as sources: paths, or ``Micrograph``\\ s where a pixel size is given (NaN: none)."""
    if pixel_size_nm is None:
        return [str(p) for p in paths]
    return [Micrograph(str(p), float(px)) if np.isfinite(px) else str(p) for p, px in zip(paths, pixel_size_nm)]
