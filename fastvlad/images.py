"""Image loading: decode, convert to 3-channel 0..255, resize, caffe normalisation, batch.

Conversion rules (documented in README, tested in tests/test_images.py):
- gray → three equal channels; RGBA/LA → alpha dropped; palette, CMYK, YCbCr → RGB; an RGB
  image whose three channels are equal is read as gray (the same codes as the gray file);
  EXIF orientation (and the TIFF Orientation tag) applied; a multi-page TIFF or animated
  GIF uses its first page (with a warning).
- uint8 as is; bool → 0/255; other unsigned integers scaled by 255 / dtype max (16-bit:
  /257); signed integers and floats outside [0, 1] are min–max stretched to 0..255;
  floats within [0, 1] are multiplied by 255. NaN or inf is an error.
- Arrays: (H, W), (H, W, 1), (H, W, 2) gray + alpha, (H, W, 3) RGB, (H, W, 4) RGBA; any
  other shape, and complex, object, string or date dtypes, are errors.

Anything that goes wrong while turning one source into network input is an
``ImageReadError`` naming the source, so a run can skip it (``on_error="skip"``).
"""

from __future__ import annotations

import contextvars
import errno
import functools
import logging
import math
import os
import queue
import re
import stat
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Union, runtime_checkable

import numpy as np

from . import config, intensity, microscopy
from .errors import (
    FastVLADError,
    ImageReadError,
    MissingDependencyError,
    ParameterError,
    drop_skip_advice,
    skip_advice,
)

log = logging.getLogger("fastvlad")


@runtime_checkable
class Derived(Protocol):
    """A source computed from a file or array: a tile of a micrograph, or a micrograph resampled to
    a physical scale (``fastvlad.tiling``). It converts its own values to 0..255, because a tile
    must share its micrograph's intensity scaling rather than be stretched on its own."""

    @property
    def name(self) -> str:
        """How messages and CSVs name it."""
        ...

    def pixels_255(self) -> np.ndarray:
        """(H, W) or (H, W, 3) float32 in 0..255; ``ImageReadError`` naming the file on failure."""
        ...

    def probe(self) -> None:
        """The cheap header check of the underlying file (``images.probe``)."""
        ...


ImageSource = Union[str, Path, np.ndarray, Derived]


@dataclass(frozen=True)
class Transformed:
    """An image as read, then changed by ``transform`` (float32 0..255 → same) before the
    normalisation and resize: an augmented copy at fit, a test-time copy, a shift-check change."""

    source: ImageSource | Transformed  # a user's image, or one changed already (a flip of a shift)
    transform: Callable[[np.ndarray], np.ndarray]
    tag: str  # what was done, for names in messages
    # Set for an augmented copy: its points are drawn from the seed and this key, not from its
    # pixels, whose float32 jitter differs in the last bit between CPU SIMD levels (NumPy's
    # ``power``), and a last bit must not redraw every point of a training copy.
    points_key: tuple[int, ...] | None = None

    def __str__(self) -> str:
        return f"{source_name(self.source)} [{self.tag}]"


#: What the encoder reads: a user's image, or one changed on the way (``Transformed``).
AnySource = Union[ImageSource, Transformed]
#: An image's random pixels: network input (3, H, W) float32 and its source → (S, 2) int32.
PointsOf = Callable[[np.ndarray, AnySource], np.ndarray]


def augmented(sources: Sequence[AnySource], positions: Sequence[int] | np.ndarray, copies: int,
              seed: int) -> list[Transformed]:
    """``copies`` randomly flipped and re-exposed copies (``intensity.jitter``) of the sources at
    ``positions``, copy after copy: entry ``c·len(positions) + j`` is copy c of ``positions[j]``.
    Each copy's jitter and points are seeded by (``seed``, its position, c), so a copy does not
    depend on the others, nor its points on the last bits of its pixels."""
    return [Transformed(sources[int(i)], functools.partial(intensity.jitter_seeded, seed=(seed, int(i), c)),
                        f"augmented {c + 1}", points_key=(AUGMENTED_POINTS, int(i), c))
            for c in range(copies) for i in positions]


#: The first entry of an augmented copy's ``points_key``: keeps its draws apart from other keyed ones.
AUGMENTED_POINTS = 0x41554731  # "AUG1"


