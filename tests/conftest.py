"""Fixtures every test folder may use: `launcher`, which starts real `grpctunnel` (and
other) processes for one test and kills every one of them when it ends, and
`token_file`, which writes a token file for `serve --token-file`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from support.launcher import Launcher


@pytest.fixture
async def launcher() -> AsyncIterator[Launcher]:
    processes = Launcher()
    try:
        yield processes
    finally:
        await processes.close()


@pytest.fixture
def token_file(tmp_path: Path) -> Callable[..., str]:
    """Writes a JSON token file with the given entries; returns its path."""

    def write(*entries: dict[str, Any]) -> str:
        path = tmp_path / "tokens.json"
        path.write_text(json.dumps({"tokens": list(entries)}))
        return str(path)

    return write
