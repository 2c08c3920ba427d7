"""``fastvlad bench``: the options of a bench run (``fastvlad.bench`` measures), its report and
files."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import typer

from ..bench import (
    PAPER_DENSITY,
    PAPER_IMAGES,
    PAPER_K,
    BenchConfig,
    report_lines,
    run,
    write_json,
)
from ..errors import WriteError


def bench_command(
    images: int = typer.Option(64, help="Images to encode and train on (demo images unless --data)."),
    data: Optional[Path] = typer.Option(None, help="Dataset folder or CSV manifest instead of demo images."),
    demo_size: str = typer.Option("306x448", help="Size HxW of the generated demo images."),
    density: Optional[float] = typer.Option(None, help="Density in % (default: the estimator's)."),
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Codebook size (default: the estimator's)."),
    image_size: Optional[str] = typer.Option(None, help="Network input N, HxW or 'native' (default: the estimator's)."),
    device: str = typer.Option("auto", metavar="[auto|cpu|cuda]", help="auto, cpu or cuda."),
    batch_size: Optional[int] = typer.Option(None, help="Images per backbone call (default: the device's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    cnn_images: int = typer.Option(64, help="Images for (a), the CNN alone on decoded batches."),
    reference_images: int = typer.Option(8, help="Images for (c), the paper's pipeline (≈10 s each at d = 10 %)."),
    reference_points: int = typer.Option(500, help="Points per image on which the reference's exact assignment is "
                                                   "timed (then extrapolated linearly)."),
    faithful: bool = typer.Option(True, help="Also time FastVLAD.faithful().fit when that exists."),
    peers: bool = typer.Option(True, help="Time scikit-learn MiniBatchKMeans and faiss k-means."),
    scaling: bool = typer.Option(False, help="Time and memory against images, density, k and image size."),
    scaling_images: int = typer.Option(64, help="Most images in the --scaling image-count series."),
    extrapolate_to: int = typer.Option(PAPER_IMAGES, help="Images to extrapolate training times to."),
    paper_workload: bool = typer.Option(False, help="The paper's workload: 3,200 images, density 10 %, k = 100 "
                                                    "(about an hour per CNN pass on 2 CPU cores)."),
    fp16: bool = typer.Option(False, help="Run the CNN on its float16 graph (for a GPU's tensor cores); the "
                                          "paper's pipeline in (c) then shares that CNN."),
    precision: Optional[str] = typer.Option(None, help="The CNN's precision: fp32, fp16, int8 or auto (default: the "
                                                     "estimator's). At int8 the run adds float32 against int8: the "
                                                     "CNN and the encoder, rounds interleaved."),
    precision_rounds: int = typer.Option(3, help="Rounds of that comparison."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write every figure as JSON."),
    plots: Optional[Path] = typer.Option(None, help="Folder for PNG scaling curves (needs --scaling)."),
) -> None:
    """Measure throughput per stage, the speed-up over the paper's pipeline and k-means peers."""
    if paper_workload:
        images, density, k = PAPER_IMAGES, PAPER_DENSITY, PAPER_K
    cfg = BenchConfig(images, data, demo_size, density, k, image_size, device, batch_size, seed, cnn_images,
                      reference_images, reference_points, faithful, peers, scaling, scaling_images, extrapolate_to,
                      fp16, precision=precision, precision_rounds=precision_rounds)
    _check_outputs(json_path, plots, data)
    with tempfile.TemporaryDirectory(prefix="fastvlad-bench-") as tmp:
        result = run(cfg, Path(tmp))
    for line in report_lines(result):
        typer.echo(line)
    if json_path:
        write_json(result, json_path)
        typer.echo(f"wrote {json_path}")
    if plots:
        if not result["scaling"]:
            typer.echo("--plots: nothing to plot without --scaling", err=True)
        else:
            from ..bench.scaling import plot_scaling

            for path in plot_scaling(result["scaling"], plots):
                typer.echo(f"wrote {path}")


def _check_outputs(json_path: Optional[Path], plots: Optional[Path], data: Optional[Path]) -> None:
    """Before the benchmark: ``WriteError`` when ``--json`` or a ``--plots`` file cannot be written,
    or is one of the ``--data`` files the run reads."""
    from .. import datasets
    from .._files import check_writable
    from ..bench.scaling import plot_files
    from . import outputs

    written = [check_writable(json_path)] if json_path else []
    if plots:
        if plots.exists() and not plots.is_dir():
            raise WriteError(f"--plots {plots}: is a file; give a folder for the PNG curves")
        written += [check_writable(path) for path in plot_files(plots)]
    if written and data is not None and data.exists():
        ds = datasets.load(data, require_labels=False)
        outputs.refuse_inputs(written, outputs.dataset_files(data, ds.paths))
