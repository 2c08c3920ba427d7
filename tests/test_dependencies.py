"""Every package fastvlad imports is declared in pyproject.toml, and a missing one is a clear error.

A fresh ``pip install -e .`` has only what pyproject declares: an import of an undeclared package
passes on a developer's machine (where it happens to be installed) and fails on the user's
(scikit-image was used by the default ``normalize="stretch"`` and declared nowhere)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

from fastvlad.errors import MissingDependencyError

ROOT = Path(__file__).resolve().parents[1]
#: Import name → the distributions that provide it, where the two names differ.
PROVIDED_BY = {"PIL": {"pillow"}, "sklearn": {"scikit-learn"}, "skimage": {"scikit-image"},
               "rsciio": {"rosettasciio"}, "xgboost": {"xgboost", "xgboost-cpu"}, "faiss": {"faiss-cpu"},
               "cupy": {"cupy-cuda12x", "cupy-cuda13x"}, "distributed": {"dask"},  # dask[distributed]
               "onnxruntime": {"onnxruntime", "onnxruntime-gpu"}}
#: Imported, but owned by a declared package or optional and guarded (an ImportError is handled).
NOT_DECLARED_ON_PURPOSE = {
    "llvmlite": "Numba's own dependency, the version Numba pins",
    "dask_cuda": "optional for a multi-GPU Dask cluster; distributed.local_cluster says to install it",
    "psutil": "optional fallback for the memory figure where /proc is missing (bench/machine.py)",
}


def imported_packages() -> dict[str, str]:
    """Top-level third-party module → the first fastvlad file importing it."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "fastvlad").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top != "fastvlad" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def declared() -> set[str]:
    """Distribution names in ``dependencies`` and every extra, lower-case, without versions or extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = list(project["dependencies"]) + [s for extra in project["optional-dependencies"].values() for s in extra]
    return {re.match(r"[A-Za-z0-9_.\-]+", s).group(0).lower().replace("_", "-") for s in specs}  # type: ignore[union-attr]


def test_every_imported_package_is_declared() -> None:
    have = declared()
    missing = {module: where for module, where in imported_packages().items()
               if module not in NOT_DECLARED_ON_PURPOSE and not PROVIDED_BY.get(module, {module.lower()}) & have}
    assert not missing, f"imported but not in pyproject.toml (dependencies or an extra): {missing}"


def test_the_default_normalisation_is_a_base_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert any(s.startswith("scikit-image") for s in project["dependencies"])


@pytest.fixture
def no_skimage(monkeypatch: pytest.MonkeyPatch) -> None:
    """scikit-image made unimportable, as on an installation that lacks it."""
    for name in [m for m in sys.modules if m == "skimage" or m.startswith("skimage.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "skimage", None)


def test_a_missing_scikit_image_is_named_before_any_image(no_skimage: None) -> None:
    from fastvlad import FastVLAD

    images = [np.random.default_rng(i).integers(0, 255, (64, 64), dtype=np.uint8) for i in range(4)]
    with pytest.raises(MissingDependencyError, match="scikit-image"):
        FastVLAD(on_error="skip").fit(images, ["a", "b"] * 2)
    FastVLAD(normalize="none").get_params()  # 'none' needs no scikit-image


def test_an_import_failing_while_converting_is_not_an_unreadable_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """A converter's ImportError is the installation's fault: never an ImageReadError that
    on_error='skip' would quietly skip, image after image."""
    from fastvlad import images, intensity

    def broken(values: np.ndarray) -> np.ndarray:
        raise ModuleNotFoundError("No module named 'skimage'")

    monkeypatch.setitem(intensity.NORMALIZATIONS, "stretch", broken)
    prep = images.Preprocess(size=(32, 32), normalize="stretch")
    with pytest.raises(MissingDependencyError, match="reinstall"):
        prep(np.zeros((40, 40), dtype=np.uint8) + np.arange(40, dtype=np.uint8))
