"""The package's shape (issue 16), read from the source with ``ast`` by ``benchmarks/import_graph.py``:
no import circles inside ``fastvlad/``, no private name of one module used in another, no private
``FastVLAD`` method called outside ``estimator.py``, no device dispatch by name in the stage modules,
and the command line only in ``fastvlad/cli/``."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_import_graph() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_import_graph", ROOT / "benchmarks" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


import_graph = _load_import_graph()

#: Import circles that may stay for now, each as the set of its modules; nothing else may join one.
ALLOWED_CIRCLES: set[frozenset[str]] = set()


def test_no_import_circles() -> None:
    found = import_graph.circles(import_graph.graph(ROOT))
    new = [c for c in found if frozenset(c) not in ALLOWED_CIRCLES]
    assert not new, "import circles in fastvlad/ (module -> module it imports):\n" + \
        "\n".join("  " + " -> ".join(c) for c in new)
    stale = ALLOWED_CIRCLES - {frozenset(c) for c in found}
    assert not stale, f"allowed circles that are gone; remove them from ALLOWED_CIRCLES: {sorted(map(sorted, stale))}"


def test_no_private_name_of_one_module_used_in_another() -> None:
    uses = import_graph.private_uses(ROOT)
    assert not uses, "private names used outside their module (give them a public name or move them):\n" + \
        "\n".join(f"  {f}:{line}: {code}" for f, line, code in uses)


def test_no_private_estimator_methods_outside_estimator() -> None:
    calls = import_graph.private_calls(ROOT)
    assert not calls, "private FastVLAD methods called outside estimator.py:\n" + \
        "\n".join(f"  {file}:{line}: {code}(...)" for file, line, code in calls)


#: The stage modules and the encoder call the backend object; none of them asks which device it is on.
STAGES = ("fastvlad.hypercolumn", "fastvlad.projection", "fastvlad.codebook", "fastvlad.vlad", "fastvlad.encoder")


def test_stages_never_dispatch_on_device_names() -> None:
    found = import_graph.dispatch_by_name(ROOT)
    assert all(name in import_graph.modules(ROOT) for name in STAGES)
    named = {name: found[name] for name in STAGES if found.get(name)}
    assert not named, f"impl ==, device == or __import__('cupy') in stage modules: {named}"


def test_the_command_line_stays_in_cli() -> None:
    """Library modules neither import typer nor hold ``*_command`` functions."""
    found = []
    for name, path in import_graph.modules(ROOT).items():
        if name == "fastvlad.cli" or name.startswith("fastvlad.cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found += [f"{name}:{node.lineno} imports {a.name}" for a in node.names
                          if a.name.split(".")[0] in ("typer", "click")]
            elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in \
                    ("typer", "click"):
                found.append(f"{name}:{node.lineno} imports from {node.module}")
            elif isinstance(node, ast.FunctionDef) and node.name.endswith("_command"):
                found.append(f"{name}:{node.lineno} defines {node.name}")
    assert not found, "\n".join(found)


def test_explain_imports_no_command_line() -> None:
    loaded = import_graph.loaded_by(ROOT, "fastvlad.explain")
    assert "typer" not in loaded.watched and "click" not in loaded.watched
    assert not [m for m in loaded.package if m.startswith("fastvlad.cli")]


# -- the reader itself, on a made-up package ---------------------------------------------------------
FILES = {
    "__init__.py": "from .estimator import FastVLAD\n__version__ = '1'\n",
    "estimator.py": "from . import __version__\n\nclass FastVLAD:\n    def __init__(self): ...\n"
                    "    def _hidden(self): ...\n    def public(self): ...\n",
    "a.py": "def f():\n    import fastvlad.b\n",  # function-level, absolute
    "b.py": "from .sub.c import x\n",
    "sub/__init__.py": "",
    "sub/c.py": "from typing import TYPE_CHECKING\nfrom ..a import f\nif TYPE_CHECKING:\n    from .. import d\nx = 1\n",
    "d.py": "from .sub import c\n",  # a submodule of a package d is not in: runs sub/__init__ too
    "e.py": "def g(m):\n    return m._hidden(), m.public(), m.__init__()\n"
            "from . import a\nfrom .a import _q, f\nx = a._p, a.f, a.__name__\n",
}


@pytest.fixture
def made_up(tmp_path: Path) -> Path:
    for rel, text in FILES.items():
        path = tmp_path / "fastvlad" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_reader_finds_every_kind_of_import(made_up: Path) -> None:
    edges = import_graph.graph(made_up)
    assert set(edges) == {"fastvlad", "fastvlad.estimator", "fastvlad.a", "fastvlad.b", "fastvlad.sub",
                          "fastvlad.sub.c", "fastvlad.d", "fastvlad.e"}
    assert set(edges["fastvlad.estimator"]) == {"fastvlad"}  # __version__ is not a module: the package
    assert set(edges["fastvlad.a"]) == {"fastvlad.b"}
    assert set(edges["fastvlad.sub.c"]) == {"fastvlad.a"}  # TYPE_CHECKING imports never run
    assert set(edges["fastvlad.d"]) == {"fastvlad.sub.c", "fastvlad.sub"}
    assert import_graph.circles(edges) == [["fastvlad", "fastvlad.estimator", "fastvlad"],
                                           ["fastvlad.a", "fastvlad.b", "fastvlad.sub.c", "fastvlad.a"]]


def test_reader_finds_private_names_used_across_modules(made_up: Path) -> None:
    e = str(Path("fastvlad/e.py"))
    assert import_graph.private_uses(made_up) == [(e, 4, "from fastvlad.a import _q"), (e, 5, "a._p")]


def test_reader_finds_private_modules_and_scripts_using_privates(tmp_path: Path) -> None:
    """A private module (``sub/_priv.py``) read from outside its package, and a script in
    ``benchmarks/`` using a package module's private name, are found; the package's own use is not."""
    files = {"fastvlad/__init__.py": "", "fastvlad/a.py": "_p = 1\n", "fastvlad/sub/__init__.py": "",
             "fastvlad/sub/_priv.py": "y = 1\n", "fastvlad/sub/g.py": "from ._priv import y\n",
             "fastvlad/f.py": "from .sub._priv import y\n",
             "benchmarks/script.py": "from fastvlad import a\nimport fastvlad.sub._priv\nx = a._p\n"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    script = str(Path("benchmarks/script.py"))
    assert import_graph.private_uses(tmp_path) == [
        (script, 2, "import fastvlad.sub._priv"), (script, 3, "a._p"),
        (str(Path("fastvlad/f.py")), 1, "from fastvlad.sub._priv import ...")]


def test_reader_finds_private_calls(made_up: Path) -> None:
    assert import_graph.private_methods(made_up) == {"_hidden"}
    assert import_graph.private_calls(made_up) == [(str(Path("fastvlad/e.py")), 2, "m._hidden")]


def test_every_subpackage_ships() -> None:
    """``pyproject.toml`` lists packages by name: a new sub-package left out of it works in the
    editable install and is missing from the wheel (fastvlad.backends once was)."""
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fastvlad").rglob("__init__.py")}
    assert found <= listed, f"sub-packages missing from [tool.setuptools] packages: {sorted(found - listed)}"
