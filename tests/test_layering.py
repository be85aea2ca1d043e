"""The import contract (pyproject.toml, checked by lint-imports) covers the whole library.

import-linter cannot take the ``grpctunnel`` package itself as the source of the rule
"the library never imports the gateway", because the gateway is one of its subpackages;
the contract lists the library's modules instead. These tests fail when a module is added
to the library without being added there, and check what the list cannot: the package's
own ``__init__``.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import tomllib

import grpctunnel

ROOT = Path(__file__).resolve().parent.parent
LIBRARY_CONTRACT = "The tunnel library never imports the gateway"
ABOVE_THE_LIBRARY = ("grpctunnel.gateway", "grpctunnel_cli", "grpctunnel_demo", "typer", "rich")


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def test_the_library_contract_lists_every_module_of_the_library() -> None:
    contract = next(c for c in _contracts() if str(c["name"]).startswith(LIBRARY_CONTRACT))
    listed = set(contract["source_modules"])  # type: ignore[call-overload]
    modules = {
        f"grpctunnel.{info.name}"
        for info in pkgutil.iter_modules(grpctunnel.__path__)
        if info.name != "gateway"
    }
    assert modules - listed == set(), "add these to the library's import contract"
    assert listed - modules == set(), "these are listed but no longer exist"


def test_the_package_init_imports_nothing_above_the_library() -> None:
    tree = ast.parse((ROOT / "grpctunnel" / "__init__.py").read_text())
    imported = [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    ] + [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    assert [m for m in imported if m.startswith(ABOVE_THE_LIBRARY)] == []


def test_the_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
