"""Losing the tunnel RPC mid-call: every call on it fails at once with UNAVAILABLE,
every handler is cancelled, new calls fail, and a broken stream never looks like a
clean end."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from grpctunnel import PendingChannel
from grpctunnel_demo.v1 import echo_pb2

from .conftest import Backend, Env, EnvFactory, echo, forward_sessions, wait

Req = echo_pb2.EchoRequest
Exp = echo_pb2.ExpandRequest

LOSSES = [("forward", "server"), ("reverse", "server"), ("reverse", "client")]


async def _start_calls_in_flight(env: Env) -> dict[str, Any]:
    """One frozen handler of each call kind, plus a server stream that has already
    delivered a message."""
    stub = env.stub
    calls: dict[str, Any] = {
        "unary": stub.Echo(Req(msg="freeze")),
        "server_stream": stub.Expand(Exp(msg="freeze")),
        "client_stream": stub.Collect(),
        "bidi": stub.Chat(),
    }
    await calls["client_stream"].write(Req(msg="freeze"))
    await calls["bidi"].write(Req(msg="freeze"))
    assert (await calls["server_stream"].read()).msg == "first"
    await env.probe.wait_frozen(4)
    return calls


async def _outcome(kind: str, call: Any) -> grpc.aio.AioRpcError:
    """How the call ends; it must fail, never end cleanly."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if kind in ("unary", "client_stream"):
            await call
        else:
            message = await call.read()
            pytest.fail(f"{kind}: a lost tunnel ended the stream with {message!r}")
    return info.value


@pytest.mark.parametrize(("mode", "how"), LOSSES)
async def test_tunnel_loss_fails_every_call_and_cancels_every_handler(
    make_env: EnvFactory, mode: str, how: str
) -> None:
    env = await make_env(mode)
    calls = await _start_calls_in_flight(env)
    reads = {k: asyncio.ensure_future(_outcome(k, c)) for k, c in calls.items()}

    started = time.monotonic()
    await env.break_tunnel(how)
    errors = await wait(asyncio.gather(*reads.values()))
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    for kind, err in zip(reads, errors, strict=True):
        assert err.code() == grpc.StatusCode.UNAVAILABLE, (kind, err)
        assert err.details(), kind
    for call in calls.values():
        assert call.done() and await call.code() == grpc.StatusCode.UNAVAILABLE

    # every handler on the far side was cancelled and saw it
    await env.probe.wait_unfrozen(4)
    assert env.probe.context_cancelled == [True] * 4

    # new calls fail with UNAVAILABLE too
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await env.stub.Echo(Req(msg="after"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    stream = env.stub.Chat()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream.read()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_writes_after_loss_raise(make_env: EnvFactory) -> None:
    env = await make_env("forward")
    call = env.stub.Chat()
    await call.write(Req(msg="a"))
    assert (await call.read()).msg == "a"
    assert env.channel.get_state() == grpc.ChannelConnectivity.READY
    change = asyncio.ensure_future(
        env.channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
    )
    await env.break_tunnel("server")
    await wait(change)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError):
        await call.write(Req(msg="b"))
    assert env.channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN


async def test_server_stream_in_progress_raises_when_lost(make_env: EnvFactory) -> None:
    """A stream that has delivered messages and is waiting for more raises; it does
    not end with EOF as if the handler had finished."""
    for mode, how in LOSSES:
        env = await make_env(mode)
        call = env.stub.Expand(Exp(msg="freeze"))
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for reply in call:
                got.append(reply.msg)
                await env.probe.wait_frozen(1)
                await env.break_tunnel(how)
        assert got == ["first"], mode
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, (mode, how)


async def test_forward_channel_close_ends_calls_and_handlers(backend: Backend) -> None:
    channel = await PendingChannel(backend.dial()).start()
    probe = backend.servicer.probe
    calls = [echo_pb2_stub(channel).Echo(Req(msg="freeze")) for _ in range(3)]
    await probe.wait_frozen(3)
    serving = forward_sessions(backend.handler)
    assert len(serving) == 1
    await channel.close()
    for call in calls:  # as with grpc.aio: closing the channel cancels its calls
        assert call.cancelled()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await call.code() == grpc.StatusCode.CANCELLED
    await probe.wait_unfrozen(3)
    await wait(serving[0].wait_closed())  # the server saw the tunnel end
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await echo(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # the server serves new tunnels as before
    other = await PendingChannel(backend.dial()).start()
    assert await echo(other) == "ping"
    await other.close()


async def test_handler_close_ends_its_tunnels(make_env: EnvFactory) -> None:
    for mode in ("forward", "reverse"):
        env = await make_env(mode)
        assert env.backend is not None
        call = env.stub.Echo(Req(msg="freeze"))
        await env.probe.wait_frozen(1)
        await env.backend.handler.close()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        await env.probe.wait_unfrozen(1)
        # and refuses new ones
        if mode == "forward":
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await PendingChannel(env.backend.dial()).start()
        else:
            assert env.rts is not None
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await env.rts.serve()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def echo_pb2_stub(channel: grpc.aio.Channel) -> Any:
    from grpctunnel_demo.v1 import echo_pb2_grpc

    return echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]


async def test_graceful_close_waits_for_calls_in_progress(make_env: EnvFactory) -> None:
    for mode in ("forward", "reverse"):
        env = await make_env(mode)
        assert env.backend is not None
        bystander = await PendingChannel(env.backend.dial()).start()
        call = env.stub.Echo(Req(msg="wait"))
        await wait(env.probe.started.wait())
        if mode == "forward":
            closing = asyncio.ensure_future(env.channel.close(grace=10))
        else:
            assert env.rts is not None
            closing = asyncio.ensure_future(env.rts.stop(grace=10))
        assert await echo(bystander, "meanwhile") == "meanwhile"
        assert not closing.done() and not call.done()
        env.probe.release.set()
        assert (await wait(call)).msg == "wait", mode
        await wait(closing)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await env.stub.Echo(Req(msg="after"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        await bystander.close()


@pytest.mark.parametrize("mode", ["go", "rev0"])
async def test_in_memory_pair_loses_its_serving_end(make_env: EnvFactory, mode: str) -> None:
    """A TunnelPair whose serving end goes away behaves like a lost tunnel RPC."""
    env = await make_env(mode)
    assert env.pair is not None and env.pair.serving_session is not None
    calls = await _start_calls_in_flight(env)
    reads = {k: asyncio.ensure_future(_outcome(k, c)) for k, c in calls.items()}
    env.pair.serving_session.close("the serving end went away")
    for err in await wait(asyncio.gather(*reads.values())):
        assert err.code() == grpc.StatusCode.UNAVAILABLE
    await env.probe.wait_unfrozen(4)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.stub.Echo(Req(msg="after"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
