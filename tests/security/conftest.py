"""Fixtures of the security tests: a launcher that kills what it started, certificates
made for the session, and token files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .certs import Certs, make_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def token_file(tmp_path: Path) -> Any:
    """Writes a JSON token file with the given entries; returns its path."""

    def write(*entries: dict[str, Any]) -> str:
        path = tmp_path / "tokens.json"
        path.write_text(json.dumps({"tokens": list(entries)}))
        return str(path)

    return write
