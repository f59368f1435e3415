"""Public API guard: serialization.__all__ is exactly what its __init__ imports."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import serialization

INIT = Path(serialization.__file__)


def _imported_public_names() -> list[str]:
    tree = ast.parse(INIT.read_text(), filename=str(INIT))
    return [
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("serialization")
        for alias in node.names
        if not (alias.asname or alias.name).startswith("_")
    ]


def test_public_api_all_equals_the_imported_names() -> None:
    """__all__ is the sorted set of public names the package's __init__ imports."""
    imported = _imported_public_names()
    assert len(imported) == len(set(imported))
    assert sorted(serialization.__all__) == sorted(set(imported))
    assert len(serialization.__all__) == len(set(serialization.__all__))


def test_public_api_every_name_resolves_to_its_module_object() -> None:
    """Each exported name resolves, and is the same object as in its defining module."""
    tree = ast.parse(INIT.read_text(), filename=str(INIT))
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert getattr(serialization, alias.name) is getattr(module, alias.name)
    for name in serialization.__all__:
        assert getattr(serialization, name) is not None


def test_public_api_every_module_declares_its_all() -> None:
    """Each serialization module lists its exports in an __all__ whose names resolve."""
    for path in sorted(INIT.parent.glob("*.py")):
        module = importlib.import_module(f"serialization.{path.stem}")
        exported = getattr(module, "__all__", None)
        assert isinstance(exported, list), path.name
        for name in exported:
            assert hasattr(module, name), f"{path.name}: {name}"