def flipped(sources: Sequence[AnySource], op: int) -> list[Transformed]:
    """Every source flipped by ``intensity.dihedral(op)`` (test-time augmentation)."""
    return [Transformed(s, functools.partial(intensity.dihedral, op=op), f"flip {op}") for s in sources]


#: The resampling filters ``resize`` knows (Pillow's).
RESAMPLE = ("bilinear", "nearest", "bicubic", "lanczos")
#: Smallest side VGG16's five taps accept (four 2× poolings leave at least one pixel).
MIN_SIDE = 16
TIFF_SUFFIXES = (".tif", ".tiff")


def _unreadable() -> str:
    """The fix for an image that cannot be decoded (with the skip option where the work has one)."""
    return ("check that the file is a complete image (PNG, JPEG, TIFF, BMP, GIF or WebP) and re-export it"
            + skip_advice(", or skip unreadable images with on_error='skip' (CLI: --on-error skip)"))


_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float
_PIL_DIRECT = ("1", "L", "RGB", "I", "F")  # modes NumPy reads as they are
_warned_multipage = threading.Event()


# -- sources → arrays -----------------------------------------------------------------------
def source_name(source: object, index: int | None = None) -> str:
    """How errors name a source: its path, or ``array #i``."""
    if isinstance(source, np.ndarray):
        return "array" if index is None else f"array #{index}"
    if isinstance(source, Derived):
        return source.name
    return str(source)


def read(source: ImageSource) -> np.ndarray:
    """Decode a file (or take an array) without changing its values: (H, W) or (H, W, C)."""
    if isinstance(source, np.ndarray):
        return source
    if isinstance(source, Derived):  # its own 0..255 values, as 8 bits for display (explain, thumbnails)
        return np.clip(np.rint(source.pixels_255()), 0, 255).astype(np.uint8)
    path = _existing_file(source)
    with _decoding(path):
        if microscopy.is_instrument_file(path):  # DM3/DM4, TIA, EMD: RosettaSciIO (the microscopy extra)
            return microscopy.read_instrument(path).pixels
        if path.suffix.lower() in TIFF_SUFFIXES:
            return _read_tiff(path)
        return _read_pil(path)


def probe(source: ImageSource, name: object = None) -> None:
    """Cheap check that ``source`` can be read, from its header only (no pixel decoding).

    Finds missing, empty, non-image, oversized and unsupported files and bad array
    shapes/dtypes in well under a millisecond each; a file damaged further in is only
    found when it is decoded. Raises ``ImageReadError``.
    """
    if isinstance(source, np.ndarray):
        _check_array(source, name if name is not None else "array")
        return
    if isinstance(source, Derived):
        source.probe()
        return
    path = _existing_file(source)
    with _decoding(path):
        if microscopy.is_instrument_file(path):
            microscopy.probe_instrument(path)
            return
        if path.suffix.lower() in TIFF_SUFFIXES and _probe_tiff(path):
            return
        with _open_pil(path) as im:
            _check_pixels(path, *im.size)


def _open_tiff(path: Path) -> Any:
    """``path`` opened by tifffile; None when it is another format named .tif (Pillow decides), and
    an ``ImageReadError`` when it starts as a TIFF but tifffile cannot parse it: Pillow would warn
    and read past a damaged tag as pixels (an ImageLength of 1000 values made 65539 rows)."""
    import tifffile

    try:
        return tifffile.TiffFile(path)
    except Exception as exc:
        if _tiff_magic(path):
            raise ImageReadError(path, f"cannot decode (a damaged TIFF header: {type(exc).__name__}: {exc})",
                                 _unreadable()) from None
        return None


def _probe_tiff(path: Path) -> bool:
    """Header check by tifffile; False when the file is not a TIFF (then Pillow decides)."""
    tif = _open_tiff(path)
    if tif is None:
        return False
    with tif:
        page: Any = tif.pages[0]
        _check_pixels(path, page.imagewidth, page.imagelength, max(1, page.imagedepth))
        _check_dtype(page.dtype, path)
    return True


