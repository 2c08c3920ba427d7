"""The saved model: ONE zip file, no pickle, every member hashed, written atomically.

Members: ``format.json`` (format name and version), ``config.json`` (estimator parameters,
class names, backbone SHA-256, training metadata), ``codebook.npy``, ``booster.ubj``
(XGBoost UBJSON) and, last, ``manifest.json`` with the SHA-256 of every other member.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
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


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def save(path: str | Path, contents: ModelContents) -> Path:
    """Write the model file atomically: an interrupted save leaves nothing at ``path``."""
    members = {
        "format.json": json.dumps({"format": FORMAT, "version": VERSION}).encode(),
        "config.json": json.dumps(contents.config, indent=2, sort_keys=True).encode(),
        "codebook.npy": _npy_bytes(np.ascontiguousarray(contents.codebook, dtype=np.float32)),
        "booster.ubj": contents.booster,
    }
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    members["manifest.json"] = json.dumps(manifest, indent=2).encode()

    def write(f) -> None:  # type: ignore[no-untyped-def]
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, data in members.items():
                zf.writestr(name, data)

    return write_atomic(path, write)


def load(path: str | Path) -> ModelContents:
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
    for name in ("format.json", "config.json", "codebook.npy", "booster.ubj"):
        if name not in members:
            raise ModelFormatError(f"{path}: member {name} is missing")
        if hashlib.sha256(members[name]).hexdigest() != manifest.get(name):
            raise ModelFormatError(f"{path}: member {name} does not match its recorded SHA-256 (file damaged or edited)")
    try:
        codebook = np.load(io.BytesIO(members["codebook.npy"]), allow_pickle=False)
        config = json.loads(members["config.json"])
    except ValueError as exc:
        raise ModelFormatError(f"{path}: unreadable member ({exc})") from None
    return ModelContents(config, codebook, members["booster.ubj"])


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
