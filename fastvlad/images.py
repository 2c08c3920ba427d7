"""Image loading: decode, convert to 3-channel 0..255, resize, caffe normalisation, batch.

Conversion rules (documented in README, tested in tests/test_images.py):
- gray → three equal channels; RGBA/LA → alpha dropped; palette, CMYK, YCbCr → RGB;
  EXIF orientation applied; a multi-page TIFF uses its first page (with a warning).
- uint8 as is; other unsigned integers scaled by 255 / dtype max (16-bit TIFF: /257);
  signed integers and floats outside [0, 1] are min–max stretched to 0..255;
  floats within [0, 1] are multiplied by 255. NaN or inf is an error.
"""

from __future__ import annotations

import logging
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from . import config
from .errors import ImageReadError, ParameterError
from .reference import CAFFE_MEAN_BGR

log = logging.getLogger("fastvlad")

ImageSource = Union[str, Path, np.ndarray]
RESAMPLE = ("bilinear", "nearest", "bicubic", "lanczos")
#: Smallest side VGG16's five taps accept (four 2× poolings leave at least one pixel).
MIN_SIDE = 16


def _open_pil(path: Path):  # type: ignore[no-untyped-def]
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = None  # our own limit below gives a clearer message
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > config.MAX_IMAGE_PIXELS:
                raise ImageReadError(path, f"{w}×{h} pixels exceeds the limit of {config.MAX_IMAGE_PIXELS}",
                                     "raise fastvlad.config.MAX_IMAGE_PIXELS if the image is genuine")
            if getattr(im, "n_frames", 1) > 1:
                log.warning("%s: %d pages, using the first", path, im.n_frames)
            im.load()
            im = ImageOps.exif_transpose(im)
            return _pil_to_array(im, path)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder, not an image") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except Exception as exc:  # PIL raises many types for broken files
        kind = "empty file" if path.is_file() and path.stat().st_size == 0 else f"cannot decode ({exc})"
        raise ImageReadError(path, kind, "check that the file is a complete PNG, JPEG or TIFF image") from None


def _pil_to_array(im, path: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    mode = im.mode
    if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "RGBX", "LA", "1"):
        im = im.convert("RGB" if mode not in ("LA", "1") else "L")
    elif mode.startswith("I;16"):
        return np.asarray(im, dtype=np.uint16)
    return np.asarray(im)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) > 1:
                log.warning("%s: %d pages, using the first", path, len(tif.pages))
            page = tif.pages[0]
            n_pixels = int(np.prod(page.shape[:2]))
            if n_pixels > config.MAX_IMAGE_PIXELS:
                raise ImageReadError(path, f"{n_pixels} pixels exceeds the limit of {config.MAX_IMAGE_PIXELS}")
            arr = page.asarray()
    except ImageReadError:
        raise
    except Exception:
        return _open_pil(path)  # tifffile is stricter than PIL about some variants
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar RGB
    return arr


def read(source: ImageSource) -> np.ndarray:
    """Decode a file (or take an array) without changing its values: (H, W) or (H, W, C)."""
    if isinstance(source, np.ndarray):
        return source
    path = Path(source)
    if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
        return _read_tiff(path)
    return _open_pil(path)


