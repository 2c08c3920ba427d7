"""Small micrographs in instrument formats, written by the tests themselves (no downloads).

RosettaSciIO reads DM3/DM4, TIA SER and Velox EMD but writes none of them, so these writers
follow the layouts its readers parse (rsciio/digitalmicrograph, rsciio/tia, rsciio/emd):

- ``write_dm``: a DigitalMicrograph 3 or 4 file, one image, calibrated x/y axes;
- ``write_ser``: a TIA series file holding one image (TIA stores rows bottom-up);
- ``write_velox_emd``: a Velox EMD (HDF5: ``Data/Image/<id>/Data`` (H, W, frames) and a JSON
  ``Metadata`` byte array), needs h5py; ``write_velox_emd_bomb``: one whose gzip-chunked image is
  declared but never written, a few KB whatever its shape (a decompression bomb);
- ``write_fei_tiff``, ``write_zeiss_tiff``, ``write_ome_tiff``, ``write_imagej_tiff``: TIFFs
  with the SEM vendors' metadata tags, OME-XML or ImageJ's, written by tifffile;
  ``write_damaged_tiff``: one whose ImageLength tag points past the end of the file.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

_DM_TYPES = {np.dtype(np.int16): 1, np.dtype(np.float32): 2, np.dtype(np.uint8): 6, np.dtype(np.int32): 7,
             np.dtype(np.uint16): 10, np.dtype(np.uint32): 11, np.dtype(np.float64): 12}
# DM tag element types: 2 short, 3 long, 4 ushort, 5 ulong, 6 float, 7 double, 8 bool, 10 byte
_DM_ELEMENT = {np.dtype(np.int16): 2, np.dtype(np.int32): 3, np.dtype(np.uint16): 4, np.dtype(np.uint32): 5,
               np.dtype(np.float32): 6, np.dtype(np.float64): 7, np.dtype(np.uint8): 10}


class _DM:
    """Serialises a nested dict as DigitalMicrograph tag groups (big-endian structure, little-endian data)."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.q = ">q" if version == 4 else ">l"  # lengths and counts: 8 bytes in DM4, 4 in DM3

    def _n(self, n: int) -> bytes:
        return struct.pack(self.q, n)

    def _data(self, value: object) -> bytes:
        """The type description and value of one data tag (after the tag name)."""
        if isinstance(value, np.ndarray):  # an array of a simple type
            info = [20, _DM_ELEMENT[value.dtype], value.size]
            payload = value.astype(value.dtype.newbyteorder("<")).tobytes()
        elif isinstance(value, str):  # DM strings are arrays of ushort characters
            info = [20, 4, len(value)]
            payload = np.array([ord(c) for c in value], dtype="<u2").tobytes()
        elif isinstance(value, float):
            info, payload = [7], struct.pack("<d", value)
        else:
            info, payload = [3], struct.pack("<l", int(value))
        body = b"%%%%" + self._n(len(info)) + b"".join(self._n(i) for i in info) + payload
        size = struct.pack(">q", len(body)) if self.version == 4 else b""
        return size + body

    def group(self, tags: dict[str, object], root: bool = False) -> bytes:
        out = b"\x00\x01" + (struct.pack(">q", 0) if self.version == 4 and not root else b"") + self._n(len(tags))
        for name, value in tags.items():
            key = b"" if name.startswith("_") else name.encode()  # "_0": an unnamed tag, as DM writes lists
            if isinstance(value, dict):
                out += b"\x14" + struct.pack(">h", len(key)) + key + self.group(value)
            else:
                out += b"\x15" + struct.pack(">h", len(key)) + key + self._data(value)
        return out