def _existing_file(source: object) -> Path:
    """``source`` as a Path to an existing, non-empty regular file, or an ``ImageReadError``."""
    if not isinstance(source, (str, os.PathLike)):
        raise ImageReadError(source_name(source), f"a {type(source).__name__} is not an image",
                             "give a file path or a NumPy array")
    path = Path(source)
    try:
        st = path.stat()
    except ValueError as exc:  # e.g. an embedded NUL byte
        raise ImageReadError(path, f"not a valid path ({exc})") from None
    except FileNotFoundError:
        broken = " (a symbolic link to a missing file)" if path.is_symlink() else ""
        raise ImageReadError(path, f"file not found{broken}",
                             "check the path (paths in a CSV are relative to the CSV's folder)") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied", "make the file and its folders readable") from None
    except OSError as exc:
        problem = "symbolic link loop" if exc.errno == errno.ELOOP else f"cannot access it ({exc.strerror})"
        raise ImageReadError(path, problem, "fix or remove this path") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageReadError(path, "is a folder, not an image", "point at the image files inside it")
    if not stat.S_ISREG(st.st_mode):  # reading a FIFO or a device could block or never end
        raise ImageReadError(path, "not a regular file (a pipe, socket or device)", "copy the image to a file")
    if st.st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)", _unreadable())
    return path


@contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """Turn anything a decoder raises for one file into an ``ImageReadError`` naming it, the
    decoder's own log lines about it kept off (``microscopy.quiet_tifffile``)."""
    try:
        with microscopy.quiet_tifffile():
            yield
    except FastVLADError:
        raise
    except PermissionError:
        raise ImageReadError(path, "permission denied", "make the file readable") from None
    except MemoryError:
        raise ImageReadError(path, "not enough memory to decode it",
                             "free memory or lower fastvlad.config.MAX_IMAGE_PIXELS") from None
    except Exception as exc:  # Pillow and tifffile raise many types for broken files
        raise ImageReadError(path, f"cannot decode ({str(exc) or type(exc).__name__})", _unreadable()) from None


def _check_pixels(path: object, width: int, height: int, depth: int = 1) -> None:
    """The decompression-bomb guard, before any pixel is decoded."""
    if width < 1 or height < 1:
        raise ImageReadError(path, f"{width}×{height} pixels: the image is empty", _unreadable())
    if width * height * depth > config.MAX_IMAGE_PIXELS:
        raise _over_the_limit(path, f"{width}×{height}{f'×{depth}' if depth > 1 else ''} pixels")


def _over_the_limit(path: object, size: str) -> ImageReadError:
    """The decompression-bomb guard's refusal of an image of ``size`` (in words)."""
    return ImageReadError(path, f"{size} exceeds the limit of {config.MAX_IMAGE_PIXELS} (decompression-bomb guard)",
                          "raise fastvlad.config.MAX_IMAGE_PIXELS if the image is genuine")


def _note_pages(path: Path, n: int) -> None:
    # Once per process at warning level: a folder of 10,000 stacks should not print 10,000 lines.
    level = logging.DEBUG if _warned_multipage.is_set() else logging.WARNING
    _warned_multipage.set()
    log.log(level, "%s: %d pages, using the first (further multi-page files are logged at debug level)", path, n)


def _open_pil(path: Path) -> Any:
    from PIL import Image

    # Pillow checks its own limit (a warning above it, an error at twice it) as it opens and loads;
    # ours (_check_pixels) is the one that names the file. Pillow's is process-wide, so it is raised
    # only as far as ours — never switched off, nor lowered, for the application fastvlad runs in.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < config.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = config.MAX_IMAGE_PIXELS
    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit: refused before our own check
        counted = re.search(r"\((\d+) pixels\)", str(exc))
        raise _over_the_limit(path, f"{int(counted.group(1))} pixels" if counted else "its size") from None


def _read_pil(path: Path) -> np.ndarray:
    from PIL import ImageOps

    with _open_pil(path) as im:
        _check_pixels(path, *im.size)
        if getattr(im, "n_frames", 1) > 1:
            _note_pages(path, im.n_frames)
        im.load()
        try:
            im = ImageOps.exif_transpose(im)
        except Exception as exc:  # broken EXIF must not make the pixels unreadable
            log.warning("%s: EXIF orientation unreadable (%s); using the image as stored", path, exc)
        return _pil_to_array(im)


def _pil_to_array(im: Any) -> np.ndarray:
    """A Pillow image → (H, W) or (H, W, 3) array with the mode's own dtype; alpha dropped."""
    mode = im.mode
    if mode in _PIL_DIRECT or mode.startswith("I;16"):
        return np.asarray(im)
    return np.asarray(im.convert("L" if mode in ("LA", "La") else "RGB"))


