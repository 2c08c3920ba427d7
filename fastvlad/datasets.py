"""Datasets on disk: a folder of class sub-folders, or a CSV manifest ``path,label[,group]``."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidDatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")


@dataclass
class Dataset:
    """Image paths with optional labels and groups (the source micrograph of each tile)."""

    paths: list[Path]
    labels: np.ndarray | None  # (n,) str, or None for unlabelled data
    groups: np.ndarray | None  # (n,) str, or None
    root: Path

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels.tolist())) if self.labels is not None else []


def load(source: str | Path, require_labels: bool = True) -> Dataset:
    """Read a dataset from a folder (class sub-folders, or loose images) or a CSV manifest."""
    src = Path(source)
    if src.is_dir():
        manifest = src / "manifest.csv"
        ds = from_csv(manifest) if manifest.is_file() else from_folder(src, require_labels)
    elif src.is_file() and src.suffix.lower() == ".csv":
        ds = from_csv(src)
    elif src.is_file() and src.suffix.lower() in IMAGE_SUFFIXES:
        ds = Dataset([src], None, None, src.parent)
    else:
        raise InvalidDatasetError(f"{src}: not a folder, a CSV manifest or an image file")
    if require_labels:
        check_labelled(ds)
    return ds


def from_folder(folder: Path, require_labels: bool = True) -> Dataset:
    """``folder/<class>/<image>``; without class sub-folders, the loose images unlabelled."""
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths: list[Path] = []
    labels: list[str] = []
    for sub in subdirs:
        found = sorted(p for p in sub.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        paths += found
        labels += [sub.name] * len(found)
    if not paths:
        loose = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if loose and not require_labels:
            return Dataset(loose, None, None, folder)
        raise InvalidDatasetError(f"{folder}: no images found; expected class sub-folders holding "
                                  f"{', '.join(IMAGE_SUFFIXES)} files, or a manifest.csv")
    return Dataset(paths, np.array(labels), None, folder)


def from_csv(manifest: Path) -> Dataset:
    """CSV with a ``path`` column (relative to the CSV), optional ``label`` and ``group``."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidDatasetError(f"{manifest}: cannot read the CSV ({exc})") from None
    if not rows or "path" not in rows[0]:
        raise InvalidDatasetError(f"{manifest}: needs a header with a 'path' column (and 'label', optionally 'group') "
                                  "and at least one row")
    paths = [manifest.parent / r["path"] for r in rows]
    seen: set[Path] = set()
    for n, p in enumerate(paths, start=2):
        if not rows[n - 2]["path"]:
            raise InvalidDatasetError(f"{manifest}, line {n}: empty path")
        if p in seen:
            raise InvalidDatasetError(f"{manifest}, line {n}: duplicate path {rows[n - 2]['path']!r}")
        seen.add(p)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InvalidDatasetError(f"{manifest}: {len(missing)} listed file(s) do not exist, e.g. {missing[:3]}")
    labels = np.array([r.get("label") or "" for r in rows]) if "label" in rows[0] else None
    groups = np.array([r.get("group") or "" for r in rows]) if "group" in rows[0] else None
    return Dataset(paths, labels, groups, manifest.parent)


def check_labelled(ds: Dataset) -> None:
    """At least two classes, and no empty label."""
    if ds.labels is None:
        raise InvalidDatasetError(f"{ds.root}: no labels; use class sub-folders or a 'label' column")
    if (ds.labels == "").any():
        raise InvalidDatasetError(f"{ds.root}: {(ds.labels == '').sum()} image(s) have an empty label")
    if len(ds.classes) < 2:
        raise InvalidDatasetError(f"{ds.root}: found only class(es) {ds.classes}; a classifier needs at least two")
