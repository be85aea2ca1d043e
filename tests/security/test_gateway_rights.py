"""The same protections without the command line: a library ``Gateway(authority=...)``
on a grpc.aio server. Rights per service hold for direct calls and, against the token
the tunnel was opened with, for calls inside forward tunnels; a token sent with a call
inside a tunnel cannot widen the tunnel's rights."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from grpctunnel import (
    PendingChannel,
    ReverseTunnelServer,
    TunnelClientOptions,
    TunnelServiceHandler,
    TunnelServiceHandlerOptions,
    TunnelServiceStub,
    add_TunnelServiceServicer_to_server,
)
from grpctunnel.gateway import Gateway, GatewayServer, GatewaySettings, announce_metadata
from grpctunnel.gateway.auth import (
    AuthInterceptor,
    Grant,
    TokenAuthority,
    bearer_metadata,
    require_tokens,
)
from grpctunnel_demo.service import EchoServicer
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

pytestmark = pytest.mark.timeout(60)

ECHO = "grpctunnel.demo.v1.Echo"
OTHER = "test.v1.Other"
PING = f"/{OTHER}/Ping"


async def _pong(request: bytes, context: Any) -> bytes:
    return b"pong:" + request


def _authority() -> TokenAuthority:
    authority = TokenAuthority()
    authority.add("agent-t", Grant(name="agent", may_call=False))
    authority.add("ops-t", Grant(name="ops", may_expose=False, call_services=frozenset({ECHO})))
    authority.add("all-t", Grant(name="all"))
    return authority


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, grpc.aio.Channel]]:
    """A gateway with tokens, and an agent exposing Echo and test.v1.Other through it."""
    gateway_server = GatewayServer(GatewaySettings(authority=_authority()))
    gateway = gateway_server.gateway
    port = await gateway_server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    agent = ReverseTunnelServer(
        TunnelServiceStub(channel),
        TunnelClientOptions(
            metadata=(*announce_metadata("agent", [ECHO, OTHER]), *bearer_metadata("agent-t"))
        ),
    )
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), agent)
    agent.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                OTHER, {"Ping": grpc.unary_unary_rpc_method_handler(_pong)}
            ),
        )
    )
    await agent.serve(timeout=10)
    deadline = time.monotonic() + 10
    while OTHER not in gateway.exposed():  # routable once the tunnel is negotiated
        assert time.monotonic() < deadline, "the agent's tunnel never became routable"
        await asyncio.sleep(0.01)
    try:
        yield gateway, channel
    finally:
        await agent.stop()
        await channel.close()
        await gateway_server.stop()


async def _echo(channel: grpc.aio.Channel, metadata: Any = None) -> str:
    stub = echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
    reply = await stub.Echo(echo_pb2.EchoRequest(msg="hi"), metadata=metadata, timeout=10)
    return str(reply.msg)


async def _ping(channel: grpc.aio.Channel, metadata: Any = None) -> bytes:
    ping: Any = channel.unary_unary(PING)
    return bytes(await ping(b"x", metadata=metadata, timeout=10))


async def _refused(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value.code(), refused.value.details() or ""


async def _list_services(channel: grpc.aio.Channel, metadata: Any = None) -> list[str]:
    info: Any = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = info(metadata=metadata, timeout=10)
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    await call.done_writing()
    reply = await call.read()
    call.cancel()
    return [s.name for s in reply.list_services_response.service]


async def test_per_service_rights_direct_and_inside_forward_tunnels(
    gateway: tuple[Gateway, grpc.aio.Channel],
) -> None:
    _, channel = gateway
    ops, everything = bearer_metadata("ops-t"), bearer_metadata("all-t")

    # directly: the token of each call decides
    assert await _echo(channel, ops) == "hi"
    assert await _ping(channel, everything) == b"pong:x"
    code, details = await _refused(_ping(channel, ops))
    assert code == grpc.StatusCode.PERMISSION_DENIED and f"may not call {OTHER}" in details
    code, details = await _refused(_echo(channel))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "missing credentials" in details

    # inside a forward tunnel: the token the tunnel was opened with decides
    tunnel = await PendingChannel(TunnelServiceStub(channel)).start(metadata=ops, timeout=10)
    try:
        assert await _echo(tunnel) == "hi"
        # reflection, to find methods: only the services this credential may call
        listed = await _list_services(tunnel)
        assert ECHO in listed and OTHER not in listed
        code, details = await _refused(_ping(tunnel))
        assert code == grpc.StatusCode.PERMISSION_DENIED, details
        assert f"credential 'ops' may not call {OTHER}" in details
        # a stronger token sent with the call does not widen the tunnel's rights
        code, _ = await _refused(_ping(tunnel, everything))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await tunnel.close()

    wide = await PendingChannel(TunnelServiceStub(channel)).start(metadata=everything, timeout=10)
    try:
        assert await _ping(wide) == b"pong:x"
    finally:
        await wide.close()


async def test_an_agent_that_may_expose_cannot_call(
    gateway: tuple[Gateway, grpc.aio.Channel],
) -> None:
    _, channel = gateway
    agent = bearer_metadata("agent-t")
    code, details = await _refused(
        PendingChannel(TunnelServiceStub(channel)).start(metadata=agent, timeout=10)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "may not make calls" in details
    for call in (_echo(channel, agent), _ping(channel, agent), _list_services(channel, agent)):
        code, details = await _refused(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "may not make calls" in details


async def test_a_gateway_guards_its_services_without_the_interceptor() -> None:
    """Even on a server created without ``gateway.interceptors()``, the relayed calls,
    reflection and tunnels of the gateway are guarded."""
    gateway = Gateway(authority=_authority())
    server = grpc.aio.server()
    gateway.attach(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        code, _ = await _refused(_echo(channel))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = await _refused(_list_services(channel))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = await _refused(PendingChannel(TunnelServiceStub(channel)).start(timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, details = await _refused(_echo(channel, bearer_metadata("ops-t")))
        assert code == grpc.StatusCode.UNAVAILABLE and "no tunnel exposes" in details
    finally:
        await channel.close()
        await gateway.shutdown(0)
        await server.stop(None)


async def test_a_plain_handler_with_require_tokens() -> None:
    """Without the gateway: a TunnelServiceHandler whose options check tokens, and the
    interceptor on the server around it."""
    authority = _authority()
    handler = TunnelServiceHandler(require_tokens(TunnelServiceHandlerOptions(), authority))
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), handler)
    handler.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                OTHER, {"Ping": grpc.unary_unary_rpc_method_handler(_pong)}
            ),
        )
    )
    server = grpc.aio.server(interceptors=[AuthInterceptor(authority)])
    add_TunnelServiceServicer_to_server(handler.service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = TunnelServiceStub(channel)
    try:
        code, _ = await _refused(PendingChannel(stub).start(timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = await _refused(
            PendingChannel(stub).start(metadata=bearer_metadata("agent-t"), timeout=10)
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        code, _ = await _refused(
            ReverseTunnelServer(stub, TunnelClientOptions(metadata=bearer_metadata("ops-t"))).serve(
                timeout=10
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        tunnel = await PendingChannel(stub).start(metadata=bearer_metadata("ops-t"), timeout=10)
        try:
            assert await _echo(tunnel) == "hi"
            code, details = await _refused(_ping(tunnel))
            assert code == grpc.StatusCode.PERMISSION_DENIED and OTHER in details
        finally:
            await tunnel.close()
    finally:
        await channel.close()
        await server.stop(None)


class _CountingAuthority(TokenAuthority):
    """An authority that counts how often a token is looked up: once per decision."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def authenticate(self, pairs: Any) -> Grant | None:
        self.lookups += 1
        return super().authenticate(pairs)


async def test_a_direct_call_is_judged_once() -> None:
    """Auth is enforced at one point: on a gateway server with its interceptor and its
    guarded handlers, a direct call's token is judged once, not once per guard."""
    authority = _CountingAuthority()
    authority.add("ops-t", Grant(name="ops"))
    async with GatewayServer(GatewaySettings(authority=authority)) as gateway_server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway_server.port}")
        try:
            before = authority.lookups
            code, details = await _refused(_echo(channel, bearer_metadata("ops-t")))
            assert code == grpc.StatusCode.UNAVAILABLE and "no tunnel exposes" in details
            assert authority.lookups - before == 1
            before = authority.lookups
            code, _ = await _refused(_echo(channel, bearer_metadata("wrong")))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            assert authority.lookups - before == 1
        finally:
            await channel.close()
