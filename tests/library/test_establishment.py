"""A tunnel that never finishes opening is dropped: the establishment timeout, on the
side that waits for the peer's settings frame (the handler, for a reverse tunnel; the
dialler, for a forward one), and one deadline for the whole of ``PendingChannel.start``.

Before the timeout existed, every test here waited forever (its ``wait`` guard failed);
``test_start_has_one_deadline`` also failed on its code (UNAVAILABLE, after the headers'
wait plus a second full timeout)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from grpctunnel import (
    PendingChannel,
    ReverseTunnelServer,
    TunnelClientOptions,
    TunnelServiceHandlerOptions,
)
from grpctunnel import metadata as md
from grpctunnel.gateway import GatewayServer, GatewaySettings
from grpctunnel.gateway.auth import Grant, TokenAuthority, bearer_metadata
from grpctunnel.v1 import tunnel_pb2
from grpctunnel.v1.tunnel_pb2_grpc import TunnelServiceStub

from .conftest import start_backend, wait

NEGOTIATE = (md.NEGOTIATE_HEADER, md.NEGOTIATE_VALUE)


async def _dropped(call: Any) -> grpc.aio.AioRpcError:
    """Reads the raw tunnel RPC until the server ends it; its error."""
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while await wait(call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
            pass
    return ended.value


async def test_handler_drops_a_reverse_tunnel_that_never_sends_settings() -> None:
    backend = await start_backend(TunnelServiceHandlerOptions(establishment_timeout=0.3))
    try:
        call = backend.dial().OpenReverseTunnel(metadata=(NEGOTIATE,))
        await wait(call.initial_metadata())
        assert len(backend.handler.open_tunnels()) == 1  # half-open, and counted
        error = await _dropped(call)  # ... and we never send the settings
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
        assert error.details() == (
            "tunnel not established within 0.3s: no settings frame from the peer"
        )
        assert backend.handler.open_tunnels() == []
        assert backend.handler.all_reverse_tunnels() == []
    finally:
        await backend.aclose()


async def test_gateway_frees_the_place_of_a_half_open_tunnel() -> None:
    """A credential with room for one tunnel: a half-open one holds the room until the
    gateway's establishment timeout drops it; then a real one gets in."""
    authority = TokenAuthority()
    authority.add("t", Grant(name="agent", max_tunnels=1))
    settings = GatewaySettings(authority=authority, establishment_timeout=0.3)
    async with GatewayServer(settings) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = TunnelServiceStub(channel)  # type: ignore[no-untyped-call]
            token = bearer_metadata("t")
            half_open = stub.OpenReverseTunnel(metadata=(NEGOTIATE, *token))
            await wait(half_open.initial_metadata())
            rts = ReverseTunnelServer(stub, TunnelClientOptions(metadata=token))
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await wait(rts.serve(timeout=5))
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            error = await _dropped(half_open)
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
            tunnel = await wait(rts.serve(timeout=5))
            await wait(server.gateway.handler.wait_for_reverse_tunnel())
            assert not tunnel.closed
            await rts.stop()


@pytest.fixture
async def silent_server() -> AsyncIterator[tuple[str, dict[str, float]]]:
    """A TunnelService that answers OpenTunnel after ``delay["headers"]`` seconds, as a
    negotiating peer, and then never sends its settings frame."""
    delay = {"headers": 0.0}
    hang = asyncio.Event()

    async def open_tunnel(requests: Any, context: Any) -> Any:
        await asyncio.sleep(delay["headers"])  # a slow server: what the test is about
        await context.send_initial_metadata(md.tunnel_open_headers())
        await hang.wait()
        yield tunnel_pb2.ServerToClient()  # pragma: no cover

    handler = grpc.method_handlers_generic_handler(
        "grpctunnel.v1.TunnelService",
        {
            "OpenTunnel": grpc.stream_stream_rpc_method_handler(
                open_tunnel,
                request_deserializer=tunnel_pb2.ClientToServer.FromString,
                response_serializer=tunnel_pb2.ServerToClient.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", delay
    finally:
        hang.set()
        await server.stop(None)


async def test_pending_channel_gives_up_on_a_server_that_sends_no_settings(
    silent_server: tuple[str, dict[str, float]],
) -> None:
    address, _ = silent_server
    async with grpc.aio.insecure_channel(address) as channel:
        opening = PendingChannel(
            TunnelServiceStub(channel),  # type: ignore[no-untyped-call]
            TunnelClientOptions(establishment_timeout=0.3),
        )
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await wait(opening.start())  # no timeout of its own
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert failed.value.details() == (
        "tunnel not established within 0.3s: no settings frame from the peer"
    )


async def test_start_has_one_deadline(silent_server: tuple[str, dict[str, float]]) -> None:
    """The server answers after 1 s, then sends nothing: ``start(timeout=1.5)`` fails
    1.5 s after it began (not 1 + 1.5 s), with DEADLINE_EXCEEDED."""
    address, delay = silent_server
    delay["headers"] = 1.0
    async with grpc.aio.insecure_channel(address) as channel:
        opening = PendingChannel(
            TunnelServiceStub(channel),  # type: ignore[no-untyped-call]
            TunnelClientOptions(establishment_timeout=None),
        )
        began = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await wait(opening.start(timeout=1.5))
        took = time.monotonic() - began
    print(f"start(timeout=1.5) against a server answering after 1s failed after {took:.2f}s")
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, failed.value
    assert "no settings frame from the peer" in (failed.value.details() or "")
    assert 1.4 < took < 2.3, took
