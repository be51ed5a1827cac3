"""The package layout's import rules, checked on the source (AST) and in a fresh interpreter.

Layers, bottom to top: the shared base (errors, options, progress, files, malloc_tuning) → data →
models → attribution → importance → evaluation → report → workflows → cli / viewer. A module may
import its own layer and the ones below; only ``viewer/`` imports napari, Qt, magicgui or vispy;
only ``cli/`` imports argparse; imports sit at module top except the optional heavy packages.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import napari_agg2exp

PKG = "napari_agg2exp"
ROOT = Path(napari_agg2exp.__file__).parent
LAYERS = {"errors": 0, "options": 0, "progress": 0, "files": 0, "malloc_tuning": 0, "data": 1, "models": 2,
          "attribution": 3, "importance": 4, "evaluation": 5, "report": 6, "workflows": 7, "cli": 8, "viewer": 8}
GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy", "superqt")
#: optional packages that may be imported where they are used (inside functions), and only there
OPTIONAL = ("napari", "qtpy", "magicgui", "vispy", "superqt", "dask", "distributed", "nnunetv2",
            "dynamic_network_architectures", "pyarrow")


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, at module top?, line) for every import outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, bool, int]] = []

    def visit(node, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, top, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module
                for a in child.names:  # `from pkg import submodule` imports the submodule
                    found.append((f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod, top, child.lineno))
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    return found


IMPORTS = {m: _imports(m, p) for m, p in MODULES.items()}


def _area(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PKG else None


def _root(module: str) -> str:
    return module.split(".")[0]


def test_every_module_has_a_layer():
    for m in MODULES:
        if m != PKG:
            assert _area(m) in LAYERS, f"{m}: place it in one of the layers {sorted(LAYERS)}"


def test_gui_packages_only_in_viewer():
    bad = [f"{m}:{line} imports {i}" for m, imps in IMPORTS.items() for i, _, line in imps
           if _root(i) in GUI and _area(m) != "viewer"]
    assert not bad, bad


def test_argparse_only_in_cli():
    bad = [f"{m}:{line}" for m, imps in IMPORTS.items() for i, _, line in imps if i == "argparse" and _area(m) != "cli"]
    assert not bad, bad


def test_layers_import_only_downwards():
    bad = []
    for m, imps in IMPORTS.items():
        if m == PKG:
            continue
        for i, _, line in imps:
            if _root(i) == PKG and _area(i) is not None and LAYERS[_area(i)] > LAYERS[_area(m)]:
                bad.append(f"{m}:{line} ({_area(m)}) imports {i} ({_area(i)})")
            if _area(i) in ("cli", "viewer") and _area(m) != _area(i):
                bad.append(f"{m}:{line} imports {i}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {m: {i for i, _, _ in imps if i in MODULES and i != m} for m, imps in IMPORTS.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def strongconnect(v):  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in graph:
        if v not in index:
            strongconnect(v)
    assert not cycles, cycles


def test_imports_at_module_top_except_optional_packages():
    bad = [f"{m}:{line} imports {i} inside a function" for m, imps in IMPORTS.items() for i, top, line in imps
           if not top and _root(i) not in OPTIONAL]
    assert not bad, "\n".join(bad)


def test_no_source_file_over_500_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


@pytest.mark.parametrize("package", ["attribution", "importance", "models", "workflows", "evaluation", "report",
                                     "data", "cli.main"])
def test_core_imports_no_gui_in_a_fresh_interpreter(package):
    code = (f"import sys, {PKG}.{package}\n"
            f"gui = sorted(m for m in sys.modules if m.split('.')[0] in {GUI!r})\n"
            "print(','.join(gui))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {package} loaded {out.stdout.strip()}"


def test_public_api_is_lazy_and_complete():
    code = (f"import sys, {PKG}\n"
            "print(any(m.split('.')[0] == 'torch' for m in sys.modules))\n"
            f"missing = [n for n in {PKG}.__all__ if getattr({PKG}, n, None) is None]\n"
            "print(missing)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "False", "importing the package must not import torch"
    assert out[1] == "[]", out[1]


def _public_functions():
    """(module, qualified name, node) of every public function and method of a public class."""
    for m, p in MODULES.items():
        if any(part.startswith("_") for part in m.split(".")[1:]):
            continue
        tree = ast.parse(p.read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                yield m, node.name, node
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                            not item.name.startswith("_") or item.name == "__init__"):
                        yield m, f"{node.name}.{item.name}", item


def test_public_signatures_have_type_hints():
    missing = []
    for m, name, fn in _public_functions():
        args = fn.args
        params = [a for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")]
        params += [a for a in (args.vararg, args.kwarg) if a is not None]
        bare = [a.arg for a in params if a.annotation is None]
        no_return = fn.returns is None and not name.endswith("__init__")
        if bare or no_return:
            missing.append(f"{m}.{name}: " + ", ".join(bare + (["return"] if no_return else [])))
    assert not missing, f"{len(missing)} public signatures without full type hints:\n" + "\n".join(missing)
