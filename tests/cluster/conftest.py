"""Fixtures of the cluster tests: a fleet of real processes (a Redis server of its own,
`serve --cluster` nodes, backends, exposers) that kills what it started."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .fleet import REDIS_SERVER, Fleet


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (scripts/ensure-redis installs it)")
    started = Fleet()
    try:
        await started.start_redis()
        yield started
    finally:
        await started.close()
