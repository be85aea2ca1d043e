"""Messages larger than gRPC's default 4 MiB cross serve's gateway and an exposer when
their limits allow it, and fail with RESOURCE_EXHAUSTED when they do not."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from grpctunnel.gateway import GatewayServer, GatewaySettings
from grpctunnel.gateway.exposer import ExposeConfig, Exposer
from grpctunnel_demo.service import EchoServicer, enable_reflection
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

MIB = 1024 * 1024
LIMIT = 16 * MIB
OPTIONS = [("grpc.max_receive_message_length", LIMIT), ("grpc.max_send_message_length", LIMIT)]


@pytest.mark.parametrize(("expose_limit", "ok"), [(LIMIT, True), (4 * MIB, False)])
async def test_large_message_through_gateway_and_exposer(expose_limit: int, ok: bool) -> None:
    backend = grpc.aio.server(options=OPTIONS)
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), backend)
    enable_reflection(backend, [echo_pb2.DESCRIPTOR.services_by_name["Echo"]])
    backend_port = backend.add_insecure_port("127.0.0.1:0")
    await backend.start()
    gateway_server = GatewayServer(GatewaySettings(max_message_length=LIMIT))
    gateway = gateway_server.gateway
    port = await gateway_server.start()
    exposer = Exposer(
        ExposeConfig(
            backend=f"127.0.0.1:{backend_port}",
            server=f"127.0.0.1:{port}",
            name="big",
            max_message_length=expose_limit,
        )
    )
    running = asyncio.ensure_future(exposer.run())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
    try:
        await asyncio.wait_for(gateway.handler.as_channel().channel_ready(), 20)
        stub = echo_pb2_grpc.EchoStub(channel)
        big = "x" * (6 * MIB)
        if ok:
            reply = await stub.Echo(echo_pb2.EchoRequest(msg=big), timeout=30)
            assert reply.msg == big
        else:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Echo(echo_pb2.EchoRequest(msg=big), timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in (refused.value.details() or "")
    finally:
        exposer.stop()
        await asyncio.gather(running, return_exceptions=True)
        await channel.close()
        await gateway_server.stop()
        await backend.stop(None)
