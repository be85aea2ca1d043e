"""Real grpc.aio servers on an ephemeral loopback port, for the tests of every folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc


async def start_on_loopback(server: grpc.aio.Server) -> str:
    """Starts ``server`` on 127.0.0.1 and a free port; returns its address."""
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return f"127.0.0.1:{port}"


@asynccontextmanager
async def serving(server: grpc.aio.Server) -> AsyncIterator[str]:
    """``server`` running on loopback (its address) for the block; stopped after it."""
    target = await start_on_loopback(server)
    try:
        yield target
    finally:
        await server.stop(None)