def to_rgb255(arr: np.ndarray, name: object = "array") -> np.ndarray:
    """Any supported image array → (H, W, 3) float32 in 0..255 (rules in the module docstring)."""
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ImageReadError(name, f"dtype {arr.dtype} is not a numeric image type")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        arr = arr[..., : arr.shape[2] - 1]  # drop alpha
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ImageReadError(name, f"shape {arr.shape} is not an image; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if min(arr.shape[:2]) < 1:
        raise ImageReadError(name, f"shape {arr.shape} has no pixels")
    values = _scale_to_255(arr, name)
    return np.repeat(values[..., None], 3, axis=2) if values.ndim == 2 else values


def _scale_to_255(arr: np.ndarray, name: object) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32)
    if arr.dtype == bool:
        return arr.astype(np.float32) * 255
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        return (arr.astype(np.float64) * (255.0 / np.iinfo(arr.dtype).max)).astype(np.float32)
    a = arr.astype(np.float64)
    if not np.isfinite(a).all():
        raise ImageReadError(name, "contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if np.issubdtype(arr.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return (a * 255).astype(np.float32)
    if hi == lo:
        return np.full(a.shape, 127.5 if not 0 <= lo <= 255 else lo, dtype=np.float32)
    return ((a - lo) * (255.0 / (hi - lo))).astype(np.float32)


def resize(rgb: np.ndarray, size: tuple[int, int] | None, resample: str = "bilinear") -> np.ndarray:
    """(H, W, 3) float32 → (height, width, 3) float32 with Pillow; ``None`` keeps the size."""
    if size is None or tuple(rgb.shape[:2]) == tuple(size):
        return rgb
    from PIL import Image

    filt = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
    chans = [Image.fromarray(np.ascontiguousarray(rgb[..., c])).resize((size[1], size[0]), filt[resample]) for c in range(3)]
    return np.stack([np.asarray(ch, dtype=np.float32) for ch in chans], axis=2)


def caffe(rgb: np.ndarray) -> np.ndarray:
    """Keras ``vgg16.preprocess_input`` caffe mode: (H, W, 3) RGB → (3, H, W) BGR minus the ImageNet mean."""
    return np.ascontiguousarray((rgb[..., ::-1] - CAFFE_MEAN_BGR).transpose(2, 0, 1), dtype=np.float32)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes network input: size ``(H, W)`` or None (native), resampling filter."""

    size: tuple[int, int] | None = (224, 224)
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE:
            raise ParameterError(f"resample={self.resample!r} is unknown; use one of {RESAMPLE}")
        if self.size is not None and min(self.size) < MIN_SIDE:
            raise ParameterError(f"image_size={self.size} is too small; each side must be ≥ {MIN_SIDE}")

    def __call__(self, source: ImageSource, name: object = None) -> np.ndarray:
        """One image → (3, H, W) float32 network input."""
        label = name if name is not None else (source if not isinstance(source, np.ndarray) else "array")
        rgb = to_rgb255(read(source), label)
        if self.size is None and min(rgb.shape[:2]) < MIN_SIDE:
            raise ImageReadError(label, f"{rgb.shape[1]}×{rgb.shape[0]} pixels is smaller than the {MIN_SIDE}×{MIN_SIDE} the network needs")
        return caffe(resize(rgb, self.size, self.resample))


@dataclass
class Batch:
    """Network inputs of some images: ``indices`` into the source list, ``pixels`` (n, 3, H, W)."""

    indices: list[int]
    pixels: np.ndarray
    failed: list[tuple[int, ImageReadError]] = field(default_factory=list)


def iter_batches(sources: Sequence[ImageSource], prep: Preprocess, batch_size: int,
                 skip_errors: bool = False, prefetch: int = 2) -> Iterator[Batch]:
    """Decode ``sources`` on a background thread, ``batch_size`` at a time, while the caller computes.

    Images of one batch share a shape; with native sizes (``prep.size=None``) a batch is cut
    where the shape changes. A bad image raises ``ImageReadError`` at its position, or with
    ``skip_errors`` is reported in ``Batch.failed`` and left out.
    """
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in _decode_batches(sources, prep, batch_size, skip_errors):
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

    worker = threading.Thread(target=produce, name="fastvlad-decode", daemon=True)
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


def _decode_batches(sources: Sequence[ImageSource], prep: Preprocess, batch_size: int,
                    skip_errors: bool) -> Iterator[Batch]:
    indices: list[int] = []
    pixels: list[np.ndarray] = []
    failed: list[tuple[int, ImageReadError]] = []
    for i, src in enumerate(sources):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = prep(src, name=src if not isinstance(src, np.ndarray) else f"array #{i}")
        except ImageReadError as exc:
            if not skip_errors:
                raise
            failed.append((i, exc))
            continue
        if pixels and (len(pixels) == batch_size or img.shape != pixels[0].shape):
            yield Batch(indices, np.stack(pixels), failed)
            indices, pixels, failed = [], [], []
        indices.append(i)
        pixels.append(img)
    if pixels or failed:
        yield Batch(indices, np.stack(pixels) if pixels else np.empty((0, 3, 1, 1), np.float32), failed)
