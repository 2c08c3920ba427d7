"""The shape of the ``fastvlad/`` package, read from its source with ``ast`` (issue 16).

    python benchmarks/import_graph.py [ROOT]

ROOT is a checkout (default: the one this script is in). Prints the number of modules, the
import edges between them, the import circles, the calls to private ``FastVLAD`` methods
outside ``estimator.py`` and the private names of one module used in another (file:line), the
``impl ==`` / ``device ==`` / ``__import__("cupy")`` occurrences per module, and what ``import fastvlad`` and ``import fastvlad.explain`` load (in a
fresh interpreter on ROOT).

The graph: every ``.py`` file under ``fastvlad/`` is a module (``cli/__init__.py`` is
``fastvlad.cli``), and so is ``fastvlad.kernels`` (the root's ``kernels/``). Module-level and function-level imports both count; imports under ``if
TYPE_CHECKING:`` do not (they never run). ``from . import x`` points at the module ``x`` when
there is one, else at the package (``from . import __version__`` depends on ``fastvlad``
itself). Importing ``a.b.c`` also runs ``a.b``'s ``__init__``, so an import from outside
package ``a.b`` depends on ``a.b`` too. ``tests/test_architecture.py`` uses these functions.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "fastvlad"
#: Packages installed from outside ``fastvlad/`` (pyproject's ``package-dir``): name → folder.
MAPPED = {"fastvlad.kernels": "kernels"}
#: Third-party packages whose presence after an import is worth a line.
WATCHED = ("typer", "click", "rich", "onnx", "onnxruntime", "xgboost", "sklearn", "numba", "scipy", "matplotlib",
           "PIL", "dask", "distributed", "cupy")
#: Device dispatch by name, counted per module.
PATTERNS = {"impl ==": re.compile(r"\bimpl\s*=="), "device ==": re.compile(r"\bdevice\s*=="),
            '__import__("cupy")': re.compile(r"""__import__\(\s*["']cupy["']\s*\)""")}


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package under ``root``: dotted name → file."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for name, folder in MAPPED.items():
        for path in sorted((root / folder).glob("*.py")):
            out[name if path.stem == "__init__" else f"{name}.{path.stem}"] = path
    return out


def _is_package(name: str, mods: dict[str, Path]) -> bool:
    return mods[name].name == "__init__.py"


def _package_of(name: str, mods: dict[str, Path]) -> str:
    """The package a relative import in module ``name`` starts from."""
    return name if _is_package(name, mods) else name.rpartition(".")[0]


def _from_source(node: ast.ImportFrom, here: str) -> str:
    """The dotted module a ``from … import`` reads from, its relative dots resolved from package ``here``."""
    if not node.level:
        return node.module or ""
    base = here.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (their ``else`` runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, mods: dict[str, Path]) -> dict[str, int]:
    """The package's modules that module ``name`` imports: target → first line that does."""
    tree = ast.parse(mods[name].read_text(encoding="utf-8"))
    here = _package_of(name, mods)
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in mods:  # `import fastvlad.x.attr`-like paths: the longest module
            target = target.rpartition(".")[0]
        if not target or target == name:
            return
        found.setdefault(target, line)
        # the packages above the target that are not already above (or are) the importer run too
        parts = target.split(".")
        for i in range(1, len(parts)):
            pkg = ".".join(parts[:i])
            if pkg in mods and pkg != name and not name.startswith(pkg + "."):
                found.setdefault(pkg, line)

    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            source = _from_source(node, here)
            if source != PACKAGE and not source.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in mods else source, node.lineno)
    return found


def graph(root: Path) -> dict[str, dict[str, int]]:
    """module → {imported module: line}, for every module of the package under ``root``."""
    mods = modules(root)
    return {name: imports_of(name, mods) for name in mods}


def circles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest circle per pair of modules that import each other, directly or through others.

    Every strongly connected component is reported through each of its edges' shortest way
    back, deduplicated, so two separate circles in one component both show."""
    found: dict[tuple[str, ...], list[str]] = {}
    for comp in _components(edges):
        members = set(comp)
        for a in sorted(comp):
            for b in sorted(edges[a]):
                if b not in members:
                    continue
                path = _shortest_path(edges, b, a, members)
                cycle = [a, *path]  # a → b … → a
                i = cycle.index(min(cycle[:-1]))
                canon = tuple(cycle[i:-1] + cycle[:i])
                found.setdefault(canon, [*canon, canon[0]])
    return [found[c] for c in sorted(found)]


def _shortest_path(edges: dict[str, dict[str, int]], start: str, goal: str, within: set[str]) -> list[str]:
    prev: dict[str, str | None] = {start: None}
    queue = [start]
    for node in queue:
        if node == goal:
            break
        for nxt in sorted(edges[node]):
            if nxt in within and nxt not in prev:
                prev[nxt] = node
                queue.append(nxt)
    path: list[str] = []
    node_or_none: str | None = goal
    while node_or_none is not None:
        path.append(node_or_none)
        node_or_none = prev[node_or_none]
    return path[::-1]


def _components(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def private_methods(root: Path) -> set[str]:
    """Names of ``FastVLAD``'s private methods (``_name``, not dunders), from ``estimator.py``."""
    tree = ast.parse((root / PACKAGE / "estimator.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "FastVLAD":
            return {f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and f.name.startswith("_") and not f.name.endswith("__")}
    raise LookupError(f"no class FastVLAD in {root / PACKAGE / 'estimator.py'}")


def private_calls(root: Path) -> list[tuple[str, int, str]]:
    """Calls ``X._name(...)`` of a private ``FastVLAD`` method outside ``estimator.py``: (file, line, code)."""
    names = private_methods(root)
    out = []
    for name, path in modules(root).items():
        if name == f"{PACKAGE}.estimator":
            continue
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names:
                out.append((str(path.relative_to(root)), node.lineno, ast.unparse(node.func)))
    return sorted(out)


def _module_aliases(here: str, tree: ast.AST, mods: dict[str, Path]) -> dict[str, str]:
    """Local names that a module of package ``here`` binds to the package's modules: alias → dotted module."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in mods:
                    out[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source = _from_source(node, here)
            for alias in node.names:
                if f"{source}.{alias.name}" in mods:
                    out[alias.asname or alias.name] = f"{source}.{alias.name}"
    return out


def _private_module_outside(source: str, package: str) -> bool:
    """Whether dotted module ``source`` has a private segment (``pkg._mod``) and ``package`` (the
    importer's; "" for a script) lies outside the package that segment belongs to."""
    parts = source.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            owner = ".".join(parts[:i])
            return package != owner and not package.startswith(owner + ".")
    return False


def _private_uses_in(path: Path, here: str, name: str, mods: dict[str, Path], root: Path) -> list[tuple[str, int, str]]:
    """``_private_uses``' findings in one file: ``name`` its module ("" for a script), ``here`` its package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases = _module_aliases(here, tree, mods)
    file = str(path.relative_to(root))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            source = _from_source(node, here)
            hits = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if source in mods and source != name and hits:
                out.append((file, node.lineno, f"from {source} import {', '.join(hits)}"))
            elif source in mods and _private_module_outside(source, here):
                out.append((file, node.lineno, f"from {source} import ..."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in mods and _private_module_outside(alias.name, here):
                    out.append((file, node.lineno, f"import {alias.name}"))
        elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            dotted = ast.unparse(node.value)
            head, _, rest = dotted.partition(".")
            target = aliases.get(head, "") + (f".{rest}" if rest and head in aliases else "")
            if target in mods and target != name:
                out.append((file, node.lineno, ast.unparse(node)))
    return out


def private_uses(root: Path) -> list[tuple[str, int, str]]:
    """Private names (``_x``, not dunders) of one package module used from another module or from a
    script in ``benchmarks/``, as ``module._x`` or ``from module import _x``, and private modules
    (``pkg._mod``) imported from outside ``pkg``: (file, line, code)."""
    mods = modules(root)
    out = []
    for name, path in mods.items():
        out += _private_uses_in(path, _package_of(name, mods), name, mods, root)
    for path in sorted((root / "benchmarks").glob("*.py")):
        out += _private_uses_in(path, "", "", mods, root)
    return sorted(out)


def dispatch_by_name(root: Path) -> dict[str, dict[str, int]]:
    """Per module, how often each of ``PATTERNS`` occurs (modules without any left out)."""
    out = {}
    for name, path in modules(root).items():
        text = path.read_text(encoding="utf-8")
        counts = {p: len(rx.findall(text)) for p, rx in PATTERNS.items()}
        if any(counts.values()):
            out[name] = counts
    return out


_PROBE = """
import json, sys
before = set(sys.modules)
import importlib
importlib.import_module(sys.argv[1])
import fastvlad
new = sorted(set(sys.modules) - before)
print(json.dumps({"file": fastvlad.__file__, "package": [m for m in new if m.split('.')[0] == 'fastvlad'],
                  "watched": [w for w in json.loads(sys.argv[2]) if w in sys.modules], "modules": len(new)}))
"""


@dataclass
class Loaded:
    """What one import loaded: the package's modules, the ``WATCHED`` packages, all modules (count)."""

    package: list[str]
    watched: list[str]
    modules: int


def loaded_by(root: Path, module: str) -> Loaded:
    """What ``import module`` loads in a fresh interpreter that finds the package under ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, module, json.dumps(WATCHED)], cwd=root, env=env,
                          capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not str(out["file"]).startswith(str(root)):
        raise RuntimeError(f"imported {out['file']}, not the tree under {root}")
    return Loaded(out["package"], out["watched"], out["modules"])


def main(argv: list[str]) -> None:
    root = Path(argv[0] if argv else Path(__file__).resolve().parents[1]).resolve()
    mods = modules(root)
    edges = graph(root)
    print(f"tree: {root}")
    print(f"modules: {len(edges)}")
    print(f"import edges: {sum(len(e) for e in edges.values())}")
    for name, targets in edges.items():
        if targets:
            short = sorted(t.removeprefix(PACKAGE + ".") if t != PACKAGE else PACKAGE for t in targets)
            print(f"  {name.removeprefix(PACKAGE + '.') if name != PACKAGE else PACKAGE} -> {', '.join(short)}")
    found = circles(edges)
    print(f"circles: {len(found)}")
    for c in found:
        steps = [f"{a} ({mods[a].relative_to(root)}:{edges[a][b]})" for a, b in zip(c, c[1:])]
        print("  " + " -> ".join(steps) + f" -> {c[-1]}")
    calls = private_calls(root)
    print(f"private FastVLAD methods: {', '.join(sorted(private_methods(root)))}")
    print(f"calls to them outside estimator.py: {len(calls)}")
    for file, line, code in calls:
        print(f"  {file}:{line}: {code}(")
    uses = private_uses(root)
    print(f"private names of one module used in another: {len(uses)}")
    for file, line, code in uses:
        print(f"  {file}:{line}: {code}")
    dispatch = dispatch_by_name(root)
    totals = {p: sum(c[p] for c in dispatch.values()) for p in PATTERNS}
    print("dispatch by name: " + ", ".join(f"{p} {n}" for p, n in totals.items()))
    for name, counts in dispatch.items():
        print(f"  {name}: " + ", ".join(f"{p} {n}" for p, n in counts.items() if n))
    for module in (PACKAGE, f"{PACKAGE}.explain"):
        info = loaded_by(root, module)
        print(f"import {module}: {info.modules} modules, {len(info.package)} of them {PACKAGE}'s; "
              f"watched third-party: {', '.join(info.watched) or 'none'}")
        print(f"  typer loaded: {'typer' in info.watched}")
        print("  " + ", ".join(m.removeprefix(PACKAGE + ".") for m in info.package))


if __name__ == "__main__":
    main(sys.argv[1:])
