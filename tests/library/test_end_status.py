"""A tunnel's real end status reaches the code that decides what to do: the code the
tunnel RPC ended with travels in ``TunnelClosed`` (the calls on the tunnel still fail
with UNAVAILABLE), the exposer stops on ABORTED whatever the message says, and a bug in
our own event handling is logged with its traceback and fails the calls with INTERNAL
instead of passing for a lost tunnel.

Before: ``ServedTunnel.error.code`` was UNAVAILABLE whatever the RPC ended with; the
exposer looked for "taken over" in the message (so it kept redialling a server that
fenced it off in other words); a listener's exception failed the calls with UNAVAILABLE
"tunnel lost: RuntimeError(...)" and logged no traceback; a generic handler raising
while looked up ended the whole tunnel."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from grpctunnel import TunnelServiceHandlerOptions
from grpctunnel.calls import TunnelCall
from grpctunnel.gateway.exposer import ExposeConfig, ExposeError, Exposer
from grpctunnel.protocol import events as ev

from .conftest import (
    Backend,
    EnvFactory,
    echo,
    new_reverse_server,
    start_backend,
    wait,
    wait_for_reverse_tunnels,
)


async def test_a_reverse_tunnel_keeps_the_code_its_rpc_ended_with(backend: Backend) -> None:
    rts, _ = new_reverse_server(backend)
    served = await wait(rts.serve())
    await wait(wait_for_reverse_tunnels(backend.handler, 1))
    (tunnel,) = backend.handler.all_reverse_tunnels()
    assert tunnel.record is not None
    tunnel.record.close("fenced off by the operator", grpc.StatusCode.ABORTED)
    await wait(served.wait_closed())
    assert served.error is not None
    assert served.error.code == grpc.StatusCode.ABORTED, served.error.code
    assert "fenced off by the operator" in served.error.details
    await rts.stop()


async def test_the_calls_on_a_tunnel_ended_with_another_code_fail_unavailable(
    backend: Backend,
) -> None:
    rts, servicer = new_reverse_server(backend)
    await wait(rts.serve())
    await wait(wait_for_reverse_tunnels(backend.handler, 1))
    channel = backend.handler.as_channel()
    pending = asyncio.ensure_future(echo(channel, "wait"))
    await wait(servicer.probe.started.wait())
    (tunnel,) = backend.handler.all_reverse_tunnels()
    assert tunnel.record is not None
    tunnel.record.close("fenced off", grpc.StatusCode.ABORTED)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await wait(pending)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    await rts.stop()


async def test_the_exposer_stops_when_its_tunnel_is_ended_with_aborted() -> None:
    """The server fences the exposer off with ABORTED in words of its own (no "taken
    over"): the exposer stops, saying why, instead of redialling for ever."""

    def fence(tunnel: Any) -> None:
        tunnel.record.close("this name now belongs elsewhere", grpc.StatusCode.ABORTED)

    backend = await start_backend(TunnelServiceHandlerOptions(on_reverse_tunnel_open=fence))
    exposer = Exposer(
        ExposeConfig(
            backend="127.0.0.1:1",  # never reached: the services are given
            server=backend.target,
            name="fenced",
            services=("grpctunnel.demo.v1.Echo",),
            backoff_initial=0.05,
            backoff_cap=0.1,
        )
    )
    try:
        with pytest.raises(ExposeError) as stopped:
            await wait(exposer.run(), 10)
        assert "taken over" in str(stopped.value)
        assert "this name now belongs elsewhere" in str(stopped.value)
    finally:
        exposer.stop()
        await backend.aclose()


async def test_a_bug_in_event_handling_fails_the_calls_with_internal(
    make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env = await make_env("forward")
    on_event = TunnelCall.on_event

    def broken(self: TunnelCall, event: ev.Event) -> None:
        if isinstance(event, ev.MessageReceived):
            raise RuntimeError("a bug in the calling side")
        on_event(self, event)

    monkeypatch.setattr(TunnelCall, "on_event", broken)
    with caplog.at_level(logging.ERROR, logger="grpctunnel"):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await wait(echo(env.channel, "x"))
    assert failed.value.code() == grpc.StatusCode.INTERNAL, failed.value
    assert "internal error in the tunnel: RuntimeError('a bug in the calling side')" in (
        failed.value.details() or ""
    )
    logged = [r for r in caplog.records if r.exc_info and "error handling" in r.getMessage()]
    assert logged, caplog.text
    assert "a bug in the calling side" in caplog.text  # the traceback, with the cause


async def test_a_generic_handler_raising_fails_its_call_only(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    env = await make_env("forward")
    assert env.backend is not None

    class Exploding(grpc.GenericRpcHandler):  # type: ignore[misc,type-arg]
        def service(self, details: Any) -> Any:
            if details.method == "/test.Boom/Call":
                raise LookupError("the lookup exploded")
            return None

    env.backend.handler.add_generic_rpc_handlers((Exploding(),))
    with caplog.at_level(logging.ERROR, logger="grpctunnel"):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await wait(env.channel.unary_unary("/test.Boom/Call")(b"x"))
    assert failed.value.code() == grpc.StatusCode.INTERNAL, failed.value
    assert "the lookup exploded" in (failed.value.details() or "")
    assert "the lookup exploded" in caplog.text
    assert await echo(env.channel, "still up") == "still up"  # the tunnel lives on
