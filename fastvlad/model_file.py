"""The saved model: ONE zip file, no pickle, every member hashed, written atomically.

Members: ``format.json`` (format name and version), ``config.json`` (estimator parameters,
class names, backbone SHA-256, training metadata), ``codebook.npy``, ``booster.ubj``
(XGBoost UBJSON), ``projection.npy`` (only with hypercolumn PCA) and, last,
``manifest.json`` with the SHA-256 of every other member.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import stat
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._files import encoded, write_atomic
from .errors import ModelFormatError

FORMAT = "fastvlad-model"
VERSION = 1


@dataclass
class ModelContents:
    config: dict[str, Any]
    codebook: np.ndarray
    booster: bytes | None  # XGBoost UBJSON (classifier="xgboost"), or None with ``linear``
    projection: np.ndarray | None = None  # (dim + 1, p) float32 hypercolumn PCA, see projection.Projection
    linear: np.ndarray | None = None  # (n_classes, code width or d + 1) float32 linear head, see classifier.LinearHead
    code_axes: np.ndarray | None = None  # (d + 1, code width) float32 with code_pca, see classifier.CodeAxes


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def save(path: str | os.PathLike[str], contents: ModelContents) -> Path:
    """Write the model file atomically: an interrupted save leaves nothing at ``path``."""
    members = {
        "format.json": json.dumps({"format": FORMAT, "version": VERSION}).encode(),
        "config.json": json.dumps(contents.config, indent=2, sort_keys=True).encode(),
        "codebook.npy": _npy_bytes(np.ascontiguousarray(contents.codebook, dtype=np.float32)),
    }
    if contents.booster is not None:
        members["booster.ubj"] = contents.booster
    if contents.linear is not None:
        members["linear.npy"] = _npy_bytes(np.ascontiguousarray(contents.linear, dtype=np.float32))
    if contents.code_axes is not None:
        members["code_axes.npy"] = _npy_bytes(np.ascontiguousarray(contents.code_axes, dtype=np.float32))
    if contents.projection is not None:
        members["projection.npy"] = _npy_bytes(np.ascontiguousarray(contents.projection, dtype=np.float32))
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    members["manifest.json"] = json.dumps(manifest, indent=2).encode()

    def write(f) -> None:  # type: ignore[no-untyped-def]
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, data in members.items():
                zf.writestr(name, data)

    return write_atomic(path, write)


#: Largest uncompressed size each member may have (a zip bomb declares or inflates to far more);
#: a model's arrays are ``k × dim`` floats (k = 100 × 1472 at the paper's settings: 0.6 MB).
MEMBER_LIMITS = {"format.json": 4096, "manifest.json": 64 * 1024, "config.json": 64 << 20,
                 "codebook.npy": 1 << 30, "projection.npy": 1 << 30, "booster.ubj": 1 << 30,
                 "linear.npy": 1 << 30, "code_axes.npy": 1 << 30}
#: Largest model file and largest sum of its members' sizes.
MAX_TOTAL_BYTES = 2 << 30
#: A member over ``INFLATION_FROM`` bytes may inflate at most ``MAX_INFLATION`` times its compressed
#: size. A model's float arrays deflate to 0.9 of their size and its booster to about an eighth, so
#: only a bomb (zeros: a thousandfold) exceeds it — a small file that would take gigabytes to read.
MAX_INFLATION = 100
INFLATION_FROM = 1 << 20
_REQUIRED = ("format.json", "config.json", "codebook.npy", "manifest.json")
#: The classifier head: exactly one of these.
_HEADS = ("booster.ubj", "linear.npy")
# What the zip layer raises on damaged containers (zlib.error, NotImplementedError for an unknown
# compression, RuntimeError for encryption, struct.error for short headers): all mean "damaged".
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, zlib.error,
               NotImplementedError, RuntimeError, struct.error, OverflowError)


def load(path: str | os.PathLike[str]) -> ModelContents:
    """Read and verify a model file; any damage or version mismatch is a ``ModelFormatError``
    naming the file, the member and the problem (never another exception, whatever the bytes)."""
    if not os.fspath(path):  # Path("") is the current folder
        raise ModelFormatError("the model path is empty; give the path of a .fvl model file")
    path = Path(path)
    _check_regular(path)
    try:
        return _load(path)
    except MemoryError:  # members within every limit can still exceed this machine's memory
        raise ModelFormatError(f"{path}: not enough memory to read this model file (its members declare "
                               "more than this machine can hold; a fastvlad model takes megabytes)") from None


def _check_regular(path: Path) -> None:
    """``ModelFormatError`` unless ``path`` is an existing regular file (links followed). Checked
    with ``stat``, never by opening: reading a FIFO would block until something wrote to it."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL byte in the name
        raise ModelFormatError(f"{path}: no such model file") from None
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise ModelFormatError(f"{path} is not a regular file (a folder); give the path of a .fvl model file")
    if not stat.S_ISREG(mode):
        raise ModelFormatError(f"{path} is not a regular file (a device, pipe or socket); give the path of a .fvl "
                               "model file")


