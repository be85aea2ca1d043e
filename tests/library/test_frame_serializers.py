"""The TunnelService stub and registration that ``grpctunnel`` exports write large data
frames in their wire form and read them by hand (grpctunnel.rpc, grpctunnel.protocol.wire);
the generated ones (grpctunnel.v1.tunnel_pb2_grpc) do neither. Every pairing of the two,
forward and reverse, carries large messages intact both ways, and a tunnel uses the wire
form exactly where its own end of the RPC can take it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from support.servers import serving

import grpctunnel
from grpctunnel import PendingChannel, ReverseTunnelServer, TunnelServiceHandler
from grpctunnel.protocol.wire import MAX_MESSAGE_SIZE
from grpctunnel.v1 import tunnel_pb2, tunnel_pb2_grpc
from grpctunnel_demo.service import EchoServicer
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

SIZES = (0, 100, 16 * 1024, 1024 * 1024 + 7, 3 * 1024 * 1024)
PAIRINGS = [(s, c) for s in ("ours", "generated") for c in ("ours", "generated")]


def _stub(kind: str, channel: grpc.aio.Channel) -> tunnel_pb2_grpc.TunnelServiceStub:
    if kind == "ours":
        return grpctunnel.TunnelServiceStub(channel)
    return tunnel_pb2_grpc.TunnelServiceStub(channel)  # type: ignore[no-untyped-call]


@asynccontextmanager
async def _channel_to(server: grpc.aio.Server) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to ``server``, running on loopback for the block."""
    async with serving(server) as target, grpc.aio.insecure_channel(target) as channel:
        yield channel


def _tunnel_server(kind: str, handler: TunnelServiceHandler) -> grpc.aio.Server:
    server = grpc.aio.server()
    if kind == "ours":
        grpctunnel.add_TunnelServiceServicer_to_server(handler.service(), server)
    else:
        tunnel_pb2_grpc.add_TunnelServiceServicer_to_server(handler.service(), server)  # type: ignore[no-untyped-call]
    return server


async def _echo_all(channel: grpc.aio.Channel) -> None:
    stub = echo_pb2_grpc.EchoStub(channel)
    for size in SIZES:
        reply = await stub.Echo(echo_pb2.EchoRequest(msg="x" * size), timeout=30)
        assert reply.msg == "x" * size
    # a stream of large messages each way
    requests = [echo_pb2.EchoRequest(msg=chr(97 + i) * (600_000 + i)) for i in range(4)]

    async def send() -> AsyncIterator[echo_pb2.EchoRequest]:
        for request in requests:
            yield request

    replies = [r.msg async for r in stub.Chat(send(), timeout=30)]
    assert replies == [r.msg for r in requests]


@pytest.fixture
async def handler() -> AsyncIterator[TunnelServiceHandler]:
    handler = TunnelServiceHandler()
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), handler)
    yield handler
    await handler.close()


@pytest.mark.parametrize(("server_kind", "client_kind"), PAIRINGS)
async def test_forward_tunnels_carry_large_messages_in_every_pairing(
    handler: TunnelServiceHandler, server_kind: str, client_kind: str
) -> None:
    async with _channel_to(_tunnel_server(server_kind, handler)) as raw:
        tunnel = await PendingChannel(_stub(client_kind, raw)).start(timeout=10)
        async with tunnel:
            session = tunnel._source.pick()  # type: ignore[attr-defined]
            assert session.conn.config.encoded_data_frames is (client_kind == "ours")
            (served,) = handler._forward
            assert served.conn.config.encoded_data_frames is (server_kind == "ours")
            await _echo_all(tunnel)


@pytest.mark.parametrize(("server_kind", "client_kind"), PAIRINGS)
async def test_reverse_tunnels_carry_large_messages_in_every_pairing(
    handler: TunnelServiceHandler, server_kind: str, client_kind: str
) -> None:
    async with _channel_to(_tunnel_server(server_kind, handler)) as raw:
        exposer = ReverseTunnelServer(_stub(client_kind, raw))
        echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), exposer)
        served = await exposer.serve(timeout=10)
        reverse = await handler.wait_for_reverse_tunnel()
        assert served.session.conn.config.encoded_data_frames is (client_kind == "ours")
        assert reverse.session.conn.config.encoded_data_frames is (server_kind == "ours")
        await _echo_all(handler.as_channel())
        await exposer.stop()