def _read_tiff(path: Path) -> np.ndarray:
    tif = _open_tiff(path)
    if tif is None:
        return _read_pil(path)  # another format named .tif (mislabelled): let Pillow try
    with tif:
        if len(tif.pages) > 1:
            _note_pages(path, len(tif.pages))
        page: Any = tif.pages[0]
        _check_pixels(path, page.imagewidth, page.imagelength, max(1, page.imagedepth))
        try:
            arr = page.asarray()
        except Exception:  # e.g. a compression without its codec installed: Pillow may have it
            return _read_pil(path)
        orientation = page.tags.get(274)
    if arr.ndim == 3 and page.planarconfig == 2 and arr.shape[0] == page.samplesperpixel:
        arr = np.moveaxis(arr, 0, -1)  # planar (separate) samples → channels last
    return orient(arr, int(orientation.value) if orientation is not None else 1)


def _tiff_magic(path: Path) -> bool:
    """Whether ``path`` starts as a TIFF or BigTIFF does (byte order, then 42 or 43)."""
    with open(path, "rb") as f:
        return f.read(4) in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF/TIFF orientation (1–8) to (H, W[, C]): the image as a viewer shows it."""
    ops = {
        2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1), 8: lambda a: np.rot90(a, 1),
    }  # fmt: skip
    return ops[orientation](arr) if orientation in ops and arr.ndim >= 2 else arr


# -- arrays → 0..255 RGB ---------------------------------------------------------------------
def _check_dtype(dtype: np.dtype | None, name: object) -> None:
    if dtype is not None and np.dtype(dtype).kind not in _NUMERIC_KINDS:
        raise ImageReadError(name, f"dtype {dtype} is not an image type",
                             "use a real-valued array: uint8, uint16, another integer type, float or bool")


def _check_array(arr: np.ndarray, name: object) -> np.ndarray:
    """Shape and dtype checks; returns (H, W) or (H, W, 3), alpha and single channels dropped."""
    _check_dtype(arr.dtype, name)
    if arr.ndim == 3 and arr.shape[2] in (1, 2, 4):
        arr = arr[..., : max(1, arr.shape[2] - 1)]  # gray, gray + alpha, RGB + alpha
        arr = arr[..., 0] if arr.shape[2] == 1 else arr
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        hint = ("move the channel axis last (np.moveaxis(a, 0, -1))" if arr.ndim == 3 and arr.shape[0] in (1, 2, 3, 4)
                else "give one image per entry")
        raise ImageReadError(name, f"shape {arr.shape} is not an image; expected (H, W), (H, W, 1), (H, W, 2), "
                             "(H, W, 3) or (H, W, 4)", hint)
    if min(arr.shape[:2]) < 1:
        raise ImageReadError(name, f"shape {arr.shape} has no pixels")
    if arr.ndim == 3 and equal_channels(arr):
        return arr[..., 0]  # a gray picture stored as RGB: the same codes as stored as gray
    return arr


def equal_channels(arr: np.ndarray) -> bool:
    """Whether the three channels of ``(H, W, 3)`` are equal: the stretch's percentiles over H·W·3
    repeated levels interpolate between other order statistics than over the H·W gray ones."""
    return bool(np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]))


def to_rgb255(arr: np.ndarray, name: object = "array") -> np.ndarray:
    """Any supported image array → (H, W, 3) float32 in 0..255 (rules in the module docstring)."""
    return _three_channels(to_255(arr, name))


def to_255(arr: np.ndarray, name: object = "array") -> np.ndarray:
    """``to_rgb255`` without copying gray into three channels: (H, W) or (H, W, 3) float32."""
    return _scale_to_255(_check_array(np.asarray(arr), name), name)


def _three_channels(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2) if values.ndim == 2 else values


def _scale_to_255(arr: np.ndarray, name: object) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32)
    if arr.dtype.kind == "b":
        return arr.astype(np.float32) * 255
    if arr.dtype.kind == "u":
        return (arr.astype(np.float64) * (255.0 / np.iinfo(arr.dtype).max)).astype(np.float32)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ImageReadError(name, f"contains {bad} NaN or infinite value(s)",
                             "replace them (e.g. np.nan_to_num) or drop this image")
    lo, hi = arr.min(), arr.max()
    if arr.dtype.kind == "f" and lo >= 0 and hi <= 1:
        return (arr.astype(np.float64) * 255).astype(np.float32)
    if hi == lo:
        return np.full(arr.shape, float(lo) if 0 <= lo <= 255 else 127.5, dtype=np.float32)
    if arr.dtype.itemsize > 8:  # long double: bring it into float64's range first
        arr = arr / max(abs(lo), abs(hi))
    # Divide by the largest magnitude first: hi − lo overflows near the dtype's limits, and
    # 255 / (hi − lo) is infinite for a span of subnormals.
    a = arr.astype(np.float64)
    a /= max(abs(a.min()), abs(a.max()))
    lo_u, hi_u = a.min(), a.max()
    if hi_u == lo_u:
        return np.full(arr.shape, 127.5, dtype=np.float32)
    a -= lo_u  # in place: a big image has no room for temporaries
    a /= hi_u - lo_u
    a *= 255.0
    return np.clip(a, 0.0, 255.0, out=a).astype(np.float32)  # clip: rounding can step just outside


# -- network input ---------------------------------------------------------------------------
def resize(img: np.ndarray, size: tuple[int, int] | None, resample: str = "bilinear") -> np.ndarray:
    """(H, W[, C]) float32 → (height, width[, C]) float32 with Pillow, channel by channel;
    ``None`` keeps the size."""
    if size is None or tuple(img.shape[:2]) == tuple(size):
        return img
    from PIL import Image

    r = Image.Resampling
    filt = {"bilinear": r.BILINEAR, "nearest": r.NEAREST, "bicubic": r.BICUBIC, "lanczos": r.LANCZOS}[resample]
    planes = [img] if img.ndim == 2 else [img[..., c] for c in range(img.shape[2])]
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(p)).resize((size[1], size[0]), filt), dtype=np.float32)
           for p in planes]
    return out[0] if img.ndim == 2 else np.stack(out, axis=2)


#: Keras ``vgg16.preprocess_input`` (caffe mode): the ImageNet mean per channel, in BGR order.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def caffe(rgb: np.ndarray) -> np.ndarray:
    """Keras ``vgg16.preprocess_input`` caffe mode: (H, W, 3) RGB → (3, H, W) BGR minus the ImageNet mean."""
    return np.ascontiguousarray((rgb[..., ::-1] - CAFFE_MEAN_BGR).transpose(2, 0, 1), dtype=np.float32)


def input_scale(image_hw: tuple[int, ...], input_hw: tuple[int, ...]) -> float:
    """How much larger the network input shows an image's features than its pixels: the linear
    factor of the resize, √(input area / image area) (1.0 at native size; 112/306 for a 306×448 tile
    brought to 112×164)."""
    return math.sqrt(input_hw[0] * input_hw[1] / (image_hw[0] * image_hw[1]))


def zoomed_size(size: tuple[int, int], factor: float) -> tuple[int, int]:
    """The input size ``(H, W)`` times ``factor``, rounded (``zoom``: an image at another magnification)."""
    return round(size[0] * factor), round(size[1] * factor)


def check_size(size: object) -> tuple[int, int] | None:
    """``image_size``: None (native), one side, or (height, width); each side ≥ MIN_SIDE."""
    if size is None:
        return None
    sides: list[Any] = []
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        sides = [size]
    elif isinstance(size, (tuple, list, np.ndarray)):
        sides = list(size)
    ok = len(sides) in (1, 2) and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in sides)
    if not ok or min(sides) < MIN_SIDE:
        raise ParameterError(f"image_size={size!r}: give one side or (height, width) as integers ≥ {MIN_SIDE}, "
                             "or None for the native size (the paper: 224)")
    h, w = int(sides[0]), int(sides[-1])
    if h * w > config.MAX_INPUT_PIXELS:
        raise ParameterError(f"image_size={size!r}: {h}×{w} exceeds the network input limit of "
                             f"{config.MAX_INPUT_PIXELS} pixels (the taps alone take 488 bytes per pixel); use a "
                             "smaller size or raise fastvlad.config.MAX_INPUT_PIXELS")
    return (h, w)


def _raw_levels(source: AnySource, label: object) -> np.ndarray:
    """The image as float32 0..255 ``(H, W[, C])``, with the changes of a ``Transformed`` source applied."""
    if isinstance(source, Transformed):
        return source.transform(_raw_levels(source.source, label))
    if isinstance(source, Derived):  # a tile keeps its micrograph's conversion to 0..255
        return source.pixels_255()
    return to_255(read(source), label)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes network input: intensity normalisation (``intensity.NORMALIZATIONS``,
    at the image's own resolution), size ``(H, W)`` or None (native), resampling filter. With
    ``keep_aspect`` the size's shorter side is the image's shorter side and the longer one keeps
    the image's proportions (a 306×448 tile at (112, 112) becomes 112×164)."""

    size: tuple[int, int] | None = (224, 224)
    resample: str = "bilinear"
    normalize: str = "none"
    keep_aspect: bool = False

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE:
            raise ParameterError(f"resample={self.resample!r} is unknown; use one of {RESAMPLE}")
        object.__setattr__(self, "size", check_size(self.size))
        intensity.check(self.normalize)

    def __call__(self, source: AnySource, name: object = None) -> np.ndarray:
        """One image → (3, H, W) float32 network input; any failure is an ``ImageReadError``."""
        return self.prepare(source, name)[0]

    def prepare(self, source: AnySource, name: object = None) -> tuple[np.ndarray, float]:
        """One image → (3, H, W) float32 network input and its ``input_scale`` (how many input pixels
        one of the image's pixels becomes); any failure is an ``ImageReadError``."""
        label = name if name is not None else source_name(source)
        try:
            values = self.gray_levels(source, label)  # gray stays one channel until resized: 3× less work
            size = self.input_size(values.shape[:2], label)
            pixels = caffe(_three_channels(resize(values, size, self.resample)))
            return pixels, input_scale(values.shape[:2], pixels.shape[1:])
        except FastVLADError:
            raise
        except MemoryError:
            raise ImageReadError(label, "not enough memory to convert it", "use a smaller image_size") from None
        except ImportError as exc:  # the installation's fault, not the image's: never skipped as unreadable
            raise MissingDependencyError(f"converting {label} needs a package that cannot be imported ({exc}); "
                                         "reinstall fastvlad with its dependencies ('pip install -e .')") from None
        except Exception as exc:  # a decoder or converter failing in a way we did not foresee
            raise ImageReadError(label, f"cannot be converted ({type(exc).__name__}: {exc})", _unreadable()) from None

    def target(self, hw: tuple[int, ...]) -> tuple[int, int] | None:
        """The network input size of an image of ``hw`` pixels."""
        if self.size is None or not self.keep_aspect:
            return self.size
        short, (h, w) = min(self.size), hw[:2]
        return (short, max(short, round(short * w / h))) if h <= w else (max(short, round(short * h / w)), short)

    def gray_levels(self, source: AnySource, label: object) -> np.ndarray:
        """The image as float32 0..255 ``(H, W[, C])``, transformed (a ``Transformed`` source) and normalised."""
        return intensity.normalize(_raw_levels(source, label), self.normalize)

    def input_size(self, hw: tuple[int, ...], label: object) -> tuple[int, int] | None:
        """``target(hw)``, checked against the network input limit: ``ImageReadError`` naming ``label``
        when the image is too small at native size, or its input too large."""
        size = self.target(hw)
        if size is None:
            self._check_native(hw, label)
        elif size[0] * size[1] > config.MAX_INPUT_PIXELS:  # only with keep_aspect: a fixed size is checked at init
            raise ImageReadError(label, f"its aspect ratio gives an input of {size[0]}×{size[1]} pixels (height × "
                                 f"width), over the network input limit of {config.MAX_INPUT_PIXELS} (the image is "
                                 f"{hw[0]}×{hw[1]})", "crop it or use aspect='squash' (CLI: --aspect squash), or "
                                 "raise fastvlad.config.MAX_INPUT_PIXELS")
        return size

    def _check_native(self, hw: tuple[int, ...], label: object) -> None:
        h, w = hw[:2]
        if min(h, w) < MIN_SIDE:
            raise ImageReadError(label, f"{w}×{h} pixels is smaller than the {MIN_SIDE}×{MIN_SIDE} the network "
                                 "needs at native size", "set image_size (e.g. 224) to resize it")
        if h * w > config.MAX_INPUT_PIXELS:
            raise ImageReadError(label, f"{w}×{h} pixels at native size exceeds the network input limit of "
                                 f"{config.MAX_INPUT_PIXELS}", "set image_size, or raise fastvlad.config.MAX_INPUT_PIXELS")


