"""The evaluation report: one self-contained HTML page (images inlined as base64, inline CSS,
no network) plus the same figures as PNG files, the numbers as JSON and the per-image
out-of-fold predictions as CSV.

Layout of ``DIR``: ``index.html``, ``report.json``, ``predictions.csv``, ``confusion.png``,
``folds.png``, ``examples/<n>_<class>_{correct,wrong}_<i>.png``. The report is built in a hidden
folder and moved into ``DIR`` when complete, so a failure leaves no half-written report.

A file name that is not UTF-8 (Python keeps its undecodable bytes as lone surrogates, PEP 383)
is written as its own bytes in ``predictions.csv``, as ``\\udcNN`` escapes in ``report.json``
(``os.fsencode`` of the loaded string gives the bytes back) and as ``\\xNN`` in the page.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from ._files import (
    check_replaceable,
    check_stageable,
    encoded,
    folder_atomic,
    write_bytes_atomic,
)
from .datasets import Dataset
from .errors import FastVLADError, WriteError
from .evaluate import (
    MAGNIFICATION_NOTE,
    CVResult,
    by_group_text,
    change_kind,
    changed_groups_text,
    interval_note,
    mean_interval_text,
    refit_text,
    share_interval_text,
    shown_margins,
    steady_margin_text,
)
from .images import read, to_rgb255
from .model_file import data_sha256

log = logging.getLogger("fastvlad")

#: Thumbnails shown per class for correct and for wrong out-of-fold predictions.
EXAMPLES_PER_KIND = 6
THUMB_SIDE = 128
#: The files of the report's folder, but the thumbnails in ``examples/``; ``index.html`` comes last.
FILES = ("report.json", "predictions.csv", "confusion.png", "folds.png", "index.html")


@dataclass
class Example:
    """One thumbnail: the image's row in the CV result, its PNG, the predicted class and its probability."""

    row: int
    png: bytes
    predicted: str
    p: float


def _json_safe(value: Any) -> Any:
    """Parameters → JSON values (tuples → lists, anything odd → its string)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def numbers(res: CVResult, est: Any, ds: Dataset) -> dict[str, Any]:
    """Everything the report states, as JSON-ready values: CV metrics, settings, versions, data."""
    from .estimator import versions

    paths = _row_paths(res, ds)
    n_groups = len(set(ds.groups.tolist())) if ds.groups is not None else None
    return {**res.to_dict(),
            "cv": f"leave-one-{res.group_by}-out" if res.leave_one_out else "grouped" if res.grouped else "stratified",
            "settings": _json_safe(est.get_params()),
            "backbone_sha256": res.backbone_sha256,
            "versions": versions(),
            "data": {"root": str(ds.root), "n_images": len(ds), "n_groups": n_groups,
                     "images_sha256": data_sha256(ds.paths, ds.labels)},
            "predictions": [{"path": p, "fold": int(f), "true": t, "predicted": q}
                            for p, f, t, q in zip(paths, res.fold, res.y_true.tolist(), res.y_pred.tolist())],
            "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _row_paths(res: CVResult, ds: Dataset) -> list[str]:
    """The image path of every row of the CV result."""
    return [str(ds.paths[i]) for i in _row_indices(res, ds)]


def _row_indices(res: CVResult, ds: Dataset) -> np.ndarray:
    """The position in ``ds`` of every row of the CV result (rows are the readable images, in order)."""
    if res.indices is not None:
        return np.asarray(res.indices)
    if len(res.y_true) == len(ds):
        return np.arange(len(ds))
    raise FastVLADError("the CV result does not say which image each row is (no indices); "
                        "re-run cross_validate from this fastvlad version")


def _relative(path: str, root: Path) -> str:
    p = Path(path)
    return str(p.relative_to(root)) if p.is_relative_to(root) else path


def choose_examples(res: CVResult, cls: str, correct: bool, n: int = EXAMPLES_PER_KIND,
                    groups: np.ndarray | None = None) -> np.ndarray:
    """Rows of true class ``cls`` predicted right (or wrong), most confident first: (≤ n,) int.

    With ``groups`` (per row), one row per group comes before a second of any group: tiles of
    one micrograph look alike, so the thumbnails show as many micrographs as they can."""
    rows = np.flatnonzero((res.y_true == cls) & ((res.y_pred == res.y_true) == correct))
    confidence = res.proba[rows, [res.classes.index(p) for p in res.y_pred[rows]]] if len(rows) else np.zeros(0)
    rows = rows[np.argsort(-confidence, kind="stable")]
    if groups is not None:
        rows = rows[np.argsort(_nth_of_its_group(groups[rows]), kind="stable")]
    return rows[:n]


def _nth_of_its_group(groups: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions share its group: (n,) int."""
    seen: Counter[object] = Counter()
    nth = np.empty(len(groups), dtype=np.int64)
    for i, g in enumerate(groups.tolist()):
        nth[i] = seen[g]
        seen[g] += 1
    return nth