async def test_a_reader_written_for_bytes_gets_bytes(handler: TunnelServiceHandler) -> None:
    """A message that came whole in one frame read by hand is a view of that frame; only
    a protobuf parser is given the view, any other deserializer gets bytes as from gRPC."""

    def shout(request: str, context: object) -> str:
        assert type(request) is str
        return request.upper()

    method = grpc.unary_unary_rpc_method_handler(
        shout, request_deserializer=bytes.decode, response_serializer=str.encode
    )
    handler.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("t.Shout", {"Shout": method}),)
    )
    async with _channel_to(_tunnel_server("ours", handler)) as raw:
        tunnel = await PendingChannel(grpctunnel.TunnelServiceStub(raw)).start(timeout=10)
        async with tunnel:
            call = tunnel.unary_unary(
                "/t.Shout/Shout",
                request_serializer=str.encode,
                response_deserializer=bytes.decode,
            )
            text = "abc" * 400_000  # 1.2 MiB: one frame each way between our peers
            assert await call(text, timeout=30) == text.upper()


async def test_a_servicer_of_your_own_sees_protobuf_frames_and_keeps_its_methods(
    handler: TunnelServiceHandler,
) -> None:
    """Registered with grpctunnel's function, a servicer that is not the handler's own
    (one of yours, or a wrapper around the handler's) is registered as generated code
    would: its own methods run, and every frame it reads or writes is protobuf. The
    stub's OpenTunnel, called directly, reads protobuf frames too."""
    seen: list[str] = []

    class Guard(tunnel_pb2_grpc.TunnelServiceServicer):
        def __init__(self, inner: object) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> object:  # forwards the rest to the handler's
            return getattr(self._inner, name)

        async def OpenTunnel(
            self, request_iterator: object, context: grpc.aio.ServicerContext
        ) -> None:  # type: ignore[override]
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "guarded")

    class Relay(tunnel_pb2_grpc.TunnelServiceServicer):
        async def OpenReverseTunnel(self, request_iterator: Any, context: object) -> Any:  # type: ignore[override]
            async for frame in request_iterator:
                seen.append(type(frame).__name__)
                yield tunnel_pb2.ClientToServer(
                    stream_id=frame.stream_id, more_request_data=frame.more_response_data
                )

    guarded = grpc.aio.server()
    grpctunnel.add_TunnelServiceServicer_to_server(Guard(handler.service()), guarded)
    relaying = grpc.aio.server()
    grpctunnel.add_TunnelServiceServicer_to_server(Relay(), relaying)
    async with _channel_to(guarded) as raw:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await PendingChannel(grpctunnel.TunnelServiceStub(raw)).start(timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with _channel_to(relaying) as raw:
        call = grpctunnel.TunnelServiceStub(raw).OpenReverseTunnel()
        chunk = b"x" * 40_000  # large enough to be read by hand on the encoded RPCs
        await call.write(tunnel_pb2.ServerToClient(stream_id=1, more_response_data=chunk))
        await call.done_writing()
        replies = [frame async for frame in call]
        assert [type(r) for r in replies] == [tunnel_pb2.ClientToServer]
        assert replies[0].more_request_data == chunk
        assert seen == ["ServerToClient"]


async def test_a_tunnel_sends_at_most_what_a_frame_can_announce(
    handler: TunnelServiceHandler,
) -> None:
    async with _channel_to(_tunnel_server("ours", handler)) as raw:
        tunnel = await PendingChannel(grpctunnel.TunnelServiceStub(raw)).start(timeout=10)
        async with tunnel:
            session = tunnel._source.pick()  # type: ignore[attr-defined]
            assert session.max_send_message_length == MAX_MESSAGE_SIZE == 2**32 - 1
