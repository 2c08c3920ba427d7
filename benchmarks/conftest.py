"""pytest-benchmark suites: ``python -m pytest benchmarks --benchmark-only`` (not in the default run).

Files named ``bench_*.py`` are collected here (pytest's default pattern is ``test_*.py``);
other scripts in this folder (``gpu_kernels.py``, ``training_speed.py``, ...) are run by hand.
Every suite works at the paper's settings: 224² input, density 10 % (5,000 points), k = 100.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # A file named on the command line is collected by pytest itself: do not add it twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The issue #3 ratios of ``bench_kernels`` (printed here: output of a fixture's teardown is captured)."""
    kernels = sys.modules.get("bench_kernels")
    if kernels is not None and kernels.RESULTS:
        terminalreporter.write_sep("-", "fastvlad kernels, per image (medians) and the issue #3 ratios")
        for line in kernels.ratio_lines(dict(kernels.RESULTS)):
            terminalreporter.write_line("  " + line)
    precision = sys.modules.get("bench_precision")
    if precision is not None and precision.RESULTS:
        terminalreporter.write_sep("-", "fastvlad float32 against int8 (issue 15), medians of interleaved rounds")
        for line in precision.summary_lines():
            terminalreporter.write_line("  " + line)


#: Images per end-to-end batch: one CPU batch (fastvlad.config.CPU_BATCH_SIZE).
N_IMAGES = 8
K = 100


@pytest.fixture(scope="session")
def backbone():  # type: ignore[no-untyped-def]
    from fastvlad.backbone import Backbone

    return Backbone()


@pytest.fixture(scope="session")
def demo_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``N_IMAGES`` demo images (306×448 PNG, like the nanofiber tiles), classes interleaved."""
    from PIL import Image

    from fastvlad import demo

    folder = tmp_path_factory.mktemp("bench-demo")
    paths = []
    for i in range(2 * N_IMAGES):
        path = folder / f"demo_{i:03d}.png"
        Image.fromarray(demo.make_image(i % 4, (306, 448), np.random.default_rng([0, i]))).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="session")
def settings():  # type: ignore[no-untyped-def]
    from fastvlad.encoder import EncoderSettings

    return EncoderSettings()


@pytest.fixture(scope="session")
def one_image(demo_paths: list[str], backbone, settings):  # type: ignore[no-untyped-def]
    """Network input (1, 3, 224, 224), taps [(h, w, C)] and points (S, 2) of the first image."""
    from fastvlad.encoder import batch_points

    pixels = settings.preprocess(demo_paths[0])[None]
    taps = [m[0] for m in backbone(pixels)]
    return pixels, taps, batch_points(pixels, settings)[0]


@pytest.fixture(scope="session")
def hypercolumns(one_image, settings):  # type: ignore[no-untyped-def]
    """The first image's hypercolumns (S, 1472) float32."""
    from fastvlad import reference

    _, taps, points = one_image
    return reference.sample_hypercolumns(taps, points, settings.interpolation)


@pytest.fixture(scope="session")
def centres(hypercolumns: np.ndarray) -> np.ndarray:
    """k = 100 hypercolumns drawn at random: assignment and VLAD cost the same for any centres."""
    rng = np.random.default_rng(0)
    return hypercolumns[rng.choice(len(hypercolumns), K, replace=False)].copy()