def _thumbnail_png(path: str) -> bytes | None:
    try:
        rgb = np.clip(to_rgb255(read(path), path), 0, 255).astype(np.uint8)
    except FastVLADError as exc:  # the image was readable during CV; say so and carry on
        log.warning("report: no thumbnail for %s (%s)", path, exc)
        return None
    return plots.png_bytes(plots.thumbnail(rgb, THUMB_SIDE))


def examples(res: CVResult, paths: list[str], cls: str, correct: bool, groups: np.ndarray | None) -> list[Example]:
    """Thumbnails of one class and kind (see ``choose_examples``)."""
    out = []
    for row in choose_examples(res, cls, correct, groups=groups):
        png = _thumbnail_png(paths[row])
        if png is not None:
            p = float(res.proba[row, res.classes.index(res.y_pred[row])])
            out.append(Example(int(row), png, str(res.y_pred[row]), p))
    return out


def predictions_csv(res: CVResult, paths: list[str], root: Path) -> bytes:
    """Out-of-fold predictions, one row per image: path, fold, true, predicted, p_<class>…"""
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["path", "fold", "true", "predicted", *[f"p_{c}" for c in res.classes]])
    for i, path in enumerate(paths):
        w.writerow([_relative(path, root), int(res.fold[i]), res.y_true[i], res.y_pred[i],
                    *[f"{v:.6f}" for v in res.proba[i]]])
    return encoded(text.getvalue())  # a name not UTF-8: its own bytes


