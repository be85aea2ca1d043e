"""The reverse pool picks by affinity key without scanning every tunnel; the handler's
shutdown: initiate_shutdown() refuses new tunnels and keeps those open, close() awaits
the reverse tunnel hooks still running and logs what they raise."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from grpctunnel import PendingChannel, ReverseTunnel, TunnelClientOptions
from grpctunnel import TunnelServiceHandlerOptions as Options
from grpctunnel.reverse import ReversePool

from .conftest import Backend, echo, new_reverse_server, start_backend, wait


class CountingSession:
    """Stands in for a tunnel's session: counts how often the pool asks whether it
    is closed (what looking at a tunnel costs)."""

    looked_at = 0

    def __init__(self, name: str) -> None:
        self.name = name
        self._closed = False

    @property
    def closed(self) -> bool:
        CountingSession.looked_at += 1
        return self._closed


def _tunnel(name: str, key: object) -> ReverseTunnel:
    tunnel = ReverseTunnel(CountingSession(name))  # type: ignore[arg-type]
    tunnel.key = key
    return tunnel


def test_key_channels_pick_without_scanning_the_pool() -> None:
    pool = ReversePool()
    for i in range(1000):
        pool.add(_tunnel(f"other{i}", f"k{i}"))
    a, b = _tunnel("a", "wanted"), _tunnel("b", "wanted")
    pool.add(a)
    pool.add(b)
    source: Any = pool.key_channel("wanted")._source  # type: ignore[attr-defined]
    CountingSession.looked_at = 0
    picked = [source.pick().name for _ in range(6)]
    assert sorted(picked) == ["a"] * 3 + ["b"] * 3  # in turn
    assert CountingSession.looked_at == 6  # one tunnel looked at per pick
    everyone: Any = pool.channel()._source  # type: ignore[attr-defined]
    CountingSession.looked_at = 0
    everyone.pick()
    assert CountingSession.looked_at == 1
    # a closed tunnel not yet removed is skipped; a removed one is gone
    a.session._closed = True  # type: ignore[attr-defined]
    assert {source.pick().name for _ in range(4)} == {"b"}
    assert pool.remove(a) and not pool.remove(a)
    assert pool.remove(b)
    assert source.pick() is None
    assert pool.key_channel("wanted").get_state() == grpc.ChannelConnectivity.IDLE
    assert len(pool.live()) == 1000


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    async with contextlib.AsyncExitStack() as s:
        yield s


async def _backend(stack: contextlib.AsyncExitStack, options: Options | None = None) -> Backend:
    backend = await start_backend(options)
    stack.push_async_callback(backend.aclose)
    return backend


async def test_initiate_shutdown_refuses_new_tunnels_and_keeps_open_ones(
    stack: contextlib.AsyncExitStack,
) -> None:
    backend = await _backend(stack)
    handler = backend.handler
    forward = await PendingChannel(backend.dial()).start()
    stack.push_async_callback(forward.close)
    rts, _ = new_reverse_server(backend, TunnelClientOptions(metadata=(("name", "r"),)))
    stack.push_async_callback(rts.stop)
    await rts.serve()
    reverse = handler.as_channel()
    await wait(reverse.channel_ready())

    handler.initiate_shutdown()
    for opening in (PendingChannel(backend.dial()).start(), rts.serve()):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await wait(opening)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "tunnel server shutting down"
    # the tunnels already open carry calls as before
    assert await echo(forward, "still") == "still"
    assert await echo(reverse, "whoami") == "client"
    await handler.close()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await echo(forward)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_close_awaits_the_hooks_and_logs_what_they_raise(
    stack: contextlib.AsyncExitStack, caplog: pytest.LogCaptureFixture
) -> None:
    closed: list[str] = []
    release = asyncio.Event()

    async def on_open(tunnel: ReverseTunnel) -> None:
        raise RuntimeError("open hook failed")

    async def on_close(tunnel: ReverseTunnel) -> None:
        await release.wait()
        closed.append(str(tunnel.metadata_value("name")))

    backend = await _backend(
        stack, Options(on_reverse_tunnel_open=on_open, on_reverse_tunnel_close=on_close)
    )
    handler = backend.handler
    rts, _ = new_reverse_server(backend, TunnelClientOptions(metadata=(("name", "r"),)))
    stack.push_async_callback(rts.stop)
    with caplog.at_level(logging.ERROR, logger="grpctunnel"):
        await rts.serve()
        await wait(handler.as_channel().channel_ready())
        closing = asyncio.ensure_future(handler.close())
        # the tunnel left the pool at once; close() waits for its close hook
        await asyncio.sleep(0.05)
        assert handler.all_reverse_tunnels() == [] and not closing.done()
        release.set()
        await wait(closing)
    assert closed == ["r"]
    assert any(
        r.getMessage() == "reverse tunnel callback raised"
        and r.exc_info is not None
        and "open hook failed" in str(r.exc_info[1])
        for r in caplog.records
    )
