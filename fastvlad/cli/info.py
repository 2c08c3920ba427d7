"""``fastvlad info``: versions, ONNX Runtime providers, the device 'auto' picks, the cache folder."""

from __future__ import annotations

from pathlib import Path

import typer


def cache_contents(folder: Path) -> str:
    """What the cache folder holds, in words ("the VGG16 graph 59 MB; 2 int8 copies 30 MB"), or "": each
    calibration set adds an int8 copy, and nothing removes one (a model calibrated on data that may be
    gone needs its own), so the user sees them grow here."""
    def sizes(pattern: str) -> list[int]:
        try:
            return [p.stat().st_size for p in folder.glob(pattern) if p.is_file()]
        except OSError:
            return []

    parts = [f"{what} {len(found)} file{'s' if len(found) != 1 else ''}, {sum(found) / 1e6:.0f} MB"
             for what, found in (("the VGG16 graph:", sizes("vgg16_taps*.onnx")), ("int8 copies:", sizes("int8.*.onnx")))
             if found]
    return "; ".join(parts)


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
    held = cache_contents(config.cache_location())
    if held:
        typer.echo(f"{'':<12}{held}")
    from ..quantize import has_vnni

    vnni = has_vnni()
    typer.echo(f"{'int8':<12}{'VNNI: precision auto → int8' if vnni else 'no VNNI: precision auto → fp32'}")
