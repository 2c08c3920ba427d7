"""Micrographs in their instruments' formats, and their pixel size in nanometres.

- Gatan DigitalMicrograph ``.dm3``/``.dm4``, FEI/Thermo TIA ``.ser``/``.emi`` and Velox or
  NCEM ``.emd`` are read by RosettaSciIO (the reader library of HyperSpy), installed with the
  ``microscopy`` extra (``pip install 'fastvlad[microscopy]'``); without it such a file is an
  ``ImageReadError`` that says so. A file holding several images (a Velox EMD with HAADF and
  DF detectors, a DM stack) gives its first 2-D image.
- TIFF pixels are read as before (``images.py``, tifffile); their pixel size comes from
  OME-XML (``PhysicalSizeX``), FEI/Thermo SEM metadata (``[Scan] PixelWidth``), Zeiss SEM
  metadata (``AP_PIXEL_SIZE``) or ImageJ's (``unit`` and the resolution tag), all through
  tifffile, with no extra; with RosettaSciIO installed, the other SEM/TEM TIFF flavours it knows
  (TVIPS, Olympus SIS, JEOL, Hamamatsu) too.
- Other formats (PNG, JPEG, BMP…) carry no physical pixel size: ``None``.

An instrument file meets the decompression-bomb guard (``config.MAX_IMAGE_PIXELS``) as a PNG or
TIFF does, from its headers, before any pixel is decoded. tifffile's log lines about damaged files
are kept off while fastvlad reads (``quiet_tifffile``): the ``ImageReadError`` says it once.

Nothing here converts values (``images.to_255`` does that); this module only finds pixels and
their size, and imports no more of fastvlad than ``config`` and ``errors`` (``images`` imports it).
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import config
from .errors import ImageReadError

log = logging.getLogger("fastvlad")

INSTALL = "pip install 'fastvlad[microscopy]'"
#: Formats read by RosettaSciIO: suffix → (what it is, RosettaSciIO plugin module).
INSTRUMENT_FORMATS = {
    ".dm3": ("a Gatan DigitalMicrograph DM3 file", "rsciio.digitalmicrograph"),
    ".dm4": ("a Gatan DigitalMicrograph DM4 file", "rsciio.digitalmicrograph"),
    ".ser": ("an FEI/Thermo TIA SER file", "rsciio.tia"),
    ".emi": ("an FEI/Thermo TIA EMI file", "rsciio.tia"),
    ".emd": ("an EMD file (Velox or NCEM)", "rsciio.emd"),
}
#: First bytes of each format, checked by ``probe`` without the extra: a mislabelled file is
#: named as such, not blamed on a missing library.
_MAGIC = {".dm3": (b"\x00\x00\x00\x03",), ".dm4": (b"\x00\x00\x00\x04",), ".ser": (b"II\x97\x01",),
          ".emd": (b"\x89HDF\r\n\x1a\n",), ".emi": (b"",)}
#: Length units → nanometres (RosettaSciIO, OME, ImageJ and SEM metadata spell them variously).
_TO_NM = {"nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "nanometre": 1.0, "µm": 1e3, "μm": 1e3, "um": 1e3,
          "micron": 1e3, "microns": 1e3, "micrometer": 1e3, "micrometre": 1e3, "mm": 1e6, "millimeter": 1e6,
          "cm": 1e7, "m": 1e9, "meter": 1e9, "meters": 1e9, "metre": 1e9, "å": 0.1, "a": 0.1, "angstrom": 0.1,
          "ångström": 0.1, "pm": 1e-3, "picometer": 1e-3}


@dataclass(frozen=True)
class Decoded:
    """A decoded micrograph: pixels as stored, (H, W) or (H, W, 3), and its pixel size in nm
    (None when the file does not say)."""

    pixels: np.ndarray
    pixel_size_nm: float | None


def is_instrument_file(path: str | Path) -> bool:
    """True for the suffixes RosettaSciIO reads (``INSTRUMENT_FORMATS``)."""
    return Path(path).suffix.lower() in INSTRUMENT_FORMATS


def to_nm(value: Any, unit: Any) -> float | None:
    """A length ``value`` in ``unit`` as nanometres; None for pixels, reciprocal or unknown units."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    u = str(unit or "").strip().lower().replace("\\u00b5", "µ")
    factor = _TO_NM.get(u)
    if factor is None or not math.isfinite(v) or v <= 0:
        return None
    return v * factor


def _rsciio(path: Path) -> Any:
    """The RosettaSciIO plugin module for ``path``, or an ``ImageReadError`` saying what to install."""
    import importlib

    what, module = INSTRUMENT_FORMATS[path.suffix.lower()]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImageReadError(path, f"{what} needs RosettaSciIO, which is not installed ({exc})",
                             f"install it with {INSTALL}") from None


