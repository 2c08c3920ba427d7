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
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._files import write_atomic
from .errors import ModelFormatError

FORMAT = "fastvlad-model"
VERSION = 1


@dataclass
class ModelContents:
    config: dict[str, Any]
    codebook: np.ndarray
    booster: bytes
    projection: np.ndarray | None = None  # (dim + 1, p) float32 hypercolumn PCA, see projection.Projection


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
        "booster.ubj": contents.booster,
    }
    if contents.projection is not None:
        members["projection.npy"] = _npy_bytes(np.ascontiguousarray(contents.projection, dtype=np.float32))
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    members["manifest.json"] = json.dumps(manifest, indent=2).encode()

    def write(f) -> None:  # type: ignore[no-untyped-def]
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, data in members.items():
                zf.writestr(name, data)

    return write_atomic(path, write)


def load(path: str | os.PathLike[str]) -> ModelContents:
    """Read and verify a model file; any damage or version mismatch is a ``ModelFormatError``."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such model file")
    try:
        with zipfile.ZipFile(path) as zf:
            members = {name: zf.read(name) for name in zf.namelist()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not a readable fastvlad model file ({exc})") from None
    _check_format(path, members)
    try:
        manifest = json.loads(members["manifest.json"])
    except (KeyError, ValueError):
        raise ModelFormatError(f"{path}: the manifest is missing or unreadable") from None
    if not isinstance(manifest, dict):
        raise ModelFormatError(f"{path}: the manifest is not a table of member hashes")
    unlisted = sorted(set(members) - set(manifest) - {"manifest.json"})
    if unlisted:
        raise ModelFormatError(f"{path}: member(s) {unlisted} are not in the manifest (file edited); re-save the model")
    for name in dict.fromkeys(["format.json", "config.json", "codebook.npy", "booster.ubj", *manifest]):
        if name not in members:
            raise ModelFormatError(f"{path}: member {name} is missing")
        if hashlib.sha256(members[name]).hexdigest() != manifest.get(name):
            raise ModelFormatError(f"{path}: member {name} does not match its recorded SHA-256 (file damaged or edited)")
    try:
        codebook = np.load(io.BytesIO(members["codebook.npy"]), allow_pickle=False)
        config = json.loads(members["config.json"])
    except ValueError as exc:
        raise ModelFormatError(f"{path}: unreadable member ({exc})") from None
    if codebook.ndim != 2 or codebook.dtype != np.float32 or not np.isfinite(codebook).all():
        raise ModelFormatError(f"{path}: codebook.npy must be a finite 2-D float32 array, "
                               f"not {codebook.dtype} {codebook.shape}")
    if not isinstance(config, dict):
        raise ModelFormatError(f"{path}: config.json must hold a JSON object")
    return ModelContents(config, codebook, members["booster.ubj"], _projection(path, members))


def _projection(path: Path, members: dict[str, bytes]) -> np.ndarray | None:
    """The optional ``projection.npy`` member (already hash-checked by ``load``)."""
    if "projection.npy" not in members:
        return None
    try:
        proj = np.load(io.BytesIO(members["projection.npy"]), allow_pickle=False)
    except ValueError as exc:
        raise ModelFormatError(f"{path}: unreadable member projection.npy ({exc})") from None
    if proj.ndim != 2 or proj.shape[0] < 2 or proj.dtype != np.float32 or not np.isfinite(proj).all():
        raise ModelFormatError(f"{path}: projection.npy must be a finite (dim + 1, p) float32 array, "
                               f"not {proj.dtype} {proj.shape}")
    return proj


def _check_format(path: Path, members: dict[str, bytes]) -> None:
    try:
        fmt = json.loads(members["format.json"])
    except (KeyError, ValueError):
        raise ModelFormatError(f"{path}: not a fastvlad model (no format.json)") from None
    if fmt.get("format") != FORMAT:
        raise ModelFormatError(f"{path}: not a fastvlad model (format {fmt.get('format')!r})")
    if fmt.get("version") != VERSION:
        raise ModelFormatError(f"{path}: model format version {fmt.get('version')} is not supported by this "
                               f"fastvlad (reads version {VERSION}); re-train or use a matching fastvlad")


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
            try:
                with open(src, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            except OSError:
                h.update(b"\0unreadable\0" + str(src).encode())
        if labels is not None:
            h.update(b"\0label\0" + str(labels[i]).encode())
        digests.append(h.digest())
    return hashlib.sha256(b"".join(sorted(digests))).hexdigest()