def write_dm(path: Path, image: np.ndarray, pixel_size_nm: float | None, version: int = 4, unit: str = "nm") -> Path:
    """A DM3/DM4 file holding ``image`` (H, W) with x/y scale ``pixel_size_nm`` in ``unit`` (None: uncalibrated)."""
    h, w = image.shape
    scale, units = (pixel_size_nm, unit) if pixel_size_nm is not None else (1.0, "")
    dim = {"Origin": 0.0, "Scale": float(scale), "Units": units}
    image_data = {
        "Calibrations": {"Brightness": {"Origin": 0.0, "Scale": 1.0, "Units": ""},
                         "Dimension": {"_0": dict(dim), "_1": dict(dim)}},
        "Data": np.ascontiguousarray(image),
        "DataType": _DM_TYPES[image.dtype],
        "Dimensions": {"_0": w, "_1": h},  # DM lists x (width) first
        "PixelDepth": image.dtype.itemsize,
    }
    tags = {"ImageList": {"_0": {"ImageData": image_data, "ImageTags": {"Note": "fastvlad test"}, "Name": "test"}}}
    dm = _DM(version)
    body = dm.group(tags, root=True)
    size = struct.pack(">q" if version == 4 else ">l", len(body) + 16)
    path.write_bytes(struct.pack(">l", version) + size + struct.pack(">l", 1) + body + b"\x00" * 8)
    return path


def write_ser(path: Path, image: np.ndarray, pixel_size_nm: float) -> Path:
    """A TIA ``.ser`` holding one image (float32 or uint16 …), calibrated in metres as TIA writes it."""
    codes = {np.dtype(np.uint8): 1, np.dtype(np.uint16): 2, np.dtype(np.int16): 5, np.dtype(np.int32): 6,
             np.dtype(np.float32): 7, np.dtype(np.float64): 8}
    h, w = image.shape
    # header (30 bytes, SeriesVersion 0x210: 4-byte offsets), then one dimension: 1 element
    dimension = struct.pack("<IddI", 1, 0.0, 1.0, 0) + struct.pack("<I", 0) + struct.pack("<I", 0)
    offset_array_at = 30 + len(dimension)
    data_at = offset_array_at + 8
    header = struct.pack("<HHHIIIIII", 0x4949, 0x0197, 0x0210, 0x4122, 0x4152, 1, 1, offset_array_at, 1)
    scale_m = pixel_size_nm * 1e-9
    element = struct.pack("<ddIddIHII", 0.0, scale_m, 0, 0.0, scale_m, 0, codes[image.dtype], w, h)
    element += np.ascontiguousarray(image[::-1]).astype(image.dtype.newbyteorder("<")).tobytes()  # bottom-up
    tag_at = data_at + len(element)
    offsets = struct.pack("<II", data_at, tag_at)
    tag = struct.pack("<HHI", 0x4152, 0, 0)
    path.write_bytes(header + dimension + offsets + element + tag)
    return path


def write_velox_emd(path: Path, image: np.ndarray, pixel_size_nm: float) -> Path:
    """A Velox EMD holding one image (needs h5py)."""
    return _velox_emd(path, image.shape[:2], pixel_size_nm, lambda group: group.create_dataset("Data", data=image[:, :, None]))


def write_velox_emd_bomb(path: Path, shape: tuple[int, int, int]) -> Path:
    """A Velox EMD declaring a gzip-chunked (H, W, frames) image of ``shape`` whose chunks are never
    written: a few KB on disk, all fill value (zeros) when read (needs h5py)."""
    return _velox_emd(path, shape[:2], 1.0, lambda group: group.create_dataset(
        "Data", shape=shape, dtype=np.uint16, chunks=(*shape[:2], 1), compression="gzip"))