# -- batches ---------------------------------------------------------------------------------
@dataclass
class Batch:
    """Network inputs of some images: ``indices`` into the source list, ``pixels`` (n, 3, H, W),
    each image's ``input_scale``, and, when ``iter_batches`` was given ``points_of``, every image's
    points (n, S, 2) int32."""

    indices: list[int]
    pixels: np.ndarray
    failed: list[tuple[int, ImageReadError]] = field(default_factory=list)
    points: np.ndarray | None = None
    scales: list[float] = field(default_factory=list)  # each image's ``input_scale``

    @property
    def grid(self) -> tuple[int, int]:
        """The pixel grid (H, W) the points lie in."""
        return int(self.pixels.shape[2]), int(self.pixels.shape[3])


def iter_batches(sources: Sequence[AnySource], prep: Preprocess, batch_size: int,
                 skip_errors: bool = False, prefetch: int = 2, threads: int = 1,
                 points_of: PointsOf | None = None) -> Iterator[Batch]:
    """Decode ``sources`` on background threads, ``batch_size`` at a time, while the caller computes.

    Images of one batch share a shape; with native sizes (``prep.size=None``) a batch is cut
    where the shape changes. A bad image raises ``ImageReadError`` at its position, or with
    ``skip_errors`` is reported in ``Batch.failed`` and left out. ``threads`` images are decoded
    at once (``Backend.decode_threads``); batches are the same whatever the number.
    ``points_of`` (pixels (3, H, W) and their source → (S, 2)) runs on the decoding threads too,
    off the thread that drives the CNN.
    """
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    # The decoding threads run in a copy of the caller's context (what its errors say), without
    # the advice to skip unreadable images while skipping them.
    context = contextvars.copy_context()
    if skip_errors:
        context.run(drop_skip_advice)

    def produce() -> None:
        try:
            for batch in _decode_batches(sources, prep, batch_size, skip_errors, threads, points_of):
                while not stop.is_set():
                    try:
                        q.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(None)
        except BaseException as exc:  # hand the error to the consumer thread
            q.put(exc)

    worker = threading.Thread(target=context.run, args=(produce,), name="fastvlad-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


_Decoded = Union[tuple[np.ndarray, Optional[np.ndarray], float], ImageReadError]


def _decoded(sources: Sequence[AnySource], prep: Preprocess, chunk: int, threads: int,
             points_of: PointsOf | None = None) -> Iterator[tuple[int, _Decoded]]:
    """(position, (pixels, points, input scale) or why it could not be read) of every source, in order;
    ``threads`` threads decode ``chunk`` sources at a time (Pillow and NumPy release the GIL)."""

    def one(i: int) -> _Decoded:
        try:
            pixels, scale = prep.prepare(sources[i], name=source_name(sources[i], i))
        except ImageReadError as exc:
            return exc
        return pixels, points_of(pixels, sources[i]) if points_of is not None else None, scale

    pool = ThreadPoolExecutor(threads, thread_name_prefix="fastvlad-decode") if threads > 1 else None
    context = contextvars.copy_context()  # each pooled decode runs in a copy of this thread's

    def pooled(i: int) -> _Decoded:
        return context.copy().run(one, i)

    try:
        for start in range(0, len(sources), chunk):
            positions = range(start, min(start + chunk, len(sources)))
            # Entered by this thread alone, once per chunk: catch_warnings swaps process-wide
            # state, and threads entering and leaving it at once could leave the filters changed.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                decoded = list(pool.map(pooled, positions)) if pool else [one(i) for i in positions]
            yield from zip(positions, decoded)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _decode_batches(sources: Sequence[AnySource], prep: Preprocess, batch_size: int, skip_errors: bool,
                    threads: int = 1, points_of: PointsOf | None = None) -> Iterator[Batch]:
    indices: list[int] = []
    pixels: list[np.ndarray] = []
    points: list[np.ndarray] = []
    scales: list[float] = []
    failed: list[tuple[int, ImageReadError]] = []

    def batch() -> Batch:
        stacked = np.stack(pixels) if pixels else np.empty((0, 3, 1, 1), np.float32)
        return Batch(indices, stacked, failed, np.stack(points) if points_of is not None and points else None, scales)

    for i, item in _decoded(sources, prep, batch_size, threads, points_of):
        if isinstance(item, ImageReadError):
            if not skip_errors:
                raise item
            failed.append((i, item))
            continue
        img, img_points, scale = item
        if pixels and (len(pixels) == batch_size or img.shape != pixels[0].shape):
            yield batch()
            indices, pixels, points, scales, failed = [], [], [], [], []
        indices.append(i)
        pixels.append(img)
        scales.append(scale)
        if img_points is not None:
            points.append(img_points)
    if pixels or failed:
        yield batch()
