"""`expose --to A --to B` (or `--to A,B`): the servers are tried in turn, and the tunnels are
kept against whichever answers (in-process: a gateway, the demo backend, an exposer)."""

from __future__ import annotations

import asyncio

import pytest

from grpctunnel.gateway import GatewayServer, GatewaySettings
from grpctunnel.gateway.exposer import ExposeConfig, Exposer
from grpctunnel_demo.service import start_demo_backend

from .fleet import free_port

pytestmark = pytest.mark.timeout(30)


def test_servers_are_read_from_a_list_or_commas() -> None:
    config = ExposeConfig(backend="b:1", server=["a:1, b:2", "c:3", "a:1"], name="n")
    assert config.servers == ["a:1", "b:2", "c:3"]
    assert ExposeConfig(backend="b:1", server="a:1", name="n").servers == ["a:1"]


async def test_a_server_that_does_not_answer_is_passed_over() -> None:
    backend, port = await start_demo_backend()
    dead = f"127.0.0.1:{free_port()}"
    async with GatewayServer(GatewaySettings()) as live:
        config = ExposeConfig(
            backend=f"127.0.0.1:{port}",
            server=f"{dead},{live.address}",
            name="moving",
            tunnels=2,
            backoff_initial=0.05,
            backoff_cap=0.2,
            connect_timeout=2,
        )
        exposer = Exposer(config)
        running = asyncio.ensure_future(exposer.run())
        try:
            gateway = live.gateway
            await asyncio.wait_for(gateway.wait_until(lambda: len(gateway.tunnels()) == 2), 10)
            assert exposer.stats.server == live.address
            assert exposer.stats.tunnels_up == 2
        finally:
            exposer.stop()
            await running
    await backend.stop(None)