def check_folder(folder: str | Path) -> None:
    """``WriteError`` now, before hours of cross-validation, when the report could not be written
    into ``folder``: it is a file, one of its ``FILES`` is a folder, its ``examples`` a file, or
    there is no permission to write."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise WriteError(f"{folder} is a file; the report is a folder (index.html and its figures): "
                         "give a folder name")
    for name in FILES:
        if (folder / name).is_dir():
            raise WriteError(f"{folder / name} is a folder; the report writes a file there: move it or "
                             "choose another report folder")
        check_replaceable(folder / name)  # a pipe or device there would be refused only after the work
    if (folder / "examples").exists() and not (folder / "examples").is_dir():
        raise WriteError(f"{folder / 'examples'} is a file; the report writes its thumbnails into a folder "
                         "there: move it or choose another report folder")
    check_stageable(folder)  # where the report is built: fails now if it cannot be made


def files(folder: str | Path) -> list[Path]:
    """Every file ``write_report`` may replace in ``folder`` (to check against the inputs): its
    ``FILES`` and, since thumbnail names depend on the results, whatever is in ``examples/`` now."""
    folder = Path(folder)
    examples = folder / "examples"
    present = sorted(p for p in examples.rglob("*") if p.is_file()) if examples.is_dir() else []
    return [*(folder / name for name in FILES), *present]


def write_report(folder: str | Path, res: CVResult, est: Any, ds: Dataset) -> Path:
    """Write the report into ``folder``; returns the path of ``index.html``.

    Everything is built in a hidden folder first and moved in when complete: a failure leaves
    ``folder`` as it was (no new folder, an old report untouched)."""
    folder = Path(folder)
    check_folder(folder)
    with folder_atomic(folder, last="index.html") as staging:
        _write_files(staging, res, est, ds)
    return folder / "index.html"


def _write_files(folder: Path, res: CVResult, est: Any, ds: Dataset) -> None:
    """Every file of the report into ``folder`` (empty)."""
    paths = _row_paths(res, ds)
    nums = numbers(res, est, ds)
    write_bytes_atomic(folder / "report.json", json.dumps(nums, indent=2).encode())
    write_bytes_atomic(folder / "predictions.csv", predictions_csv(res, paths, ds.root))
    figures = {"confusion": plots.confusion_matrix_png(res.confusion(), res.classes, folder / "confusion.png"),
               "folds": plots.fold_accuracy_png(res.fold_accuracy, folder / "folds.png",
                                                res.fold_names if res.leave_one_out else None,
                                                f"held-out {res.group_by}" if res.leave_one_out else "fold")}
    shown: dict[tuple[str, bool], list[Example]] = {}
    groups = ds.groups[_row_indices(res, ds)] if ds.groups is not None else None
    for n, cls in enumerate(res.classes):
        for correct in (True, False):
            shown[cls, correct] = examples(res, paths, cls, correct, groups)
            for i, ex in enumerate(shown[cls, correct]):
                kind = "correct" if correct else "wrong"
                write_bytes_atomic(folder / "examples" / f"{n}_{plots.slug(cls)}_{kind}_{i}.png", ex.png)
    page = render_html(nums, {k: p.read_bytes() for k, p in figures.items()}, shown, paths, ds.root)
    write_bytes_atomic(folder / "index.html", _page_bytes(page))


def _page_bytes(page: str) -> bytes:
    """The page as UTF-8, a name that is not UTF-8 shown as ``\\xNN`` escapes of its bytes (raw
    ones would show as "�"; predictions.csv has them as they are)."""
    return encoded(page).decode("utf-8", "backslashreplace").encode("utf-8")


# -- HTML ------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:70em;
     padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.headline{font-size:1.3em;margin:.6em 0} .muted{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.5em 0} th,td{padding:.25em .7em;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left} code{font-size:.85em;word-break:break-all}
.figs{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start} .figs>img{max-width:30em;height:auto}
.kind{font-size:.85em;font-weight:600;margin:.2em 0 0}
.warning{background:#fff4d6;border-left:4px solid #e0a030;padding:.3em .7em}
.thumbs{display:flex;flex-wrap:wrap;gap:.6em;margin:.3em 0 1em}
figure{margin:0;font-size:.75em;max-width:134px;text-align:center;overflow-wrap:anywhere}
figure img{display:block;border:3px solid #3a3;max-width:128px} figure.wrong img{border-color:#c33}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metrics_section(nums: dict[str, Any], figures: dict[str, bytes]) -> str:
    classes = nums["classes"]
    per_class = [[c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"])]
                 for c, m in nums["per_class"].items()]
    macro = [np.mean([m[k] for m in nums["per_class"].values()]) for k in ("precision", "recall", "f1")]
    per_class.append(["macro average", *[f"{v:.3f}" for v in macro], str(nums["n_images"])])
    confusion = [[c, *[str(v) for v in row]] for c, row in zip(classes, nums["confusion"])]
    folds = ", ".join(f"{a:.3f}" for a in nums["fold_accuracy"])
    col = nums.get("split_by")
    if col:  # leave-one-group-out: the mean over held-out groups, its spread, and every group
        head = (f'<p class="headline">accuracy <b>{nums["accuracy_mean"]:.3f} ± {nums["accuracy_std"]:.3f}</b> '
                f'(mean ± std over {len(nums["fold_accuracy"])} values of {html.escape(col)}, each held out '
                f'once; min {nums["accuracy_min"]:.3f}, max {nums["accuracy_max"]:.3f}'
                + (f'; {mean_interval_text(nums["accuracy_mean_95"], nums["fold_accuracy"])}'
                   if nums.get("accuracy_mean_95") else "") + ')</p>'
                f'<p class="muted">pooled over all out-of-fold predictions: {nums["pooled_accuracy"]:.3f}</p>')
        head += _warnings(nums) + f"<h2>Per held-out {html.escape(col)}</h2>" + _per_group_table(nums, col)
    else:
        head = (f'<p class="headline">accuracy <b>{nums["accuracy_mean"]:.3f} ± {nums["accuracy_std"]:.3f}</b> '
                f'(mean ± std over {len(nums["fold_accuracy"])} {nums["cv"]} folds)</p>'
                f'<p class="muted">per fold: {folds}; pooled over all out-of-fold predictions: '
                f'{nums["pooled_accuracy"]:.3f}</p>' + _warnings(nums))
    return (head + f'<p class="muted">{html.escape(refit_text(nums.get("refit", "head")))}</p>' + _shift_section(nums) +
            '<h2>Per class</h2>' + _table(["class", "precision", "recall", "F1", "images"], per_class) +
            '<h2>Confusion</h2><div class="figs"><div>' +
            _table(["true \\ predicted", *classes], confusion) + "</div>" +
            _img(figures["confusion"], "confusion matrix") + _img(figures["folds"], "accuracy per fold") + "</div>")


def _warnings(nums: dict[str, Any]) -> str:
    """The confound warnings, and how many independent samples (groups) the accuracy rests on."""
    groups = by_group_text(nums.get("by_group"), nums["n_images"])
    return ("".join(f'<p class="warning">{html.escape(w)}</p>' for w in nums.get("warnings", [])) +
            (f'<p class="muted">{html.escape(groups)}</p>' if groups else ""))


def _per_group_table(nums: dict[str, Any], col: str) -> str:
    rows = [[str(f["held_out"]), str(f["n"]), f"{f['accuracy']:.3f}",
             ", ".join(f"{c} {n}" for c, n in f["classes"].items()), ", ".join(f["missing_from_training"]) or "—"]
            for f in nums["folds"]]
    return _table([col, "images", "accuracy", "classes", "class not in training"], rows)


def _shift_section(nums: dict[str, Any]) -> str:
    """The shift check: per acquisition change, the share of out-of-fold predictions it changes."""
    shift = nums.get("shift")
    if not shift:
        return ""
    rows = [["(unchanged)", "", "", "", "", f"{shift['accuracy_unchanged']:.3f}", ""]]
    rows += [[c["name"], f"{100 * c['flipped']:.1f} %", share_interval_text(c), changed_groups_text(c), _lost(c),
              f"{c['accuracy']:.3f}", f"{c['seconds']:.1f}"] for c in shift["changes"]]
    return ("<h2>Shift check</h2>"
            f'<p class="muted">{shift["n_images"]} out-of-fold images (a seeded sample, stratified by '
            f'{html.escape(shift["stratified_by"])}) re-predicted under each acquisition change by the classifier '
            "of the fold that "
            "held them out; a model whose answers hold on new samples changes few. The control is no "
            "acquisition change: the image all but unchanged, its points drawn anew (what it changes, point "
            "sampling alone changes). "
            f"The 95 % interval is {html.escape(interval_note(shift))}; groups: the groups with a prediction "
            "changed, of those re-predicted. "
            f'Most changed by an acquisition change: {100 * shift["max_flipped"]:.1f} %; '
            f'{shift["seconds"]:.0f} s in all.'
            + (f" {html.escape(MAGNIFICATION_NOTE[0].upper() + MAGNIFICATION_NOTE[1:])}."
               if any(change_kind(c) == "magnification" for c in shift["changes"]) else "") + "</p>" +
            _table(["change", "predictions changed", "95 % interval", "groups", "right ones made wrong", "accuracy",
                    "seconds"],
                   rows) +
            _shift_by_group(shift) + _margins_section(shift))


def _margins_section(shift: dict[str, Any]) -> str:
    """The answers at or above a few margins (the answer's probability minus the runner-up's): how many,
    how right, and the most one acquisition change alters; then from which margin on they held."""
    margins = shift.get("margins")
    if not margins:
        return ""
    magnified = "max_flipped_magnification" in margins[0]
    rows = [[f"{r['margin']:.2f}", f"{100 * r['kept']:.1f} %", f"{r['accuracy']:.3f}" if r["n"] else "–",
             f"{100 * r['max_flipped']:.1f} %"]
            + ([f"{100 * r['max_flipped_magnification']:.1f} %"] if magnified else [])
            for r in shown_margins(margins)]
    return ('<p class="muted">Sure answers: the margin is an answer\'s probability minus the runner-up\'s; '
            "<code>fastvlad predict --min-margin</code> marks the answers under a margin as not sure. "
            f"{html.escape(steady_margin_text(margins).capitalize())}.</p>" +
            _table(["margin ≥", "answers", "accuracy", "most changed by one change"]
                   + (["most changed by a magnification"] if magnified else []), rows))


def _shift_by_group(shift: dict[str, Any]) -> str:
    """Per held-out value, the predictions the acquisition changes changed: where the flips fall."""
    counts = shift.get("changed_by_group")
    if not counts:
        return ""
    rows = [[g, str(c), str(n), f"{100 * c / max(n, 1):.1f} %"] for g, (c, n) in counts.items()]
    return (f'<p class="muted">Per held-out {html.escape(str(shift.get("group_by")))}, over the acquisition '
            "changes (not the control or a magnification): where the changed predictions fall.</p>" +
            _table([str(shift.get("group_by")), "predictions changed", "re-predicted", "share"], rows))


def _lost(change: dict[str, Any]) -> str:
    """The share of right predictions a change made wrong; "–" in a report from before it was recorded."""
    return f"{100 * change['lost']:.1f} %" if "lost" in change else "–"


def _examples_section(classes: list[str], shown: dict[tuple[str, bool], list[Example]], paths: list[str],
                      root: Path) -> str:
    parts = ['<h2>Examples</h2><p class="muted">Out-of-fold predictions, most confident first; '
             "green border: correct, red: wrong (caption: predicted class and its probability).</p>"]
    for cls in classes:
        parts.append(f"<h3>{html.escape(cls)}</h3>")
        for correct in (True, False):
            exs = shown[cls, correct]
            label = "correct" if correct else "wrong"
            if not exs:
                parts.append(f'<p class="muted">no {label} predictions</p>')
                continue
            figs = "".join(f'<figure class="{label}" title="{html.escape(_relative(paths[e.row], root))}">'
                           f"{_img(e.png, _relative(paths[e.row], root))}<figcaption>{html.escape(e.predicted)}"
                           f"<br>p = {e.p:.2f}</figcaption></figure>" for e in exs)
            parts.append(f'<p class="kind">{label}</p><div class="thumbs">{figs}</div>')
    return "".join(parts)


def _settings_section(nums: dict[str, Any]) -> str:
    settings = [[k, json.dumps(v)] for k, v in sorted(nums["settings"].items())]
    data = nums["data"]
    info = [["images", str(data["n_images"])], ["groups", str(data["n_groups"] or "none")],
            ["images SHA-256 (order-free)", data["images_sha256"]], ["backbone SHA-256", nums["backbone_sha256"]]]
    seconds = [[k, f"{v:.1f}"] for k, v in nums["seconds"].items()]
    versions = [[k, v] for k, v in nums["versions"].items()]
    skipped = ("<h2>Skipped images</h2>" + _table(["image", "why"], [[a, b] for a, b in nums["skipped"]])
               if nums["skipped"] else "")
    return (skipped + '<h2>Settings</h2><div class="figs">' + _table(["parameter", "value"], settings) +
            _table(["data", ""], info) + _table(["stage", "seconds"], seconds) +
            _table(["library", "version"], versions) + "</div>")


def render_html(nums: dict[str, Any], figures: dict[str, bytes], shown: dict[tuple[str, bool], list[Example]],
                paths: list[str], root: Path) -> str:
    """The report page: every image inlined, no external resource."""
    title = f"fastvlad evaluation — {Path(nums['data']['root']).name}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=\"muted\">{html.escape(nums['data']['root'])} · "
            f"{nums['n_images']} images, {len(nums['classes'])} classes · {html.escape(nums['created'])}</p>" +
            _metrics_section(nums, figures) + _examples_section(nums["classes"], shown, paths, root) +
            _settings_section(nums) + "</body></html>\n")
