"""Each DVC stage depends on exactly the code it runs: every project module its command imports (followed
statically, imports inside functions included), and nothing it does not run. A module missing from a stage's deps
is a change DVC would not rerun the stage for; a folder dep holding unrun modules reruns it for nothing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("harness", "models", "datasets")


def stages() -> dict[str, dict]:
    """dvc.yaml's stages, a foreach stage by its template (every item runs the same code)."""
    found = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in found.items()}


def module_file(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def holds_code(path: Path) -> bool:
    """False for a package's __init__.py that is only a docstring."""
    body = ast.parse(path.read_text()).body
    return not all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def imported(entry: str) -> set[str]:
    """The project files `python -m entry` runs: its module, its packages' __init__.py, and every project module it
    imports, transitively, as paths relative to the project root."""
    todo, seen = [entry], set()
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                todo += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return {str(p.relative_to(ROOT)) for p in seen if holds_code(p)}


def entry_module(command: str) -> str:
    module = re.search(r"python -m (\S+)", command).group(1)
    return f"{module}.__main__" if (ROOT / Path(*module.split(".")) / "__main__.py").exists() else module


def under(path: str, dep: str) -> bool:
    return path == dep or path.startswith(dep.rstrip("/") + "/")


@pytest.mark.parametrize("name", sorted(stages()))
def test_a_stage_depends_on_exactly_the_code_it_runs(name):
    stage = stages()[name]
    runs = imported(entry_module(stage["cmd"]))
    code = [d for d in stage["deps"] if any(under(d, p) for p in PACKAGES)]
    missing = sorted(f for f in runs if not any(under(f, d) for d in code))
    assert not missing, f"{name}: runs {missing} but does not depend on them"
    for dep in code:
        held = {str(p.relative_to(ROOT)) for p in (ROOT / dep).rglob("*.py")} if (ROOT / dep).is_dir() else {dep}
        unrun = sorted(f for f in held if f not in runs and holds_code(ROOT / f))
        assert not unrun, f"{name}: depends on {dep}, which holds {unrun} that it never runs"


def test_the_import_walk_sees_imports_inside_functions():
    """Training imports its driver at module level and, through it, precision and the models; a package's
    docstring-only __init__.py is no code; the sweep is not part of training."""
    runs = imported("harness.train.__main__")
    assert {"harness/train/driver.py", "harness/precision.py", "models/resnet.py"} <= runs
    assert "harness/sweep/driver.py" not in runs and "harness/__init__.py" not in runs


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_param_a_stage_names_is_in_params_yaml(name):
    """DVC refuses to run a stage whose params key is missing from params.yaml (a default in config.py is not
    enough)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]
    items = stage.get("foreach") if isinstance(stage.get("foreach"), list) else [None]
    for key in stage.get("do", stage).get("params", []):
        for item in items:
            node = params
            for part in key.replace("${item}", str(item)).split("."):
                if "${" in part:
                    break  # a foreach key over a params mapping: those keys exist by construction
                assert isinstance(node, dict) and part in node, f"{name}: param {key} is not in params.yaml"
                node = node[part]
