"""Datasets on disk: a folder of class sub-folders, or a CSV manifest ``path,label[,group,...]``.

Rules (documented in README, tested in tests/test_datasets.py):
- A folder holding ``manifest.csv`` is read from the CSV alone; otherwise every image under
  ``folder/<class>/`` (any depth) is labelled ``<class>``. Hidden files and folders
  (``.DS_Store``, macOS ``._x.png``) are left out; files without an image suffix are
  counted in a notice; an image path that cannot be read (a broken link, say) is kept,
  so that it is reported when decoded instead of silently dropped.
- The CSV is authoritative: its label wins over the folder an image sits in (a notice
  says how many disagree). Column names are case-insensitive; ``,``, ``;`` or tab
  separated; UTF-8 (with or without BOM). Paths are relative to the CSV's folder. Every
  column but ``path`` is kept as text in ``Dataset.columns`` (e.g. ``series``, to evaluate
  leave-one-series-out); ``Dataset.column(name)`` reads one, naming the others when it is missing.
- Errors (``InvalidDatasetError``, naming the CSV, or the folder without one): no images, one
  class, an empty label, duplicate paths, a missing ``path`` column, a column named twice (in
  any case: ``label`` and ``Label``), rows of the wrong length, a CSV that is not UTF-8 text,
  and — unless ``check_files=False`` (``on_error="skip"``) — listed files that do not exist.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import stat
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidDatasetError, printable, skip_advice

log = logging.getLogger("fastvlad")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp",
                  ".dm3", ".dm4", ".ser", ".emd")  # the last four: the microscopy extra (fastvlad.microscopy)
#: How many examples an error or notice lists.
EXAMPLES = 3


@dataclass
class Dataset:
    """Image paths with optional labels and groups (the source micrograph of each tile)."""

    paths: list[Path]
    labels: np.ndarray | None  # (n,) str, or None for unlabelled data
    groups: np.ndarray | None  # (n,) str, or None
    root: Path
    pixel_size_nm: np.ndarray | None = None  # (n,) float64 from a pixel_size_nm column, NaN where empty
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # every CSV column but path: (n,) str each
    manifest: Path | None = None  # the CSV it was read from, if any

    @property
    def origin(self) -> Path:
        """What messages name: the CSV, or the folder (or image) without one; a folder may hold several CSVs."""
        return self.manifest if self.manifest is not None else self.root

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def y(self) -> np.ndarray:
        """The labels ``(n,)`` str; ``InvalidDatasetError`` for unlabelled data."""
        if self.labels is None:
            raise InvalidDatasetError(f"{self.origin}: the images have no labels; use class sub-folders or a "
                                      "'label' column")
        return self.labels

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels.tolist())) if self.labels is not None else []

    def column(self, name: str) -> np.ndarray:
        """The values ``(n,)`` str of a manifest column (names are case-insensitive).

        ``InvalidDatasetError`` when the data has no such column (naming the ones it has) or
        when some image has no value in it."""
        key = name.strip().lower()
        if key not in self.columns:
            have = ", ".join(repr(c) for c in self.columns) if self.columns else "none (a folder of class sub-folders " \
                "has no columns)"
            raise InvalidDatasetError(f"{self.origin}: the data has no column {name!r}; its columns are {have}. Give a "
                                      f"manifest.csv with a {key!r} column, or split by one of those")
        values = self.columns[key]
        empty = np.flatnonzero(values == "")
        if len(empty):
            shown = ", ".join(str(self.paths[i]) for i in empty[:EXAMPLES])
            raise InvalidDatasetError(f"{self.origin}: {len(empty)} image(s) have no value in column {key!r} (e.g. "
                                      f"{shown}); fill it in for every image")
        return values


def load(source: str | Path, require_labels: bool = True, check_files: bool = True) -> Dataset:
    """Read a dataset from a folder (class sub-folders, or loose images) or a CSV manifest.

    ``check_files=False`` keeps CSV rows whose file is missing, so that a run with
    ``on_error="skip"`` reports them with the other unreadable images.
    """
    if not os.fspath(source):  # Path("") is the current folder
        raise InvalidDatasetError("the dataset path is empty; give a folder of class sub-folders, a CSV manifest "
                                  "or an image file")
    src = Path(source)
    if os.path.isdir(src):  # os.path: False, not an OSError, for a name too long for the file system
        manifest = src / "manifest.csv"
        ds = from_csv(manifest, check_files) if os.path.isfile(manifest) else from_folder(src, require_labels)
    elif os.path.isfile(src) and src.suffix.lower() == ".csv":
        ds = from_csv(src, check_files)
    elif os.path.isfile(src) and src.suffix.lower() in IMAGE_SUFFIXES:
        ds = Dataset([src], None, None, src.parent)
    elif not os.path.exists(src):
        raise InvalidDatasetError(f"{src}: no such folder or file; give a folder of class sub-folders, "
                                  "a CSV manifest (path,label[,group]) or an image")
    else:
        raise InvalidDatasetError(f"{src}: not a folder, a CSV manifest (.csv) or an image file "
                                  f"({', '.join(IMAGE_SUFFIXES)})")
    if require_labels:
        check_labelled(ds)
    return ds


# -- folders ---------------------------------------------------------------------------------
def from_folder(folder: Path, require_labels: bool = True) -> Dataset:
    """``folder/<class>/<image>``; without class sub-folders, the loose images unlabelled."""
    try:
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        paths: list[Path] = []
        labels: list[str] = []
        ignored: Counter[str] = Counter()
        linked: list[Path] = []  # os.walk does not follow them (a link back up would loop)
        for sub in subdirs:
            entries = list(_walk(sub))
            found = _images_in(sub, entries, ignored)
            linked += [p for p in entries if p.is_symlink() and p.is_dir()]
            if not found:
                log.warning("fastvlad: class folder %s holds no images; it is not used as a class", sub)
            paths += found
            labels += [sub.name] * len(found)
        loose = _images_in(folder, folder.iterdir(), Counter() if paths else ignored)
    except OSError as exc:
        raise InvalidDatasetError(f"{folder}: cannot list the folder ({exc.strerror or exc}: "
                                  f"{exc.filename}); check its permissions") from None
    _note_ignored(folder, ignored)
    if linked:
        log.warning("fastvlad: %s: %d linked folder(s) inside class folders are not followed (e.g. %s); link "
                    "the images themselves, or move them in", folder, len(linked), linked[0])
    if paths and loose:
        log.warning("fastvlad: %s: %d image(s) directly in the folder have no class folder and are not used "
                    "(e.g. %s)", folder, len(loose), loose[0].name)
    if not paths:
        if loose and not require_labels:
            return Dataset(loose, None, None, folder)
        found_loose = f" ({len(loose)} loose images were found: put them in class sub-folders)" if loose else ""
        raise InvalidDatasetError(f"{folder}: no images found in class sub-folders{found_loose}; expected "
                                  f"{folder}/<class>/<image> with {', '.join(IMAGE_SUFFIXES)} files, or a manifest.csv")
    twice = first_repeat(file_stats(paths))
    if twice is not None:
        raise InvalidDatasetError(f"{folder}: {printable(str(paths[twice[1]]))} is the same file as "
                                  f"{printable(str(paths[twice[0]]))}, through a link; keep one of them")
    return Dataset(paths, np.array(labels), None, folder)


def _walk(folder: Path) -> Iterator[Path]:
    """Every file and folder under ``folder``; an unlistable sub-folder is an ``OSError``
    (``Path.rglob`` would skip it silently, and its images with it)."""
    def fail(exc: OSError) -> None:
        raise exc

    for top, dirs, files in os.walk(folder, onerror=fail):
        yield from (Path(top, name) for name in (*dirs, *files))


def _images_in(base: Path, entries: Iterable[Path], ignored: Counter[str]) -> list[Path]:
    """Image files among ``entries`` under ``base`` (sorted), hidden ones left out; other
    files are counted in ``ignored``."""
    images: list[Path] = []
    for p in entries:
        if any(part.startswith(".") for part in p.relative_to(base).parts) or p.is_dir():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)  # kept even if unreadable (broken link…): reported when decoded
        else:
            ignored[p.suffix.lower() or "(no suffix)"] += 1
    return sorted(images)


def _note_ignored(folder: Path, ignored: Counter[str]) -> None:
    if ignored:
        kinds = ", ".join(f"{suffix} ×{n}" for suffix, n in ignored.most_common(5))
        log.info("fastvlad: %s: ignored %d file(s) that are not images by their suffix (%s); images are %s",
                 folder, sum(ignored.values()), kinds, ", ".join(IMAGE_SUFFIXES))


# -- CSV manifests ---------------------------------------------------------------------------
def from_csv(manifest: Path, check_files: bool = True) -> Dataset:
    """CSV with a ``path`` column (relative to the CSV), optional ``label``, ``group`` and any others."""
    header, rows = _read_rows(manifest)
    col = {name: header.index(name) for name in ("path", "label", "group") if name in header}
    paths: list[Path] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise InvalidDatasetError(f"{manifest}, line {line}: {len(row)} field(s) where the header has "
                                      f"{len(header)}; quote fields that contain the separator")
        rel = row[col["path"]].strip()
        if not rel:
            raise InvalidDatasetError(f"{manifest}, line {line}: empty path")
        path = _resolve(manifest.parent, rel)
        key = os.path.normpath(path)
        if key in seen:
            raise InvalidDatasetError(f"{manifest}, line {line}: path {rel!r} is already listed on line {seen[key]}; "
                                      "list each image once")
        seen[key] = line
        paths.append(path)
    if not paths:
        raise InvalidDatasetError(f"{manifest}: the CSV lists no images (only a header)")
    if check_files:
        _check_listed(manifest, paths, [line for line, _ in rows])
    labels = np.array([r[col["label"]].strip() for _, r in rows]) if "label" in col else None
    groups = np.array([r[col["group"]].strip() for _, r in rows]) if "group" in col else None
    if labels is not None:
        _note_folder_disagreement(manifest, paths, labels)
    pixel_sizes = _pixel_sizes(manifest, header, rows) if "pixel_size_nm" in header else None
    columns = {name: np.array([r[j].strip() for _, r in rows]) for j, name in enumerate(header)
               if name and name != "path"}
    return Dataset(paths, labels, groups, manifest.parent, pixel_sizes, columns, manifest)


def _pixel_sizes(manifest: Path, header: list[str], rows: list[tuple[int, list[str]]]) -> np.ndarray:
    """The ``pixel_size_nm`` column: a positive number of nm per pixel, or empty (the file's own)."""
    j = header.index("pixel_size_nm")
    out = np.full(len(rows), np.nan)
    for k, (line, row) in enumerate(rows):
        text = row[j].strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (np.isfinite(value) and value > 0):
            raise InvalidDatasetError(f"{manifest}, line {line}: pixel_size_nm {text!r} is not a positive number of "
                                      "nanometres per pixel; give one, or leave it empty to use the file's metadata")
        out[k] = value
    return out


def _read_rows(manifest: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (lower-cased names) and non-blank rows with their line numbers."""
    try:
        raw = manifest.read_bytes()
    except OSError as exc:
        raise InvalidDatasetError(f"{manifest}: cannot read the CSV ({exc.strerror or exc})") from None
    if b"\0" in raw:
        raise InvalidDatasetError(f"{manifest}: binary data, not a text CSV; give a CSV with a header "
                                  "'path,label[,group]'")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidDatasetError(f"{manifest}, line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                                  "save the CSV as UTF-8") from None
    first = text.split("\n", 1)[0]
    delimiter = next((d for d in ",;\t" if d in first), ",")
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        names = [h.strip() for h in next(reader, [])]
        rows = [(reader.line_num, row) for row in reader if any(field.strip() for field in row)]
    except csv.Error as exc:  # the reader's line_num is the line it stopped on
        raise InvalidDatasetError(f"{manifest}, line {reader.line_num}: not a valid CSV ({exc})") from None
    _check_unique(manifest, names)
    header = [name.lower() for name in names]
    if "path" not in header:
        raise InvalidDatasetError(f"{manifest}: the header {header[:5]} has no 'path' column; the first line must "
                                  "name the columns, e.g. 'path,label,group' (label and group optional)")
    return header, rows


def _check_unique(manifest: Path, names: list[str]) -> None:
    """Refuse a header naming a column twice: names are case-insensitive, so for 'label' and
    'Label' which one is meant cannot be told. Unnamed columns (trailing separators) may repeat."""
    seen: dict[str, str] = {}
    for name in filter(None, names):
        first = seen.get(name.lower())
        if first is not None:
            case = "; column names are case-insensitive" if first != name else ""
            raise InvalidDatasetError(f"{manifest}: the header names one column twice ({first!r} and {name!r}{case}); "
                                      "rename or remove one of them")
        seen[name.lower()] = name


def _resolve(folder: Path, rel: str) -> Path:
    path = folder / rel
    if "\\" in rel and os.sep == "/" and not os.path.exists(path):
        alt = folder / rel.replace("\\", "/")  # a manifest written on Windows
        if os.path.exists(alt):
            return alt
    return path


def _check_listed(manifest: Path, paths: list[Path], lines: list[int]) -> None:
    """Every listed file exists, and no file is listed twice under two names (a link, a hard link)."""
    stats = file_stats(paths)  # one stat per file serves both checks
    missing = [(line, p) for line, p, st in zip(lines, paths, stats) if st is None or not stat.S_ISREG(st.st_mode)]
    twice = first_repeat(stats)
    if twice is not None:
        (i, j) = twice
        raise InvalidDatasetError(f"{manifest}, line {lines[j]}: {printable(str(paths[j]))} is the same file as line "
                                  f"{lines[i]} ({printable(str(paths[i]))}), through a link; list each image once")
    if missing:
        shown = "; ".join(f"line {line}: {printable(str(p))}" for line, p in missing[:EXAMPLES])
        raise InvalidDatasetError(f"{manifest}: {len(missing)} listed file(s) do not exist or are not files "
                                  f"({shown}{'; …' if len(missing) > EXAMPLES else ''}); fix the paths (relative to the "
                                  "CSV's folder)" + skip_advice(", or skip them with on_error='skip' (CLI: --on-error skip)"))


def file_stats(paths: Sequence[Path]) -> list[os.stat_result | None]:
    """``os.stat`` of every path (links followed); None where it fails (missing, unreadable, a bad name)."""
    stats: list[os.stat_result | None] = []
    for path in paths:
        try:
            stats.append(os.stat(path))
        except (OSError, ValueError):
            stats.append(None)
    return stats


def first_repeat(stats: Sequence[os.stat_result | None]) -> tuple[int, int] | None:
    """Indices (first, again) of the first regular file that two entries of ``file_stats`` name (a
    link, a hard link: one image counted twice, maybe in both a training and a test fold), or None."""
    first: dict[tuple[int, int], int] = {}
    for j, st in enumerate(stats):
        if st is None or not stat.S_ISREG(st.st_mode):
            continue  # missing or not a file: reported as such elsewhere
        i = first.setdefault((st.st_dev, st.st_ino), j)
        if i != j:
            return i, j
    return None


def _note_folder_disagreement(manifest: Path, paths: list[Path], labels: np.ndarray) -> None:
    """A notice when images sit in a folder named after ANOTHER class: the CSV's label is used."""
    classes = set(labels.tolist())
    odd = [(p, str(lab)) for p, lab in zip(paths, labels) if p.parent.name in classes and p.parent.name != lab]
    if odd:
        shown = ", ".join(f"{p.parent.name}/{p.name} → {lab!r}" for p, lab in odd[:EXAMPLES])
        log.warning("fastvlad: %s: %d image(s) sit in a folder named after another class (%s); the CSV's labels "
                    "are used", manifest, len(odd), shown)


def check_labelled(ds: Dataset) -> None:
    """At least two classes, and no empty label; a notice for classes with a single image."""
    if ds.labels is None:
        raise InvalidDatasetError(f"{ds.origin}: no labels; use class sub-folders or a 'label' column")
    empty = np.flatnonzero(ds.labels == "")
    if len(empty):
        shown = ", ".join(str(ds.paths[i]) for i in empty[:EXAMPLES])
        raise InvalidDatasetError(f"{ds.origin}: {len(empty)} image(s) have an empty label (e.g. {shown}); "
                                  "label every image")
    problem = class_names_problem(ds.classes)
    if problem:
        raise InvalidDatasetError(f"{ds.origin}: {problem}; rename them")
    if len(ds.classes) < 2:
        raise InvalidDatasetError(f"{ds.origin}: found only class(es) {ds.classes}; a classifier needs at least two")
    counts = Counter(ds.labels.tolist())
    single = sorted(c for c, n in counts.items() if n == 1)
    if single:
        log.warning("fastvlad: class(es) %s have a single image; the model can train, but cross-validation and "
                    "held-out scores need several per class", single)


def class_name(name: Any) -> bool:
    """Whether ``name`` can be a class a model writes: a string with more than blanks (an empty name
    reads as a missing answer in a CSV, a blank one prints as nothing) that UTF-8 can encode (a lone
    surrogate cannot be written to a CSV) and that holds no control character (a newline or an escape
    sequence would break the CSV row or the terminal line)."""
    return isinstance(name, str) and bool(name.strip()) and _utf8(name) and not any(_invisible(ch) for ch in name)


def _invisible(ch: str) -> bool:
    """A control character (newline, escape) or a format character (a zero-width space makes "a\u200b"
    a second class that prints as "a"; a bidi override reverses the rest of a terminal line)."""
    return unicodedata.category(ch) in ("Cc", "Cf")


def class_names_problem(names: Sequence[str]) -> str | None:
    """What is wrong with the class names that ``class_name`` refuses, in words, or None."""
    bad = [n for n in names if not class_name(n)]
    if not bad:
        return _same_looking(names)
    shown = ", ".join(ascii(n) for n in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    why = [text for found, text in (
        (any(not n.strip() for n in bad), "are empty or blank"),
        (any(not _utf8(n) for n in bad), "are not valid UTF-8 (undecodable bytes in a folder name or label)"),
        (any(n.strip() and _utf8(n) for n in bad), "hold control or invisible format characters (newline, tab, escape, "
                                           "zero-width space, bidi override)")) if found]
    return f"class name(s) {shown} {' or '.join(why)}"


def _same_looking(names: Sequence[str]) -> str | None:
    """Two class names that differ only in Unicode normalisation ("é" composed and "e" + accent), or
    None: they would be two classes that print alike."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(unicodedata.normalize("NFC", name), name)
        if other != name:
            return (f"class names {ascii(other)} and {ascii(name)} differ only in Unicode normalisation and "
                    "print alike (write both the same way, NFC)")
    return None


def _utf8(text: str) -> bool:
    """Whether UTF-8 can encode ``text`` (a name decoded from undecodable bytes holds lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def classes_left(y: np.ndarray, y_read: np.ndarray) -> list[str]:
    """The classes of the images read (labels ``y_read``), out of those given (``y`` (n,)), sorted.

    With ``on_error="skip"`` a class can vanish with its images: a warning names each, and fewer
    than two left is an ``InvalidDatasetError`` (a score over one class says nothing)."""
    counts = Counter(np.asarray(y).astype(str).tolist())
    left = sorted(set(np.asarray(y_read).astype(str).tolist()))
    lost = ", ".join(f"{c!r} ({n})" for c, n in sorted(counts.items()) if c not in left)
    if len(left) < 2:
        which = f"only class {left[0]!r} is" if left else "no class is"
        raise InvalidDatasetError(f"{which} left after skipping unreadable images: every image of class(es) {lost} was "
                                  "skipped, and a classifier needs at least two classes; fix those images (on_error="
                                  "'raise', CLI: --on-error raise, names them all) or add readable ones")
    if lost:
        log.warning("fastvlad: every image of class(es) %s was skipped as unreadable; only %s are left", lost,
                    ", ".join(map(repr, left)))
    return left
