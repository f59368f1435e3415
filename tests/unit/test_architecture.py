"""Guards for DESIGN.md's dependency rule and each package's public API."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("serialization", "device", "aggregator", "fedmq")

ALLOWED_FIRST_PARTY = {
    "serialization": {"serialization"},
    "device": {"device", "serialization"},
    "aggregator": {"aggregator", "serialization"},
    "fedmq": set(PACKAGES),
}
IO_LIBRARIES = {
    "asyncio", "socket", "subprocess", "threading", "sqlite3", "aiomqtt", "paho",
    "redis", "prometheus_client", "selectors", "http", "urllib",
}  # fmt: skip
AGGREGATOR_PURE_MODULES = {
    "errors", "privacy", "robust", "server_optimizers", "staleness", "strategies",
    "tensors", "validation",
}  # fmt: skip
"""Modules of ``aggregator`` that compute without I/O (DESIGN.md); they import no I/O module."""
PURE_IMPORT_ROOTS = {
    "__future__", "abc", "collections", "dataclasses", "enum", "logging", "math", "typing",
    "numpy", "aggregator",
}  # fmt: skip


def _imports(path: Path) -> set[str]:
    """Dotted names of every module ``path`` imports (absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_architecture_first_party_imports_follow_the_dependency_rule(package: str) -> None:
    """device and aggregator import only serialization; serialization imports no peer."""
    for path in _modules(package):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in PACKAGES:
                assert top in ALLOWED_FIRST_PARTY[package], f"{path} imports {name}"


def test_architecture_serialization_does_no_io() -> None:
    """The wire contract is pure: no sockets, threads, files or service clients."""
    for path in _modules("serialization"):
        bad = {n for n in _imports(path) if n.split(".")[0] in IO_LIBRARIES}
        assert not bad, f"{path} imports I/O modules {bad}"


def test_architecture_pure_aggregator_modules_import_no_io() -> None:
    """Strategies, math and validation import only numpy, pure stdlib modules and other pure
    aggregator modules: no I/O, no service layer, no clock, environment or randomness."""
    for path in _modules("aggregator"):
        relative = path.relative_to(ROOT / "aggregator")
        if relative.parts[0].removesuffix(".py") not in AGGREGATOR_PURE_MODULES:
            continue
        for name in _imports(path):
            top, _, rest = name.partition(".")
            assert top in PURE_IMPORT_ROOTS, f"{path} imports {name}"
            if top == "aggregator" and rest:
                assert rest.split(".")[0] in AGGREGATOR_PURE_MODULES, f"{path} imports {name}"


def test_architecture_guard_sees_a_violation(tmp_path: Path) -> None:
    """The import scanner finds both import forms (so the guards above can fail)."""
    source = tmp_path / "m.py"
    source.write_text("import aggregator.service\nfrom redis import asyncio\n")
    assert _imports(source) == {"aggregator.service", "redis"}


@pytest.mark.parametrize("package", PACKAGES)
def test_public_api_all_is_unique_and_resolves(package: str) -> None:
    """Each package's ``__all__`` is unique and every name exists (ruff RUF022 sorts it)."""
    module = importlib.import_module(package)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), f"{package}.__all__ repeats a name"
    for name in exported:
        assert hasattr(module, name), f"{package}.__all__ names missing {name!r}"


@pytest.mark.parametrize("package", ["serialization", "device", "aggregator"])
def test_public_api_all_lists_every_public_import(package: str) -> None:
    """Every public name that ``__init__`` imports is exported, and nothing else is."""
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    imported = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
        for alias in node.names
        if not (alias.asname or alias.name).startswith("_")
    }
    assert set(importlib.import_module(package).__all__) == imported
