"""The import graph goes down the layers only: models and datasets below harness; harness's shared modules below its
jobs; evaluate and results below measure, measure below train and report, train below the sweep; the entry shims
on top. No module imports one above it, no two jobs on one layer import each other, and no import loops."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "datasets", "harness")
JOBS = {"evaluate": 2, "results": 2, "measure": 3, "train": 4, "report": 4, "sweep": 5}
ENTRY_SHIMS = {"harness.bench", "harness.cost", "harness.gpu_check", "harness.plan"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules a file imports, at any depth of its code (imports inside functions count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from harness import storage` imports the module harness.storage, not only the package
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                      for a in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def layer(module: str) -> tuple[int, str]:
    """A module's layer and its group: (0, package) for models and datasets, (1, 'harness') for the shared
    modules, (n, job) for a job's package, and the top for the entry shims."""
    parts = module.split(".")
    if parts[0] != "harness":
        return 0, parts[0]
    if module in ENTRY_SHIMS:
        return 9, module
    if len(parts) > 1 and parts[1] in JOBS:
        return JOBS[parts[1]], parts[1]
    return 1, "harness"


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}


def backward(edges: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a layer or across to another group on the same layer."""
    wrong = []
    for source, targets in edges.items():
        for target in targets:
            (here, group), (there, other) = layer(source), layer(target)
            if there > here or (there == here and group != other):
                wrong.append(f"{source} imports {target}")
    return sorted(wrong)


def loops(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import loops (strongly connected components of more than one module), by Tarjan's algorithm."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_one_above_it_or_beside_it():
    assert backward(graph()) == []


def test_there_are_no_import_loops():
    assert loops(graph()) == []


def test_models_import_only_torch_and_datasets_never_harness():
    """Besides the standard library."""
    known = modules()
    for name, path in known.items():
        roots = {n.split(".")[0] for n in imports(path, known)}
        if name.startswith("models"):
            assert roots <= {"models"}, f"{name} imports {roots - {'models'}}"
            third = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.Import) for alias in node.names}
            third |= {node.module.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                      if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
            assert third - set(sys.stdlib_module_names) <= {"torch", "models"}, f"{name} imports {sorted(third)}"
        if name.startswith("datasets"):
            assert "harness" not in roots, f"{name} imports harness"


@pytest.mark.parametrize("edges, wrong", [
    ({"harness.evaluate.metrics": {"harness.train.worker"}}, ["harness.evaluate.metrics imports harness.train.worker"]),
    ({"harness.train.worker": {"harness.report.runs"}}, ["harness.train.worker imports harness.report.runs"]),
    ({"harness.io": {"harness.cli"}}, []),
    ({"harness.errors": {"harness.evaluate.metrics"}}, ["harness.errors imports harness.evaluate.metrics"]),
    ({"datasets.mars": {"harness.io"}}, ["datasets.mars imports harness.io"]),
    ({"harness.sweep.driver": {"harness.train.plan"}}, []),
])
def test_the_check_fails_on_a_backward_import(edges, wrong):
    """The layer check sees an import up (evaluate -> train), across (train -> report) and out of the base."""
    assert backward(edges) == wrong


def test_the_loop_check_finds_a_loop():
    assert loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