def probe_instrument(path: Path) -> None:
    """Header check of an instrument file: its magic bytes, and that its reader is installed."""
    what = INSTRUMENT_FORMATS[path.suffix.lower()][0]
    magics = _MAGIC[path.suffix.lower()]
    with open(path, "rb") as f:
        head = f.read(8)
    if not any(head.startswith(m) for m in magics):
        raise ImageReadError(path, f"not {what} (its first bytes are {head[:4]!r})",
                             "check the file's suffix, or re-export it from the instrument's software")
    _rsciio(path)


def read_instrument(path: Path) -> Decoded:
    """The first 2-D image of a DM3/DM4/SER/EMI/EMD file and its pixel size, via RosettaSciIO.

    Raises ``ImageReadError`` naming the file: RosettaSciIO missing, more pixels than
    ``config.MAX_IMAGE_PIXELS`` (checked before decoding), no image in the file (spectra only),
    or a reader error."""
    plugin = _rsciio(path)
    _check_size(path, _declared_shapes(plugin, path))
    signals = _file_reader(plugin, path, lazy=False)
    for signal in signals:
        image = _first_image(signal)
        if image is not None:
            return image
    kinds = ", ".join(f"{np.ndim(s.get('data'))}-D" for s in signals) or "nothing"
    raise ImageReadError(path, f"holds no 2-D image ({kinds} data: spectra or empty)",
                         "give a file with an image, or export the image from the instrument's software")


def _file_reader(plugin: Any, path: Path, lazy: bool) -> list[Any]:
    """RosettaSciIO's signals of ``path`` (``lazy``: dask arrays, nothing decoded), or an ``ImageReadError``."""
    try:
        return plugin.file_reader(str(path), lazy=lazy)
    except ImageReadError:
        raise
    except Exception as exc:  # the readers raise many types for damaged or unsupported files
        raise ImageReadError(path, f"RosettaSciIO cannot read it ({type(exc).__name__}: {exc})",
                             "check that the file is complete, or re-export it from the instrument's software") from None


def _declared_shapes(plugin: Any, path: Path) -> list[tuple[int, ...]]:
    """The shape of every array a full read of ``path`` decodes, from its headers alone."""
    if path.suffix.lower() == ".emd":
        # RosettaSciIO's lazy EMD reader fails on unchunked datasets (dask wants chunks), so ask HDF5.
        return _hdf5_data_shapes(path)
    return [tuple(int(n) for n in np.shape(s["data"])) for s in _file_reader(plugin, path, lazy=True)]


