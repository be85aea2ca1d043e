"""Fixtures of the observability tests: a launcher that kills every process it started,
and token files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def token_file(tmp_path: Path) -> Any:
    """Writes a JSON token file with the given entries; returns its path."""

    def write(*entries: dict[str, Any]) -> str:
        path = tmp_path / "tokens.json"
        path.write_text(json.dumps({"tokens": list(entries)}))
        return str(path)

    return write
