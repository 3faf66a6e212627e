"""requirements.lock pins what pyproject.toml asks for, and this environment was installed from it.

The install (`pip install -c requirements.lock -e ".[dev]"`, README and .ci/run) takes the lock as pip
constraints: exact pins, no extras, not the project itself.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text()
LOCK = (ROOT / "requirements.lock").read_text()


def direct_requirements(pyproject: str) -> list[Requirement]:
    """The project's dependencies and its dev extra, from pyproject.toml's text."""
    project = tomllib.loads(pyproject)["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def locked_versions(lock: str) -> dict[str, Version]:
    """{canonical name: version} of a lock's text; ValueError on a line pip constraints cannot take or that
    does not pin one exact version, and on a package pinned twice."""
    pins: dict[str, Version] = {}
    for line in lock.splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            raise ValueError(f"not a pin: {line!r}") from None
        specifiers = list(requirement.specifier)
        if requirement.extras or requirement.url or len(specifiers) != 1 or specifiers[0].operator != "==" \
                or "*" in specifiers[0].version:
            raise ValueError(f"not one exact version without extras: {line!r}")
        name = canonicalize_name(requirement.name)
        if name in pins:
            raise ValueError(f"{name} pinned twice")
        pins[name] = Version(specifiers[0].version)
    return pins


def unmet(required: list[Requirement], pins: dict[str, Version]) -> list[str]:
    """What is wrong with `pins` for `required`: each requirement they leave out or pin outside its specifier."""
    wrong = []
    for requirement in required:
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None:
            wrong.append(f"{requirement.name} is not in the lock")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            wrong.append(f"{requirement.name}: locked {pinned}, pyproject.toml asks {requirement.specifier}")
    return wrong


def not_as_locked(names: list[str], pins: dict[str, Version], installed=version) -> list[str]:
    """Each of `names` not installed at its locked version as pip's `==` reads it: a local label the lock
    leaves out (torch's +cpu) matches."""
    wrong = []
    for name in names:
        try:
            found = installed(name)
        except PackageNotFoundError:
            found = None
        wanted = pins.get(canonicalize_name(name))
        if found is None or wanted is None or not SpecifierSet(f"=={wanted}").contains(found, prereleases=True):
            wrong.append(f"{name}: {found or 'not'} installed, {wanted or 'not'} locked")
    return wrong


def test_every_direct_dependency_is_locked_within_pyprojects_bounds():
    assert unmet(direct_requirements(PYPROJECT), locked_versions(LOCK)) == []


def test_torch_is_locked_at_2_13_0_without_a_build_label():
    # One line for CPU and GPU machines: pip takes the local CPU wheel (2.13.0+cpu) here, the CUDA build on a GPU box.
    assert str(locked_versions(LOCK)["torch"]) == "2.13.0"


def test_the_lock_does_not_pin_the_project_itself():
    assert "nvan-bench" not in locked_versions(LOCK)  # which also refuses an `-e .` line


def test_the_checks_fail_on_a_doctored_lock():
    pins = locked_versions(LOCK)
    required = direct_requirements(PYPROJECT)
    assert unmet(required, pins | {"optuna": Version("4.9.0")}) == ["optuna: locked 4.9.0, pyproject.toml asks >=5.0"]
    assert unmet(required, {k: v for k, v in pins.items() if k != "ray"}) == ["ray is not in the lock"]
    assert unmet(direct_requirements(PYPROJECT.replace('"torch==2.13.0"', '"torch==2.14.0"')), pins) == [
        "torch: locked 2.13.0, pyproject.toml asks ==2.14.0"]
    for bad in ("optuna>=5.0", "ray[train]==2.60.0", "-e file:.", "numpy==2.*", "polars==2.1.0"):
        with pytest.raises(ValueError):
            locked_versions(f"{LOCK}\n{bad}\n")


def test_the_install_check_fails_on_other_versions():
    versions = {"torch": "2.13.0+cpu", "optuna": "5.1.0", "ray": "2.60.0"}
    pins = {"torch": Version("2.13.0"), "optuna": Version("5.0.0"), "ray": Version("2.60.0")}

    def lookup(name: str) -> str:
        if name not in versions:
            raise PackageNotFoundError(name)
        return versions[name]

    assert not_as_locked(["torch", "ray"], pins, lookup) == []
    assert not_as_locked(["optuna", "polars"], pins, lookup) == ["optuna: 5.1.0 installed, 5.0.0 locked",
                                                                 "polars: not installed, not locked"]
    assert not_as_locked(["torch"], {"torch": Version("2.13.0+cu130")}, lookup) == [
        "torch: 2.13.0+cpu installed, 2.13.0+cu130 locked"]


# ENVIRONMENT CHECK, not a check of the code: it fails where this venv was not installed from the lock
# (e.g. a plain `pip install -e ".[dev]"`, which takes the newest releases), so a CI run that skipped the
# lock says so instead of passing or failing on versions nobody chose.
def test_this_environment_was_installed_from_the_lock():
    names = [r.name for r in direct_requirements(PYPROJECT)]
    wrong = not_as_locked(names, locked_versions(LOCK))
    assert wrong == [], (f"this environment was not installed from requirements.lock ({'; '.join(wrong)}); "
                         f'install with: pip install -c requirements.lock -e ".[dev]"')