def _hdf5_data_shapes(path: Path) -> list[tuple[int, ...]]:
    """Shapes of the datasets named ``data`` in an HDF5 file (Velox ``Data``, NCEM ``data``): the
    arrays RosettaSciIO's EMD reader decodes, whatever their compression or allocated size."""
    import h5py  # RosettaSciIO's EMD reader needs it: installed whenever that reader is

    shapes: list[tuple[int, ...]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and name.rsplit("/", 1)[-1].lower() == "data":
            shapes.append(tuple(int(n) for n in obj.shape))

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError… for damaged files
        raise ImageReadError(path, f"cannot read it as HDF5 ({type(exc).__name__}: {exc})",
                             "check that the file is complete, or re-export it from the instrument's software") from None
    return shapes


def _check_size(path: Path, shapes: list[tuple[int, ...]]) -> None:
    """The decompression-bomb guard of ``images`` for the arrays of an instrument file: their values
    together, every frame of a stack and every detector's image, since a full read decodes them all."""
    total = sum(math.prod(shape) for shape in shapes)
    if total > config.MAX_IMAGE_PIXELS:
        raise ImageReadError(path, f"{_describe(shapes)} pixels exceeds the limit of {config.MAX_IMAGE_PIXELS} "
                             "(decompression-bomb guard)", "raise fastvlad.config.MAX_IMAGE_PIXELS if the image is genuine")


def _describe(shapes: list[tuple[int, ...]]) -> str:
    """``17000×17000`` or ``100×2048×2048 + 512×512 + 2 more``: the largest arrays, their axes in the
    reader's order (RosettaSciIO puts frames first, Velox's HDF5 last), length-1 axes left out."""
    largest = sorted(shapes, key=math.prod, reverse=True)
    sizes = ["×".join(str(n) for n in shape if n != 1) or "1" for shape in largest[:3]]
    return " + ".join(sizes) + (f" + {len(largest) - 3} more" if len(largest) > 3 else "")


def _first_image(signal: dict[str, Any]) -> Decoded | None:
    """A RosettaSciIO signal's image, or None when it is not one (spectra, complex data).

    RosettaSciIO puts navigation axes (a stack, a series) first and the signal axes last; an
    image has two signal axes, and a stack gives its first frame."""
    data = np.asarray(signal["data"])
    image_axes = [a for a in signal.get("axes", []) if not a.get("navigate", False)]
    if len(image_axes) != 2:
        return None
    dims = 2
    if data.dtype.names:  # DigitalMicrograph RGB(A): a structured array
        data = np.stack([data[c] for c in ("R", "G", "B") if c in data.dtype.names], axis=-1)
        dims = 3
    elif data.dtype.kind == "c" or data.ndim < 2:
        return None
    while data.ndim > dims:
        data = data[0]
    return Decoded(data, _axes_pixel_size(image_axes))


def _axes_pixel_size(axes: list[dict[str, Any]]) -> float | None:
    """The x axis's scale in nm (the last axis), or None when uncalibrated (pixels, 1/nm…)."""
    if not axes:
        return None
    return to_nm(axes[-1].get("scale"), axes[-1].get("units"))


# -- TIFF metadata -----------------------------------------------------------------------------
#: True while fastvlad reads a file in this thread or task (``quiet_tifffile``).
_QUIET_TIFFFILE: ContextVar[bool] = ContextVar("fastvlad_quiet_tifffile", default=False)


class _DuringOurReads(logging.Filter):
    """Keeps tifffile's records raised inside ``quiet_tifffile`` off the handlers (to fastvlad's debug log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _QUIET_TIFFFILE.get():
            return True
        log.debug("tifffile: %s", record.getMessage())
        return False


# A filter keyed by a context variable rather than the logger's level: the level is process-wide, so
# setting and restoring it around reads would race between decoding threads and mute the user's own tifffile calls.
logging.getLogger("tifffile").addFilter(_DuringOurReads())


@contextmanager
def quiet_tifffile() -> Iterator[None]:
    """tifffile's log lines (``<TiffTag.fromfile> raised …`` on damaged files) stay off during the block;
    the caller reports a file it cannot read as an ``ImageReadError``. Also a decorator."""
    token = _QUIET_TIFFFILE.set(True)
    try:
        yield
    finally:
        _QUIET_TIFFFILE.reset(token)


@quiet_tifffile()
def tiff_pixel_size_nm(path: Path) -> float | None:
    """Pixel size of a TIFF from OME-XML, FEI, Zeiss or ImageJ metadata (tifffile), else from
    RosettaSciIO's TIFF reader when installed; None when none says."""
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception:
        return None  # not a TIFF tifffile knows: images.read decides whether it is an image at all
    with tif:
        for reader in (_ome, _fei, _zeiss, _imagej):
            try:
                size = reader(tif)
            except Exception as exc:  # malformed metadata must not make the pixels unreadable
                log.debug("%s: %s metadata unreadable (%s)", path, reader.__name__.strip("_"), exc)
                continue
            if size is not None:
                return size
    return _rsciio_tiff(path)


def _ome(tif: Any) -> float | None:
    if not tif.is_ome or not tif.ome_metadata:
        return None
    root = ET.fromstring(tif.ome_metadata)
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    # The OME schema's default unit is the micrometre.
    return to_nm(pixels.attrib["PhysicalSizeX"], pixels.attrib.get("PhysicalSizeXUnit", "µm"))


def _fei(tif: Any) -> float | None:
    meta = tif.fei_metadata
    if not meta:
        return None
    scan = meta.get("Scan") or meta.get("EScan") or {}
    return to_nm(scan.get("PixelWidth"), "m")  # FEI/Thermo write SI units (metres)


def _zeiss(tif: Any) -> float | None:
    meta = tif.sem_metadata
    if not meta or "ap_pixel_size" not in meta:
        return None
    entry = meta["ap_pixel_size"]  # ('Pixel Size', 2.5, 'nm')
    return to_nm(entry[1], entry[2] if len(entry) > 2 else "")


def _imagej(tif: Any) -> float | None:
    meta = tif.imagej_metadata
    if not meta or "unit" not in meta:
        return None
    tag = tif.pages[0].tags.get("XResolution")
    if tag is None:
        return None
    num, den = tag.value
    if not num:
        return None
    return to_nm(den / num, meta["unit"])  # XResolution: pixels per unit


def _rsciio_tiff(path: Path) -> float | None:
    try:
        from rsciio.tiff import file_reader
    except ImportError:
        return None
    try:
        signals = file_reader(str(path), lazy=True)
    except Exception as exc:
        log.debug("%s: RosettaSciIO's TIFF reader failed (%s)", path, exc)
        return None
    axes = [a for a in signals[0].get("axes", []) if int(a.get("size", 2)) != 1] if signals else []
    return _axes_pixel_size(axes[-2:])


@quiet_tifffile()
def data_bar_rows(path: str | Path, height: int) -> int | None:
    """Rows of data bar below the image of a ``height``-row SEM TIFF whose metadata says so (FEI/Thermo:
    ``[Image] ResolutionY`` is the image without its bar), else None."""
    import tifffile

    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            meta = tif.fei_metadata
        rows = int(height) - int(meta["Image"]["ResolutionY"]) if meta else None
    except Exception:  # no or odd metadata: the caller falls back on looking at the pixels
        return None
    return rows if rows is not None and 0 <= rows < height else None


def pixel_size_nm(path: str | Path) -> float | None:
    """The pixel size in nm that ``path``'s metadata gives, or None (header only where it can)."""
    p = Path(path)
    if is_instrument_file(p):
        return read_instrument(p).pixel_size_nm
    if p.suffix.lower() in (".tif", ".tiff"):
        return tiff_pixel_size_nm(p)
    return None