def _load(path: Path) -> ModelContents:
    """``load`` of an existing file."""
    members = _read_members(path)
    _check_format(path, members)
    manifest = _json(path, members, "manifest.json")
    if not isinstance(manifest, dict) or not all(isinstance(v, str) for v in manifest.values()):
        raise ModelFormatError(f"{path}: the manifest is not a table of member hashes")
    unlisted = sorted(set(members) - set(manifest) - {"manifest.json"})
    if unlisted:
        raise ModelFormatError(f"{path}: member(s) {unlisted} are not in the manifest (file edited); re-save the model")
    for name in dict.fromkeys([*_REQUIRED[:-1], *manifest]):
        if name not in members:
            raise ModelFormatError(f"{path}: member {name} is missing")
        if hashlib.sha256(members[name]).hexdigest() != manifest.get(name):
            raise ModelFormatError(f"{path}: member {name} does not match its recorded SHA-256 (file damaged or edited)")
    codebook = _npy(path, members, "codebook.npy")
    if codebook.shape[0] < 2 or codebook.shape[1] < 1:
        raise ModelFormatError(f"{path}: codebook.npy must be a finite 2-D float32 array of at least 2 centres, "
                               f"not {codebook.dtype} {codebook.shape}")
    config = _json(path, members, "config.json")
    if not isinstance(config, dict):
        raise ModelFormatError(f"{path}: config.json must hold a JSON object")
    heads = [name for name in _HEADS if name in members]
    if len(heads) != 1:
        raise ModelFormatError(f"{path}: a model holds one classifier head ({' or '.join(_HEADS)}); this file has "
                               f"{' and '.join(heads) if heads else 'none'}")
    linear = _npy(path, members, "linear.npy") if "linear.npy" in members else None
    code_axes = _npy(path, members, "code_axes.npy") if "code_axes.npy" in members else None
    return ModelContents(config, codebook, members.get("booster.ubj"), _projection(path, members), linear, code_axes)


def _read_members(path: Path) -> dict[str, bytes]:
    """Every member's bytes, after checking the container: no more members than a model has, no
    paths or duplicate names, no encryption, known compressions, declared sizes within
    ``MEMBER_LIMITS`` and read sizes equal to the declared ones (CRC checked by zipfile)."""
    try:
        if path.stat().st_size > MAX_TOTAL_BYTES:
            raise ModelFormatError(f"{path}: {path.stat().st_size} bytes is larger than a fastvlad model can be "
                                   f"({MAX_TOTAL_BYTES}); not a model file")
        _check_directory(path)
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                twice = sorted(n for n, count in Counter(names).items() if count > 1)
                raise ModelFormatError(f"{path}: member name(s) {twice} appear more than once (file edited)")
            for info in infos:
                _check_entry(path, info)
            if sum(i.file_size for i in infos) > MAX_TOTAL_BYTES:
                raise ModelFormatError(f"{path}: the members declare more than {MAX_TOTAL_BYTES} bytes in all")
            members = {}
            for info in infos:
                with zf.open(info) as f:
                    data = f.read(MEMBER_LIMITS.get(info.filename, 0) + 1)
                if len(data) != info.file_size:
                    raise ModelFormatError(f"{path}: member {info.filename} holds {len(data)} bytes but declares "
                                           f"{info.file_size} (file damaged or edited)")
                members[info.filename] = data
            return members
    except ModelFormatError:
        raise
    except _ZIP_ERRORS as exc:
        raise ModelFormatError(f"{path}: not a readable fastvlad model file ({type(exc).__name__}: {exc})") from None


