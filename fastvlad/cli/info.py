"""``fastvlad info``: versions, ONNX Runtime providers, the device 'auto' picks, the cache folder."""

from __future__ import annotations

import typer


def info() -> None:
    """Versions, ONNX Runtime providers, the device 'auto' picks, and the cache folder."""
    import onnxruntime as ort

    from .. import backends, config
    from ..estimator import versions

    for name, v in versions().items():
        typer.echo(f"{name:<12}{v}")
    typer.echo(f"{'providers':<12}{', '.join(ort.get_available_providers())}")
    problem = backends.cuda_problem()
    typer.echo(f"{'device':<12}{'cuda' if problem is None else 'cpu (' + problem + ')'}")
    unusable = config.cache_problem(writable=True)  # a report: say what is wrong, do not fail on it
    typer.echo(f"{'cache':<12}{config.cache_location()}" + ("" if unusable is None else f" (unusable: {unusable})"))
    from ..quantize import has_vnni

    vnni = has_vnni()
    typer.echo(f"{'int8':<12}{'VNNI: precision auto → int8' if vnni else 'no VNNI: precision auto → fp32'}")
