"""Helpers for tests that take saved model files apart: read the members, change some, write a
consistent file again (the manifest re-hashed, as someone editing a file on purpose would)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from functools import lru_cache
from pathlib import Path

from . import tiny_model


def members_of(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_members(out: Path, members: dict[str, bytes], rehash: bool = True) -> Path:
    """A model file of ``members`` (in order), with ``manifest.json`` recomputed unless ``rehash``
    is False or the manifest itself is among the changed bytes the caller wants kept."""
    members = dict(members)
    if rehash and "manifest.json" in members:
        manifest = {n: hashlib.sha256(d).hexdigest() for n, d in members.items() if n != "manifest.json"}
        members["manifest.json"] = json.dumps(manifest, indent=2).encode()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out


def edited(path: Path, out: Path, **change: bytes | None) -> Path:
    """``path`` with members replaced (bytes) or dropped (None), manifest re-hashed. Member names
    with dots are given with underscores: ``booster_ubj=...``."""
    members = members_of(path)
    for key, data in change.items():
        name = key[::-1].replace("_", ".", 1)[::-1]
        if data is None:
            members.pop(name, None)
        else:
            members[name] = data
    return write_members(out, members)


@lru_cache(maxsize=1)
def tiny_model_bytes() -> bytes:
    """The bytes of ``tiny_model.fitted()`` saved (4 classes, k = 8, PCA to 64: every member)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return tiny_model.fitted().save(Path(tmp) / "m.fvl").read_bytes()