def _check_directory(path: Path) -> None:
    """Refuse a zip whose end record declares more entries, or a larger central directory, than a
    model has, before zipfile builds an object per entry (millions of tiny entries fit in 2 GiB)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - (22 + 0xFFFF)))  # the end record: 22 bytes and a comment of ≤ 64 KiB
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 22:
        raise ModelFormatError(f"{path}: not a readable fastvlad model file (no zip end record)")
    if tail[max(0, at - 20):at].startswith(b"PK\x06\x07"):
        # A zip64 locator makes zipfile take the entry count and directory size from the zip64 end
        # record instead of the one checked below; a model is far under 4 GiB and never has one.
        raise ModelFormatError(f"{path}: the zip has a zip64 end record, which no fastvlad model has (file edited)")
    entries, directory_size = struct.unpack_from("<HI", tail, at + 10)
    if entries > len(MEMBER_LIMITS) or directory_size > 64 * 1024:
        raise ModelFormatError(f"{path}: the zip declares {entries} members in a {directory_size}-byte directory; "
                               f"a fastvlad model has at most {len(MEMBER_LIMITS)}")


def _check_entry(path: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    if name.startswith(("/", "\\")) or "\\" in name or ".." in name.split("/") or ":" in name:
        raise ModelFormatError(f"{path}: member name {name!r} is a path (absolute, or with .. or a drive); refused")
    if name not in MEMBER_LIMITS:
        raise ModelFormatError(f"{path}: member(s) {[name]} are not in the manifest and not part of a fastvlad "
                               "model (file edited); re-save the model")
    if info.flag_bits & 0x1:
        raise ModelFormatError(f"{path}: member {name} is encrypted; fastvlad writes none")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ModelFormatError(f"{path}: member {name} uses compression method {info.compress_type}; fastvlad "
                               "writes deflate")
    if info.file_size > MEMBER_LIMITS[name]:
        raise ModelFormatError(f"{path}: member {name} declares {info.file_size} bytes, over the "
                               f"{MEMBER_LIMITS[name]} a model's {name} may have (a zip bomb?)")
    if info.file_size > INFLATION_FROM and info.file_size > MAX_INFLATION * max(info.compress_size, 1):
        raise ModelFormatError(f"{path}: member {name} inflates {info.compress_size} bytes to {info.file_size}, over "
                               f"{MAX_INFLATION} times; a model's members compress far less (a zip bomb?)")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _json(path: Path, members: dict[str, bytes], name: str) -> Any:
    """A JSON member, strictly: UTF-8, no NaN/Infinity, no number that overflows a float."""
    try:
        return json.loads(members[name].decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite)
    except KeyError:
        raise ModelFormatError(f"{path}: member {name} is missing") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ModelFormatError(f"{path}: {name} is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None


def _npy(path: Path, members: dict[str, bytes], name: str) -> np.ndarray:
    """A 2-D finite float32 ``.npy`` member as a C-contiguous array. The header is read first and
    checked against the bytes that follow, so a hostile shape allocates nothing."""
    f = io.BytesIO(members[name])
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"npy format version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
    except (ValueError, SyntaxError, TypeError, OverflowError, EOFError, MemoryError) as exc:
        raise ModelFormatError(f"{path}: unreadable member {name} ({type(exc).__name__}: {exc})") from None
    data = memoryview(members[name])[f.tell():]  # a view: a large member is not copied to be read
    sides = all(type(d) is int and d >= 0 for d in shape)  # not a bool, nor a negative "unknown" side
    if dtype != np.dtype("<f4") or len(shape) != 2 or not sides or math.prod(shape) * 4 != len(data):
        raise ModelFormatError(f"{path}: {name} must be a finite 2-D float32 array, not {dtype} {shape} "
                               f"with {len(data)} bytes of data")
    a = np.frombuffer(data, dtype="<f4").reshape(shape, order="F" if fortran_order else "C")
    if not np.isfinite(a).all():
        raise ModelFormatError(f"{path}: {name} must be a finite 2-D float32 array, not {dtype} {shape} "
                               "with NaN or infinite values")
    peak = float(np.abs(a).max()) if a.size else 0.0
    if peak > MAX_ABS:
        raise ModelFormatError(f"{path}: {name} holds a value of magnitude {peak:.3g}, over the {MAX_ABS:g} any "
                               "model has (the file is damaged or edited)")
    # One layout for every loaded array (see projection.Projection): C-contiguous, writable.
    return np.array(a, dtype=np.float32, order="C")


#: Largest magnitude in a model's arrays. Centres and projections are CNN activations (hundreds to
#: thousands) and their linear maps; beyond 1e15 a squared distance over a few thousand dimensions
#: leaves float32's range, and every code and answer would be NaN.
MAX_ABS = 1e15


def _projection(path: Path, members: dict[str, bytes]) -> np.ndarray | None:
    """The optional ``projection.npy`` member (already hash-checked by ``load``)."""
    if "projection.npy" not in members:
        return None
    proj = _npy(path, members, "projection.npy")
    if proj.shape[0] < 2 or proj.shape[1] < 1:
        raise ModelFormatError(f"{path}: projection.npy must be a finite (dim + 1, p) float32 array, "
                               f"not {proj.dtype} {proj.shape}")
    return proj


def _check_format(path: Path, members: dict[str, bytes]) -> None:
    if "format.json" not in members:
        raise ModelFormatError(f"{path}: not a fastvlad model (no format.json)")
    try:
        fmt = _json(path, members, "format.json")
    except ModelFormatError:
        raise ModelFormatError(f"{path}: not a fastvlad model (format.json is not JSON)") from None
    if not isinstance(fmt, dict) or fmt.get("format") != FORMAT:
        what = fmt.get("format") if isinstance(fmt, dict) else type(fmt).__name__
        raise ModelFormatError(f"{path}: not a fastvlad model (format {what!r})")
    if fmt.get("version") != VERSION or isinstance(fmt.get("version"), bool):
        raise ModelFormatError(f"{path}: model format version {fmt.get('version')!r} is not supported by this "
                               f"fastvlad (reads version {VERSION}); re-train or use a matching fastvlad")


def hash_file_into(h: Any, path: str | os.PathLike[str]) -> None:
    """Feed a file's bytes to the hash ``h`` in 1 MiB chunks; an unreadable file, or anything but a
    regular file, feeds its name."""
    try:
        # Without blocking, and checked once open: a FIFO would wait for a writer, /dev/zero never ends
        # (a skipped image is hashed too).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (OSError, ValueError):
        fd = None
    try:
        if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode):
            with open(fd, "rb", closefd=False) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            return
    except OSError:
        pass
    finally:
        if fd is not None:
            os.close(fd)
    h.update(b"\0unreadable\0" + os.fsencode(path))  # a name's own bytes, UTF-8 or not


def data_sha256(sources: Sequence[Any], labels: Sequence[object] | np.ndarray | None = None) -> str:
    """SHA-256 of training data for the model's metadata: each image's bytes as stored (arrays:
    dtype, shape, values) with its label, combined in sorted order so file order does not matter.
    An unreadable file contributes its name."""
    digests = []
    for i, src in enumerate(sources):
        h = hashlib.sha256()
        digest = getattr(src, "digest", None)  # a micrograph or tile (fastvlad.tiling): its file's hash, cached
        if digest is not None:
            h.update(digest())
        elif isinstance(src, np.ndarray):
            h.update(f"{src.dtype}{src.shape}".encode())
            h.update(np.ascontiguousarray(src).tobytes())
        else:
            hash_file_into(h, src)
        if labels is not None:
            h.update(b"\0label\0" + encoded(str(labels[i])))
        digests.append(h.digest())
    return hashlib.sha256(b"".join(sorted(digests))).hexdigest()
