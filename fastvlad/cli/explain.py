"""``fastvlad explain``: an overlay for one image, or the codewords that matter most for each
class over a dataset (``fastvlad.explain`` computes them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from ..explain import explain, rank_codewords, save_overlay, write_ranking


def _sample(n: int, max_images: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, max_images), replace=False))


def explain_command(model_path: Path = typer.Argument(..., metavar="MODEL"),
                    image: Path = typer.Argument(..., metavar="IMAGE",
                                                 help="An image (→ overlay), or a folder/CSV of images (→ codeword ranking)."),
                    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                                          help="Overlay PNG (default overlay.png) or, for a dataset, "
                                                               "a folder (default codewords/)."),
                    target: Optional[str] = typer.Option(None, "--class", help="Explain this class, not the predicted one."),
                    top: int = typer.Option(5, help="Codewords to list per class."),
                    patches: int = typer.Option(6, help="Example patches per codeword (dataset mode)."),
                    max_images: int = typer.Option(200, help="Random images to rank codewords on (dataset mode)."),
                    device: str = typer.Option("auto", metavar="[auto|cpu|cuda]", help="auto, cpu or cuda.")) -> None:
    """Show which codeword each sampled pixel went to and what each codeword contributed (XGBoost TreeSHAP)."""
    from .. import datasets
    from ..estimator import load

    model = load(model_path)
    model.set_params(device=device)
    if model.tile is not None or model.scale_nm_per_px is not None or model.crop_bottom is not None:
        from ..errors import ParameterError

        raise ParameterError(f"{model_path} rescales or tiles micrographs; explain does not follow its tiles yet. "
                             "The napari plugin (pip install 'fastvlad[napari]') shows each tile's class and "
                             "codewords; in Python: fastvlad.napari_plugin.classify(model, path)")
    if image.is_file() and image.suffix.lower() in datasets.IMAGE_SUFFIXES:
        expl = explain(model, str(image), target)
        written: Sequence[Path] = save_overlay(expl, output or Path("overlay.png"))
        cls = expl.classes[expl.target]
        typer.echo(f"{image}: {cls} (p = {expl.proba[expl.target]:.3f}); margin {expl.margin[expl.target]:+.3f} = "
                   f"bias {expl.bias[expl.target]:+.3f} + codewords {expl.support.sum():+.3f}")
        for j in np.argsort(-np.abs(expl.support), kind="stable")[:top]:
            n = int((expl.codewords == j).sum())
            # a codeword nearest to no point contributes too (hard: its all-zero block, evidence of absence;
            # soft: others' weighted residuals); it has no region on the map
            typer.echo(f"  codeword {j:>4}: {expl.support[j]:+.4f} ({f'nearest to {n} points' if n else 'nearest to no point'})")
    else:
        ds = datasets.load(image, require_labels=False)
        chosen = _sample(len(ds), max_images, model.random_state)
        ranking = rank_codewords(model, [str(ds.paths[i]) for i in chosen], patches)
        written = write_ranking(ranking, output or Path("codewords"), top)
        for cls in ranking.classes:
            typer.echo(f"{cls}: codewords {', '.join(str(j) for j in ranking.top(cls, top))}")
    typer.echo("wrote " + ", ".join(str(p) for p in written))
