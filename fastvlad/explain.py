"""``fastvlad explain`` (issue #5): which codeword each pixel went to and what it contributed."""

from __future__ import annotations

import typer


def explain_command() -> None:
    """Draw the codeword overlay of one image (not implemented yet)."""
    raise typer.Exit(1)
