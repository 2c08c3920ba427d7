"""``fastvlad bench`` (issue #4): end-to-end throughput and the ratio to the paper's pipeline."""

from __future__ import annotations

import typer


def bench_command() -> None:
    """Measure throughput per stage (not implemented yet)."""
    raise typer.Exit(1)