def _velox_emd(path: Path, hw: tuple[int, ...], pixel_size_nm: float, write_data: Callable[[Any], object]) -> Path:
    """A Velox EMD of one (H, W) detector image (or stack), its ``Data`` dataset made by ``write_data(group)``."""
    import h5py

    meta = {"BinaryResult": {"PixelSize": {"width": str(pixel_size_nm * 1e-9), "height": str(pixel_size_nm * 1e-9)},
                             "PixelUnitX": "m", "PixelUnitY": "m", "ImageSize": {"width": str(hw[1]),
                                                                                   "height": str(hw[0])}},
            "Core": {"MetadataDefinitionVersion": "7.9", "MetadataSchemaVersion": "v1/2013/07"},
            "Scan": {"FrameTime": "1"},  # RosettaSciIO reads it for a stack (frames > 1)
            "Acquisition": {"AcquisitionStartDatetime": {"DateTime": "1700000000"}},
            "Optics": {"AccelerationVoltage": "300000"}, "Instrument": {"InstrumentModel": "Test"},
            "Detectors": {"Detector-0": {"DetectorName": "HAADF"}}, "Operations": {},
            "BinaryResult.Detector": "HAADF"}
    raw = np.frombuffer(json.dumps(meta).encode() + b"\x00", dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f["Version"] = np.array([json.dumps({"format": "Velox", "version": 11}).encode()])
        g = f.create_group("Data/Image/0123456789abcdef")
        write_data(g)
        g["Metadata"] = raw[:, None]
    return path


def write_damaged_tiff(path: Path) -> Path:
    """A 96×64 TIFF whose ImageLength (tag 257) claims 100 000 values, stored past the end of the file:
    tifffile logs ``<TiffTag.fromfile> raised TiffFileError('… invalid value offset 96')`` on opening it."""
    import tifffile

    tifffile.imwrite(path, np.zeros((96, 64), np.uint16))
    data = bytearray(path.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]  # little-endian classic TIFF, as tifffile writes a small one
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 257:
            struct.pack_into("<I", data, entry + 4, 100_000)  # the count: 400 KB of values past the end
    path.write_bytes(bytes(data))
    return path


def write_fei_tiff(path: Path, image: np.ndarray, pixel_size_nm: float, bar: int = 0) -> Path:
    """An FEI/Thermo SEM TIFF: FEI_HELIOS INI metadata (tag 34682), ``bar`` rows of data bar below."""
    import tifffile

    h, w = image.shape[:2]
    ini = (f"[User]\r\nUser=test\r\n[Scan]\r\nPixelWidth={pixel_size_nm * 1e-9:.6e}\r\n"
           f"PixelHeight={pixel_size_nm * 1e-9:.6e}\r\n[Image]\r\nResolutionX={w}\r\nResolutionY={h - bar}\r\n")
    tifffile.imwrite(path, image, extratags=[(34682, "s", 0, ini, True)])
    return path


def write_zeiss_tiff(path: Path, image: np.ndarray, pixel_size_nm: float) -> Path:
    """A Zeiss SEM TIFF: CZ_SEM text (tag 34118) with ``AP_PIXEL_SIZE``."""
    import tifffile

    text = f"\r\n\r\nAP_PIXEL_SIZE\r\nPixel Size = {pixel_size_nm:g} nm\r\nDP_DETECTOR_TYPE\r\nDetector = SE2\r\n"
    tifffile.imwrite(path, image, extratags=[(34118, "s", 0, text, True)])
    return path


def write_ome_tiff(path: Path, image: np.ndarray, pixel_size_nm: float) -> Path:
    """An OME-TIFF with PhysicalSizeX/Y in µm (OME's default unit)."""
    import tifffile

    um = pixel_size_nm / 1e3
    tifffile.imwrite(path, image, ome=True, metadata={"axes": "YX", "PhysicalSizeX": um, "PhysicalSizeY": um,
                                                      "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    return path


def write_imagej_tiff(path: Path, image: np.ndarray, pixel_size_nm: float) -> Path:
    """An ImageJ TIFF calibrated in nm (resolution = pixels per nm)."""
    import tifffile

    tifffile.imwrite(path, image, imagej=True, resolution=(1 / pixel_size_nm, 1 / pixel_size_nm),
                     metadata={"unit": "nm"})
    return path
