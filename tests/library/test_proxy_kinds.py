"""The relay uses each method's real kind once reflection has told it, and relays the
same bytes, metadata and statuses as the stream relay that fits every kind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import status_pb2

from grpctunnel.gateway.method_kinds import MethodKinds, kinds_from_files
from grpctunnel.gateway.proxy import ProxyHandler, Route
from grpctunnel_demo.service import start_demo_backend
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

ECHO = "grpctunnel.demo.v1.Echo"


@pytest.fixture
async def relay() -> AsyncIterator[tuple[echo_pb2_grpc.EchoStub, ProxyHandler, MethodKinds]]:
    backend, backend_port = await start_demo_backend()
    upstream = grpc.aio.insecure_channel(f"127.0.0.1:{backend_port}")
    kinds = MethodKinds(lambda service: upstream)
    proxy = ProxyHandler(lambda method, md: Route(upstream, "backend"), kinds=kinds)
    front = grpc.aio.server()
    front.add_generic_rpc_handlers((proxy,))
    port = front.add_insecure_port("127.0.0.1:0")
    await front.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield echo_pb2_grpc.EchoStub(channel), proxy, kinds
    finally:
        await channel.close()
        await front.stop(None)
        await upstream.close()
        await backend.stop(None)


async def exercise(stub: echo_pb2_grpc.EchoStub) -> None:
    call = stub.Echo(echo_pb2.EchoRequest(msg="hi"), metadata=(("echo-k", "v"),), timeout=10)
    assert (await call).msg == "hi"
    assert ("echo-k", "v") in tuple(await call.initial_metadata())
    assert ("echo-k", "v") in tuple(await call.trailing_metadata())
    replies = [
        r.msg async for r in stub.Expand(echo_pb2.ExpandRequest(msg="x", count=3), timeout=10)
    ]
    assert replies == ["x", "x", "x"]
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Echo(echo_pb2.EchoRequest(msg="error-details:NOT_FOUND:gone"), timeout=10)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND and failed.value.details() == "gone"
    details = dict(failed.value.trailing_metadata() or ())["grpc-status-details-bin"]
    assert status_pb2.Status.FromString(details).details, "rich details are relayed"
    with pytest.raises(grpc.aio.AioRpcError) as failed_stream:
        async for _ in stub.Expand(echo_pb2.ExpandRequest(msg="error:ABORTED:stop"), timeout=10):
            pass
    assert failed_stream.value.code() == grpc.StatusCode.ABORTED


async def test_relay_before_and_after_learning_kinds(
    relay: tuple[echo_pb2_grpc.EchoStub, ProxyHandler, MethodKinds],
) -> None:
    stub, proxy, kinds = relay
    await exercise(stub)  # whatever is known yet
    assert await kinds.learn(ECHO)
    assert kinds.get(f"/{ECHO}/Echo") == (False, False)
    assert kinds.get(f"/{ECHO}/Expand") == (False, True)
    assert kinds.get(f"/{ECHO}/Collect") == (True, False)
    assert kinds.get(f"/{ECHO}/Chat") == (True, True)
    await exercise(stub)  # now through the unary and unary-stream relays
    assert proxy.in_flight == 0


async def test_unknown_service_stays_generic() -> None:
    kinds = MethodKinds(lambda service: None)
    assert kinds.get("/no.Such/Method") is None
    assert not await kinds.learn("no.Such")


def test_kinds_from_files() -> None:
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto()
    echo_pb2.DESCRIPTOR.CopyToProto(proto)
    kinds = kinds_from_files([proto.SerializeToString()], ECHO)
    assert kinds[f"/{ECHO}/Collect"] == (True, False)
    assert kinds_from_files([proto.SerializeToString()], "other.Service") == {}
