"""``fastvlad explain``: an overlay for one image, or the codewords that matter most for each
class over a dataset (``fastvlad.explain`` computes them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from .. import checks, config
from .._files import check_writable
from ..errors import WriteError
from ..explain import (
    explain,
    rank_codewords,
    ranking_paths,
    save_overlay,
    support_path,
    write_ranking,
)
from . import outputs


def _sample(n: int, max_images: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, max_images), replace=False))


def _check_options(top: int, patches: int, max_images: int, on_error: str) -> None:
    """The counts, before the model is even read (``ParameterError`` naming the option)."""
    checks.integer("--top", top, 1)
    checks.integer("--patches", patches, 1, hi=config.MAX_PATCHES)
    checks.integer("--max-images", max_images, 1)
    checks.choice("--on-error", on_error, checks.ON_ERROR)


def _check_outputs(written: Sequence[Path], model_path: Path, inputs: Sequence[Path]) -> None:
    """Before the CNN runs: ``WriteError`` when a file explain would write is the model or one
    of the images it reads, or cannot be written."""
    outputs.refuse_inputs(written, [model_path], "the model")
    outputs.refuse_inputs(written, inputs)
    for path in written:
        check_writable(path)


def _ranking_folder(output: Optional[Path]) -> Path:
    """The folder of a dataset's ranking (default ``codewords``); ``WriteError`` when it is a file."""
    folder = output or Path("codewords")
    if folder.exists() and not folder.is_dir():
        raise WriteError(f"-o {folder} is a file; for a dataset explain writes a folder (codewords.json and "
                         "a PNG per class): give a folder name")
    return folder


def explain_command(model_path: Path = typer.Argument(..., metavar="MODEL"),
                    image: Path = typer.Argument(..., metavar="IMAGE",
                                                 help="An image (→ overlay), or a folder/CSV of images (→ codeword ranking)."),
                    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                                          help="Overlay PNG (default overlay.png) or, for a dataset, "
                                                               "a folder (default codewords/)."),
                    target: Optional[str] = typer.Option(None, "--class", help="Explain this class, not the predicted one."),
                    top: int = typer.Option(5, help="Codewords to list per class."),
                    patches: int = typer.Option(6, help="Example patches per codeword (dataset mode; at most 100)."),
                    max_images: int = typer.Option(200, help="Random images to rank codewords on (dataset mode)."),
                    device: str = typer.Option("auto", metavar="[auto|cpu|cuda]", help="auto, cpu or cuda."),
                    on_error: str = typer.Option("raise", metavar="[raise|skip]",
                                                 help="Dataset mode: 'raise' stops at the first unreadable image; "
                                                      "'skip' ranks on the readable ones.")) -> None:
    """Show which codeword each sampled pixel went to and what each codeword contributed (exact: a
    linear head's coef·x, XGBoost's TreeSHAP)."""
    from .. import datasets
    from .options import load as load_dataset
    from .options import loaded, report_skipped

    _check_options(top, patches, max_images, on_error)
    if outputs.is_stdout(output):
        raise WriteError("-o -: explain writes PNG files (and, for a dataset, JSON); give a file or folder name")
    model = loaded(model_path, device, on_error, None)
    if model.tile is not None or model.scale_nm_per_px is not None or model.crop_bottom is not None:
        from ..errors import ParameterError

        raise ParameterError(f"{model_path} rescales or tiles micrographs; explain does not follow its tiles yet. "
                             "The napari plugin (pip install 'fastvlad[napari]') shows each tile's class and "
                             "codewords; in Python: fastvlad.napari_plugin.classify(model, path)")
    if image.is_file() and image.suffix.lower() in datasets.IMAGE_SUFFIXES:
        overlay = output or Path("overlay.png")
        _check_outputs([overlay, support_path(overlay)], model_path, [image])
        expl = explain(model, str(image), target)
        written: Sequence[Path] = save_overlay(expl, overlay)
        cls = expl.classes[expl.target]
        typer.echo(f"{image}: {cls} (p = {expl.proba[expl.target]:.3f}); margin {expl.margin[expl.target]:+.3f} = "
                   f"bias {expl.bias[expl.target]:+.3f} + codewords {expl.support.sum():+.3f}")
        for j in np.argsort(-np.abs(expl.support), kind="stable")[:top]:
            n = int((expl.codewords == j).sum())
            # a codeword nearest to no point contributes too (hard: its all-zero block, evidence of absence;
            # soft: others' weighted residuals); it has no region on the map
            typer.echo(f"  codeword {j:>4}: {expl.support[j]:+.4f} ({f'nearest to {n} points' if n else 'nearest to no point'})")
    else:
        ds = load_dataset(image, on_error, require_labels=False)
        folder = _ranking_folder(output)
        outputs.refuse_inside_dataset(folder, image, "-o")
        _check_outputs(ranking_paths(folder, [str(c) for c in model.classes_]), model_path,
                       outputs.dataset_files(image, ds.paths))
        chosen = _sample(len(ds), max_images, checks.seed(model))
        ranking = rank_codewords(model, [str(ds.paths[i]) for i in chosen], patches)
        written = write_ranking(ranking, folder, top)
        report_skipped(ranking.skipped)
        for cls in ranking.classes:
            typer.echo(f"{cls}: codewords {', '.join(str(j) for j in ranking.top(cls, top))}")
    typer.echo("wrote " + ", ".join(str(p) for p in written))
