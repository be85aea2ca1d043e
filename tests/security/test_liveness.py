"""Staying up when a peer dies or freezes, against real processes: kill -9 of the exposer
fails the calls in flight through it at once; a frozen (SIGSTOPped) exposer or server is
found out by keepalive, its tunnels evicted, and calls then fail fast instead of hanging."""

from __future__ import annotations

import signal
import time
from typing import Any

import grpc
import pytest

from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

from .procs import Launcher, Proc, no_traceback

pytestmark = pytest.mark.timeout(60)

FAST = ("--keepalive-interval", "1", "--keepalive-timeout", "1")


async def _stack(
    launcher: Launcher, serve: tuple[str, ...] = (), expose: tuple[str, ...] = ()
) -> tuple[Proc, str, Proc]:
    backend = await launcher.backend()
    server = await launcher.server(*serve)
    exposer = await launcher.exposer(backend, server, "a", *expose)
    return server[0], server[1], exposer


async def _in_flight(channel: grpc.aio.Channel) -> tuple[Any, Any]:
    """A Chat and an Expand through the server, each known to be under way."""
    stub = echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
    chat = stub.Chat(timeout=50)
    await chat.write(echo_pb2.EchoRequest(msg="first"))
    assert (await chat.read()).msg == "first"
    expand = stub.Expand(echo_pb2.ExpandRequest(msg="e", count=1_000_000_000), timeout=50)
    assert (await expand.read()).msg == "e"
    return chat, expand


async def _ends_unavailable(call: Any) -> str:
    """Reads until the call fails; it must fail with UNAVAILABLE. Its details."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        while True:
            if await call.read() is grpc.aio.EOF:  # type: ignore[attr-defined]
                break
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
    return failed.value.details() or ""


async def _fails_fast(address: str) -> float:
    """A new call for the exposed service: UNAVAILABLE naming it, and how long it took."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Echo(echo_pb2.EchoRequest(msg="x"), timeout=20)
        took = time.monotonic() - started
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no tunnel exposes service grpctunnel.demo.v1.Echo" in (failed.value.details() or "")
    return took


async def test_kill_9_of_the_exposer_fails_calls_in_flight_at_once(launcher: Launcher) -> None:
    server, address, exposer = await _stack(launcher)
    async with grpc.aio.insecure_channel(address) as channel:
        chat, expand = await _in_flight(channel)
        mark = server.mark()
        killed = time.monotonic()
        exposer.process.kill()
        await _ends_unavailable(chat)
        chat_failed_in = time.monotonic() - killed
        await _ends_unavailable(expand)
        expand_failed_in = time.monotonic() - killed
    print(f"kill -9: Chat failed after {chat_failed_in:.3f}s, Expand after {expand_failed_in:.3f}s")
    assert chat_failed_in < 1.0 and expand_failed_in < 1.0, (chat_failed_in, expand_failed_in)
    await server.wait_for(r"tunnel closed: a from", after=mark)
    assert await _fails_fast(address) < 1.0
    no_traceback(server)


async def test_a_frozen_exposer_is_evicted_by_keepalive(launcher: Launcher) -> None:
    server, address, exposer = await _stack(launcher, serve=FAST, expose=FAST)
    async with grpc.aio.insecure_channel(address) as channel:
        chat, expand = await _in_flight(channel)
        mark = server.mark()
        frozen = time.monotonic()
        exposer.signal(signal.SIGSTOP)
        await server.wait_for(r"tunnel closed: a from", after=mark, timeout=15)
        evicted_in = time.monotonic() - frozen
        # the calls that were in flight through it end with the tunnel, not at their deadline
        await _ends_unavailable(chat)
        await _ends_unavailable(expand)
        calls_failed_in = time.monotonic() - frozen
    print(
        f"SIGSTOP: tunnel evicted after {evicted_in:.2f}s, calls failed by {calls_failed_in:.2f}s"
    )
    # 1 s keepalive interval + 1 s timeout, and room for a loaded machine
    assert evicted_in < 6, evicted_in
    assert calls_failed_in < evicted_in + 1
    # from then on, calls for its service fail at once rather than hang
    assert await _fails_fast(address) < 1.0
    no_traceback(server)


async def test_a_frozen_server_is_found_out_by_the_exposer(launcher: Launcher) -> None:
    server, address, exposer = await _stack(launcher, serve=FAST, expose=FAST)
    mark = exposer.mark()
    frozen = time.monotonic()
    server.signal(signal.SIGSTOP)
    await exposer.wait_for(r"tunnel 1 lost|cannot reach server", after=mark, timeout=15)
    noticed_in = time.monotonic() - frozen
    print(f"frozen server: the exposer noticed after {noticed_in:.2f}s")
    assert noticed_in < 6, noticed_in
    # thawed, the server takes the exposer back
    server_mark = server.mark()
    server.signal(signal.SIGCONT)
    await exposer.wait_for(r"tunnel 1 connected to .* as 'a'", after=mark)
    await server.wait_for(r"tunnel opened: a from", after=server_mark)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.Echo(echo_pb2.EchoRequest(msg="back"), timeout=10)
    assert reply.msg == "back"
    assert exposer.running
    no_traceback(server, exposer)
