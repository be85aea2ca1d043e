"""Registering services the ways a grpc.aio server accepts them, on a
TunnelServiceHandler (forward), a ReverseTunnelServer (reverse) and a TunnelPair."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest

from grpctunnel import PendingChannel, ReverseTunnelServer, TunnelServiceHandler
from grpctunnel.testing import TunnelPair
from grpctunnel_demo.service import EchoServicer
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

from .conftest import start_backend

Req = echo_pb2.EchoRequest
Register = Callable[[Any], None]
Opener = Callable[[Register], Awaitable[grpc.aio.Channel]]


@pytest.fixture(params=["handler", "reverse", "pair"])
async def serve_with(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
    """``channel = await serve_with(register)``: ``register(target)`` registers services
    on the serving end (a handler, a reverse tunnel server or a pair's server) and the
    channel calls them through a tunnel."""
    where = request.param
    async with contextlib.AsyncExitStack() as stack:

        async def open_(register: Register) -> grpc.aio.Channel:
            if where == "pair":
                pair = TunnelPair()
                register(pair.server)
                await stack.enter_async_context(pair)
                return pair.channel
            backend = await start_backend(bare=True)
            stack.push_async_callback(backend.aclose)
            if where == "handler":
                register(backend.handler)
                channel = await PendingChannel(backend.dial()).start()
                stack.push_async_callback(channel.close)
                return channel
            rts = ReverseTunnelServer(backend.dial())
            register(rts)
            stack.push_async_callback(rts.stop)
            await rts.serve()
            channel = backend.handler.as_channel()
            await channel.channel_ready()
            return channel

        yield open_


async def test_generated_add_servicer_to_server(serve_with: Opener) -> None:
    channel = await serve_with(
        lambda target: echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), target)
    )
    stub = echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
    assert (await stub.Echo(Req(msg="gen"))).msg == "gen"
    assert [r.index async for r in stub.Expand(echo_pb2.ExpandRequest(msg="e", count=2))] == [
        0,
        1,
    ]
    assert (await stub.Collect(iter([Req(msg="a"), Req(msg="b")]))).msg == "a b"
    assert [r.msg async for r in stub.Chat(iter([Req(msg="c")]))] == ["c"]
    # the demo's rich-error hook through generated code
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Echo(Req(msg="error-details:NOT_FOUND:gone"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert any(k == "grpc-status-details-bin" for k, _ in info.value.trailing_metadata())


async def test_register_service_from_the_descriptor_pool(serve_with: Opener) -> None:
    channel = await serve_with(
        lambda target: target.register_service(EchoServicer(), "grpctunnel.demo.v1.Echo")
    )
    stub = echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
    assert (await stub.Echo(Req(msg="pool"))).msg == "pool"
    assert len([r async for r in stub.Expand(echo_pb2.ExpandRequest(msg="e"))]) == 3


class Table:
    """A servicer for a service that exists only as a method table (raw bytes)."""

    async def Upper(self, request: bytes, context: Any) -> bytes:
        return request.upper()

    async def Count(self, requests: Any, context: Any) -> bytes:
        return str(len([r async for r in requests])).encode()

    async def Split(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        for part in request.split(b" "):
            yield part

    async def Pipe(self, requests: Any, context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request[::-1]


TABLE = {
    "Upper": {"is_client_stream": False, "is_server_stream": False},
    "Count": {"is_client_stream": True, "is_server_stream": False},
    "Split": {"is_client_stream": False, "is_server_stream": True},
    "Pipe": {"is_client_stream": True, "is_server_stream": True},
}


async def test_register_service_with_a_method_table(serve_with: Opener) -> None:
    def register(target: Any) -> None:
        target.register_service(Table(), "test.Table", TABLE)
        # a pool service with only some of its methods, and explicit message types
        target.register_service(
            EchoServicer(),
            "grpctunnel.demo.v1.Echo",
            {
                "Echo": {
                    "is_client_stream": False,
                    "is_server_stream": False,
                    "request_deserializer": Req.FromString,
                    "response_serializer": echo_pb2.EchoReply.SerializeToString,
                }
            },
        )

    channel = await serve_with(register)
    assert await channel.unary_unary("/test.Table/Upper")(b"abc") == b"ABC"
    assert await channel.stream_unary("/test.Table/Count")(iter([b"1", b"2", b"3"])) == b"3"
    assert [m async for m in channel.unary_stream("/test.Table/Split")(b"a b c")] == [
        b"a",
        b"b",
        b"c",
    ]
    assert [m async for m in channel.stream_stream("/test.Table/Pipe")(iter([b"ab", b"cd"]))] == [
        b"ba",
        b"dc",
    ]
    stub = echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
    assert (await stub.Echo(Req(msg="only echo"))).msg == "only echo"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Expand(echo_pb2.ExpandRequest(msg="x")).read()
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_register_service_errors() -> None:
    handler = TunnelServiceHandler()
    with pytest.raises(ValueError, match="descriptor pool"):
        handler.register_service(Table(), "no.such.Service")
    with pytest.raises(ValueError, match="no method"):
        handler.register_service(Table(), "test.Table", {"Missing": {}})
    with pytest.raises(ValueError, match="has no method"):
        handler.register_service(EchoServicer(), "grpctunnel.demo.v1.Echo", {"Upper": {}})
    with pytest.raises(TypeError):
        handler.add_generic_rpc_handlers([object()])  # type: ignore[list-item]


class Inspecting(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A hand-written generic handler that routes on the call details."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        self.seen.append((method, tuple(handler_call_details.invocation_metadata)))
        if not method.startswith("/dyn."):
            return None

        def behave(request: bytes, context: Any) -> bytes:  # a plain (sync) function
            return method.encode() + b":" + request

        return grpc.unary_unary_rpc_method_handler(behave)


async def test_generic_handlers(serve_with: Opener) -> None:
    inspecting = Inspecting()

    def numbers(request: bytes, context: Any) -> Iterator[bytes]:  # a sync generator
        for i in range(int(request)):
            yield str(i).encode()

    def register(target: Any) -> None:
        target.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Generic",
                    {"Numbers": grpc.unary_stream_rpc_method_handler(numbers)},
                ),
                inspecting,
            )
        )

    channel = await serve_with(register)
    assert [m async for m in channel.unary_stream("/test.Generic/Numbers")(b"3")] == [
        b"0",
        b"1",
        b"2",
    ]
    reply = await channel.unary_unary("/dyn.Any/Thing")(b"x", metadata=(("k", "v"),))
    assert reply == b"/dyn.Any/Thing:x"
    assert ("/dyn.Any/Thing", (("k", "v"),)) in inspecting.seen
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary("/other.Service/M")(b"")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_registered_methods_take_precedence_over_generic(serve_with: Opener) -> None:
    def register(target: Any) -> None:
        target.add_generic_rpc_handlers((Inspecting(),))
        target.register_service(Table(), "dyn.Table", TABLE)

    channel = await serve_with(register)
    assert await channel.unary_unary("/dyn.Table/Upper")(b"q") == b"Q"
    assert await channel.unary_unary("/dyn.Table/Other")(b"q") == b"/dyn.Table/Other:q"
