"""Fixtures every test folder may use: `launcher`, which starts real `grpctunnel` (and
other) processes for one test and kills every one of them when it ends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.launcher import Launcher


@pytest.fixture
async def launcher() -> AsyncIterator[Launcher]:
    processes = Launcher()
    try:
        yield processes
    finally:
        await processes.close()
