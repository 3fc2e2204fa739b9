"""The package's import structure: no import circle, and every module imports on its own."""
import ast
import pathlib
import subprocess
import sys

import pytest

import segpost

PACKAGE = pathlib.Path(segpost.__file__).parent


def _modules():
    """{dotted name: (path, is_package)} of every Python module in the installed package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def import_graph():
    """{module: modules it imports}, from every import statement, at the top or inside a function.

    ``from X import a`` is an edge to ``X.a`` when that is a module, else to
    ``X``; the packages enclosing a module are never edges (they are
    importing already when it runs); importing ``X.Y`` also imports ``X``.
    """
    modules = _modules()
    graph = {}
    for name, (path, is_package) in modules.items():
        package = name.split(".") if is_package else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                found = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            for target in found:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # the module and the packages it sits in
                    enclosing = ".".join(parts[:i])
                    if enclosing in modules and enclosing != name and not (name + ".").startswith(enclosing + "."):
                        targets.add(enclosing)
        graph[name] = targets
    return graph


def _cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "segpost.crf.pruning" in graph["segpost.crf.model"]  # imported inside a method (Numba on first use)
    assert "segpost.lattice.cpu" in graph["segpost.lattice"]
    assert "segpost.crf.inputs" in graph["segpost.crf.model"]


def test_no_import_circle():
    # Every import statement counts, lazy ones too: a module that needs another's names sits above it.
    assert _cycles(import_graph()) == []


def test_every_module_imports_alone():
    # In a fresh interpreter each, from outside the source tree: no module relies on another having
    # been imported first.
    names = sorted(name for name in _modules() if not name.endswith("__main__"))
    tests = pathlib.Path(__file__).parent
    failures = []
    for name in names:
        code = f"import {name}"
        if name == "segpost.metrics.lightning":
            # conftest first: it lets the registry's CUDA-linked torchvision import (torchmetrics imports
            # it); it imports nothing of segpost.
            code = f"import sys; sys.path.insert(0, {str(tests)!r}); import conftest; {code}"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
        if result.returncode:
            failures.append(f"{name}: {result.stderr.strip().splitlines()[-1]}")
    assert not failures, failures
