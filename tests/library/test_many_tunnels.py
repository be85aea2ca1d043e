"""Many tunnels at once: several forward tunnels on one server, tunnels coming and
going, reverse tunnels from several clients balanced and keyed, the reverse-tunnel
callbacks, channel_ready(), and refusing reverse tunnels."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import grpctunnel
from grpctunnel import (
    PendingChannel,
    ReverseTunnel,
    TunnelClientOptions,
    TunnelServiceHandlerOptions,
)
from grpctunnel_demo.v1.echo_pb2 import EchoRequest
from grpctunnel_demo.v1.echo_pb2_grpc import EchoStub

from .conftest import (
    Backend,
    echo,
    forward_sessions,
    new_reverse_server,
    start_backend,
    wait,
    wait_for_reverse_tunnels,
)


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    async with contextlib.AsyncExitStack() as s:
        yield s


async def _backend(stack: contextlib.AsyncExitStack, **options: Any) -> Backend:
    backend = await start_backend(TunnelServiceHandlerOptions(**options) if options else None)
    stack.push_async_callback(backend.aclose)
    return backend


async def _reverse_client(
    stack: contextlib.AsyncExitStack, backend: Backend, name: str, **options: Any
) -> Any:
    rts, servicer = new_reverse_server(
        backend, TunnelClientOptions(metadata=(("name", name),), **options), name=name
    )
    stack.push_async_callback(rts.stop)
    return rts, servicer


# -- forward ---------------------------------------------------------------------------


async def test_several_forward_tunnels_on_one_server(stack: contextlib.AsyncExitStack) -> None:
    backend = await _backend(stack)
    channels = []
    for i in range(4):
        options = TunnelClientOptions(metadata=(("name", f"c{i}"),))
        channel = await PendingChannel(backend.dial(), options).start()
        stack.push_async_callback(channel.close)
        channels.append(channel)
    assert backend.handler.forward_tunnels == 4

    async def use(i: int) -> None:
        for _ in range(20):
            # each call arrives through its own tunnel
            assert await echo(channels[i], "tunnelmd") == f"c{i}"

    await asyncio.gather(*(use(i) for i in range(4)))
    assert backend.servicer.probe.calls == 80


async def test_tunnels_open_and_close_over_the_servers_life(
    stack: contextlib.AsyncExitStack,
) -> None:
    backend = await _backend(stack)
    handler = backend.handler
    keeper = await PendingChannel(backend.dial()).start()  # lives throughout
    stack.push_async_callback(keeper.close)
    [keeper_serving] = forward_sessions(handler)
    for i in range(10):
        channel = await PendingChannel(backend.dial()).start()
        assert handler.forward_tunnels == 2
        [serving] = [s for s in forward_sessions(handler) if s is not keeper_serving]
        assert await echo(channel, f"round {i}") == f"round {i}"
        assert await echo(keeper, "keeper") == "keeper"
        await channel.close()
        with pytest.raises(grpc.aio.AioRpcError):
            await echo(channel)
        # the server notices that the tunnel ended; the other goes on
        await wait(serving.wait_closed())
        assert handler.forward_tunnels == 1
        assert await echo(keeper, "still") == "still"
    # reverse tunnels come and go as well
    rts, _ = await _reverse_client(stack, backend, "r")
    pool = handler.as_channel()
    for _ in range(5):
        tunnel = await rts.serve()
        await pool.channel_ready()
        assert await echo(pool, "whoami") == "r"
        await tunnel.close()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await echo(pool)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await echo(keeper, "end") == "end"


# -- reverse ---------------------------------------------------------------------------


async def test_one_reverse_server_with_several_tunnels(stack: contextlib.AsyncExitStack) -> None:
    closed: asyncio.Queue[ReverseTunnel] = asyncio.Queue()
    backend = await _backend(stack, on_reverse_tunnel_close=closed.put_nowait)
    handler = backend.handler
    rts, servicer = await _reverse_client(stack, backend, "multi")
    first = await rts.serve()
    second = await rts.serve()
    assert len(rts.tunnels) == 2
    pool = handler.as_channel()
    await pool.channel_ready()
    await wait(wait_for_reverse_tunnels(handler, 2))

    await asyncio.gather(*(echo(pool, "x") for _ in range(40)))
    opened = [t.session.conn._last_stream_id for t in handler.all_reverse_tunnels()]
    assert all(n > 0 for n in opened), opened  # both tunnels carried calls
    assert sum(opened) == 40

    # losing one: the other serves every call
    await first.close()
    lost = await wait(closed.get())
    assert lost.closed and len(handler.all_reverse_tunnels()) == 1
    assert [await echo(pool, str(i)) for i in range(5)] == [str(i) for i in range(5)]
    # a new tunnel after the loss
    third = await rts.serve()
    await wait(wait_for_reverse_tunnels(handler, 2))
    assert await echo(pool, "after") == "after"
    assert {id(t) for t in rts.tunnels} == {id(second), id(third)}
    await rts.stop()
    await wait(rts.wait_closed())
    assert rts.tunnels == []
    assert servicer.probe.calls == 46


async def test_as_channel_balances_across_clients(stack: contextlib.AsyncExitStack) -> None:
    opened: asyncio.Queue[ReverseTunnel] = asyncio.Queue()
    backend = await _backend(stack, on_reverse_tunnel_open=opened.put_nowait)
    names = ["c0", "c1", "c2"]
    for name in names:
        rts, _ = await _reverse_client(stack, backend, name)
        await rts.serve()
        await wait(opened.get())
    pool = backend.handler.as_channel()
    replies = await asyncio.gather(*(echo(pool, "whoami") for _ in range(30)))
    counts = collections.Counter(replies)
    assert set(counts) == set(names), counts
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    # sequential calls too
    counts = collections.Counter([await echo(pool, "whoami") for _ in range(9)])
    assert counts == {"c0": 3, "c1": 3, "c2": 3}


async def test_key_as_channel_with_affinity(stack: contextlib.AsyncExitStack) -> None:
    opened: asyncio.Queue[ReverseTunnel] = asyncio.Queue()
    backend = await _backend(
        stack,
        affinity_key=lambda t: t.metadata_value("name"),
        on_reverse_tunnel_open=opened.put_nowait,
    )
    handler = backend.handler
    for name in ("a", "b", "a"):
        rts, _ = await _reverse_client(stack, backend, name)
        await rts.serve()
        tunnel = await wait(opened.get())
        assert tunnel.key == name
    to_a = handler.key_as_channel("a")
    to_b = handler.key_as_channel("b")
    assert {await echo(to_a, "whoami") for _ in range(10)} == {"a"}
    assert {await echo(to_b, "whoami") for _ in range(10)} == {"b"}
    assert sorted(t.key for t in handler.all_reverse_tunnels()) == ["a", "a", "b"]

    nobody = handler.key_as_channel("zzz")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await echo(nobody)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "zzz" in (info.value.details() or "")
    assert nobody.get_state() == grpc.ChannelConnectivity.IDLE
    # wait_for_ready waits for a tunnel with that key
    waiting = asyncio.ensure_future(echo(nobody, "whoami", wait_for_ready=True))
    assert await echo(to_b, "meanwhile") == "meanwhile"
    assert not waiting.done()
    rts, _ = await _reverse_client(stack, backend, "zzz")
    await rts.serve()
    assert await wait(waiting) == "zzz"
    assert nobody.get_state() == grpc.ChannelConnectivity.READY


async def test_reverse_tunnel_callbacks_and_listing(stack: contextlib.AsyncExitStack) -> None:
    events: list[tuple[str, ReverseTunnel]] = []
    changed: asyncio.Queue[None] = asyncio.Queue()

    def on_open(tunnel: ReverseTunnel) -> None:
        events.append(("open", tunnel))
        changed.put_nowait(None)

    async def on_close(tunnel: ReverseTunnel) -> None:  # coroutine hooks work too
        events.append(("close", tunnel))
        changed.put_nowait(None)

    backend = await _backend(
        stack, on_reverse_tunnel_open=on_open, on_reverse_tunnel_close=on_close
    )
    handler = backend.handler
    assert handler.all_reverse_tunnels() == []
    rts, servicer = await _reverse_client(stack, backend, "cb")
    served = await rts.serve(metadata=(("x-extra", "1"),))
    await wait(changed.get())
    [(kind, tunnel)] = events
    assert kind == "open"
    assert handler.all_reverse_tunnels() == [tunnel]
    assert tunnel.metadata_value("name") == "cb"
    assert tunnel.metadata_value("x-extra") == "1"
    assert tunnel.peer and not tunnel.closed
    assert repr(tunnel).startswith("<ReverseTunnel")
    # calls straight to one tunnel, and its count of active calls
    call = EchoStub(tunnel.channel).Echo(EchoRequest(msg="wait"))
    await wait(servicer.probe.started.wait())
    assert tunnel.active_calls == 1
    servicer.probe.release.set()
    assert (await call).msg == "wait"
    assert tunnel.active_calls == 0
    # the server's answer headers are visible to the dialling side
    assert md_value(served.server_metadata, "grpctunnel-negotiate") == "on"

    await served.close()
    await wait(changed.get())
    assert [k for k, _ in events] == ["open", "close"]
    assert events[1][1] is tunnel and tunnel.closed
    assert handler.all_reverse_tunnels() == []


def md_value(pairs: Any, key: str) -> Any:
    return dict(pairs).get(key)


async def test_reverse_handler_sees_tunnel_metadata(stack: contextlib.AsyncExitStack) -> None:
    backend = await _backend(stack)
    rts, servicer = await _reverse_client(stack, backend, "tm")
    await rts.serve()
    pool = backend.handler.as_channel()
    await pool.channel_ready()
    await echo(pool, "tunnelmd")
    # for a reverse tunnel, the tunnel metadata is what the server answered with
    assert ("grpctunnel-negotiate", "on") in servicer.probe.tunnel_metadata[-1]
    # and the server-side handler reads the client's tunnel metadata from the pool
    [tunnel] = backend.handler.all_reverse_tunnels()
    assert ("name", "tm") in tunnel.metadata
    assert grpctunnel.tunnel_metadata(object()) == ()


async def test_channel_ready_waits_for_a_tunnel(stack: contextlib.AsyncExitStack) -> None:
    backend = await _backend(stack)
    pool = backend.handler.as_channel()
    assert pool.get_state() == grpc.ChannelConnectivity.IDLE
    ready = asyncio.ensure_future(pool.channel_ready())
    # something else happens on the server meanwhile; the pool is still not ready
    forward = await PendingChannel(backend.dial()).start()
    stack.push_async_callback(forward.close)
    assert await echo(forward) == "ping"
    assert not ready.done()
    state_change = asyncio.ensure_future(pool.wait_for_state_change(grpc.ChannelConnectivity.IDLE))
    rts, _ = await _reverse_client(stack, backend, "late")
    await rts.serve()
    await wait(ready)
    await wait(state_change)
    assert pool.get_state() == grpc.ChannelConnectivity.READY
    assert await echo(pool, "whoami") == "late"
    # closing a pool channel is a view: the tunnels stay
    await pool.close()
    assert await echo(backend.handler.as_channel(), "whoami") == "late"


async def test_no_reverse_tunnels_refuses(stack: contextlib.AsyncExitStack) -> None:
    opened: list[ReverseTunnel] = []
    backend = await _backend(stack, no_reverse_tunnels=True, on_reverse_tunnel_open=opened.append)
    rts, _ = await _reverse_client(stack, backend, "refused")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rts.serve()
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "reverse" in (info.value.details() or "")
    assert opened == [] and backend.handler.all_reverse_tunnels() == []
    assert rts.tunnels == []
    # forward tunnels on that server are fine
    channel = await PendingChannel(backend.dial()).start()
    stack.push_async_callback(channel.close)
    assert await echo(channel) == "ping"


async def test_every_refusal_is_told_to_on_tunnel_refused(
    stack: contextlib.AsyncExitStack,
) -> None:
    """Whoever refuses a tunnel (accept_tunnel, admit_tunnel, no_reverse_tunnels, a
    shutdown under way), `on_tunnel_refused` hears of it, with the status sent."""
    refused: list[tuple[str, grpc.StatusCode, str]] = []

    def accept(kind: str, metadata: Any, peer: str) -> tuple[grpc.StatusCode, str] | None:
        names = [v for k, v in metadata if k == "name"]
        return (grpc.StatusCode.PERMISSION_DENIED, "not you") if names == ["bad"] else None

    def admit(record: Any) -> tuple[grpc.StatusCode, str] | None:
        names = [v for k, v in record.metadata if k == "name"]
        return (grpc.StatusCode.RESOURCE_EXHAUSTED, "full") if names == ["full"] else None

    backend = await _backend(
        stack,
        no_reverse_tunnels=True,
        accept_tunnel=accept,
        admit_tunnel=admit,
        on_tunnel_refused=lambda kind, code, details: refused.append((kind, code, details)),
    )
    for name, code in (
        ("bad", grpc.StatusCode.PERMISSION_DENIED),
        ("full", grpc.StatusCode.RESOURCE_EXHAUSTED),
    ):
        options = TunnelClientOptions(metadata=(("name", name),))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await PendingChannel(backend.dial(), options).start()
        assert info.value.code() == code
    rts, _ = await _reverse_client(stack, backend, "reverse")
    with pytest.raises(grpc.aio.AioRpcError):
        await rts.serve()
    backend.handler.initiate_shutdown()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await PendingChannel(backend.dial()).start()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert refused == [
        ("forward", grpc.StatusCode.PERMISSION_DENIED, "not you"),
        ("forward", grpc.StatusCode.RESOURCE_EXHAUSTED, "full"),
        ("reverse", grpc.StatusCode.UNIMPLEMENTED, "this server does not accept reverse tunnels"),
        ("forward", grpc.StatusCode.UNAVAILABLE, "tunnel server shutting down"),
    ]
