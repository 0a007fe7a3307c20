"""The images' lock (requirements/services.txt) agrees with pyproject.toml and with the code.

The Dockerfile installs exactly the lock (`--require-hashes --no-deps`), so a dependency added to
pyproject.toml or imported by services/ but missing from the lock would only fail in a running
pod. These checks fail first, naming what to refresh (`nox -s lock`).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
SERVICES_IN = ROOT / "requirements" / "services.in"
LOCK = ROOT / "requirements" / "services.txt"


def requirements(lines: list[str]) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in (raw.split("#", 1)[0].strip() for raw in lines) if line]
    return {canonicalize_name(r.name): r for r in reqs}


def pyproject_dependencies() -> dict[str, Requirement]:
    return requirements(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def lock_pins() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from pip-compile's output (`name==v \\` then `--hash=` lines)."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = ""
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)", line)
        if match:
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), [])
        elif (h := re.match(r"^\s+--hash=(sha256:[0-9a-f]{64})", line)) and current:
            pins[current][1].append(h.group(1))
    return pins


def test_services_in_matches_pyproject() -> None:
    declared = pyproject_dependencies()
    for name, req in requirements(SERVICES_IN.read_text().splitlines()).items():
        assert name in declared, f"{req} is in {SERVICES_IN.name} but not in pyproject.toml's dependencies"
        assert str(req) == str(declared[name]), (
            f"pyproject.toml says {declared[name]}, {SERVICES_IN.name} says {req}: make them equal, "
            f"then `nox -s lock`")


def test_lock_pins_every_service_dependency_within_its_specifier() -> None:
    pins = lock_pins()
    for name, req in requirements(SERVICES_IN.read_text().splitlines()).items():
        assert name in pins, f"{name} is not in {LOCK.name}: run `nox -s lock`"
        assert req.specifier.contains(pins[name][0], prereleases=True), (
            f"{LOCK.name} pins {name}=={pins[name][0]}, outside {req.specifier}: run `nox -s lock`")


def test_every_pin_carries_hashes() -> None:
    pins = lock_pins()
    assert len(pins) >= 12  # the 12 direct dependencies at least; a parse that found none fails here
    assert [name for name, (_, hashes) in pins.items() if not hashes] == []


def test_every_third_party_import_of_the_services_is_locked() -> None:
    """Each module services/ imports resolves (in this venv) to a distribution the lock pins."""
    stdlib = set(sys.stdlib_module_names)
    tops: set[str] = set()
    for path in (ROOT / "services").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                tops.add(node.module.split(".")[0])
    third_party = sorted(t for t in tops if t not in stdlib and t not in ("services", "__future__"))
    assert "fastapi" in third_party  # the scan found the imports at all
    dists = importlib.metadata.packages_distributions()
    pins = lock_pins()
    unlocked = [t for t in third_party
                if not any(canonicalize_name(d) in pins for d in dists.get(t, []))]
    assert unlocked == [], f"services/ imports {unlocked}, which no pin in {LOCK.name} provides"
