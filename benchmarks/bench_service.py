"""What the service process offers, identically on every path.

* ``grpctunnel.demo.v1.Echo`` (the demo servicer from :mod:`grpctunnel_demo.service`): the
  16-byte unary echo, and ``Chat`` for the many-streams scenario.
* ``grpctunnel.bench.v1.Bench``, a benchmark-only service with raw ``bytes`` messages (no
  serializers, so no protobuf cost on 1 MiB payloads):

  - ``Stream`` (server streaming): the request is 8 bytes, ``<II`` = (count, size); the reply
    is ``count`` messages of ``size`` bytes each (the same preallocated bytes object).
  - ``Echo`` (unary): returns the request bytes unchanged (the large-message scenario).

Also the gRPC options and tunnel options every path uses: message limits raised to
:data:`MAX_MESSAGE` so that the 64 MiB message fits everywhere.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc

from grpctunnel import TunnelClientOptions, TunnelServiceHandlerOptions
from grpctunnel_demo.service import EchoServicer
from grpctunnel_demo.v1 import echo_pb2_grpc

BENCH_SERVICE = "grpctunnel.bench.v1.Bench"
STREAM_METHOD = f"/{BENCH_SERVICE}/Stream"
ECHO_BYTES_METHOD = f"/{BENCH_SERVICE}/Echo"
STREAM_REQUEST = struct.Struct("<II")

MAX_MESSAGE = 128 * 1024 * 1024  # room for the 64 MiB message plus framing

GRPC_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
)


def handler_options() -> TunnelServiceHandlerOptions:
    return TunnelServiceHandlerOptions(
        max_receive_message_length=MAX_MESSAGE, max_send_message_length=MAX_MESSAGE
    )


def client_options() -> TunnelClientOptions:
    return TunnelClientOptions(
        max_receive_message_length=MAX_MESSAGE, max_send_message_length=MAX_MESSAGE
    )


class _Blocks:
    """Preallocated reply payloads, one per size, so the server side does not pay for
    building 1 MiB objects (a real service would have its data at hand too)."""

    def __init__(self) -> None:
        self._by_size: dict[int, bytes] = {}

    def get(self, size: int) -> bytes:
        block = self._by_size.get(size)
        if block is None:
            block = self._by_size[size] = bytes([0xA5]) * size
        return block


_blocks = _Blocks()


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    count, size = STREAM_REQUEST.unpack(request)
    block = _blocks.get(size)
    for _ in range(count):
        yield block


async def _echo_bytes(request: bytes, context: Any) -> bytes:
    return request


def bench_generic_handler() -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(
        BENCH_SERVICE,
        {
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
            "Echo": grpc.unary_unary_rpc_method_handler(_echo_bytes),
        },
    )


def register_services(server: Any) -> None:
    """Registers Echo and Bench on a grpc.aio server, a TunnelServiceHandler or a
    ReverseTunnelServer (all take what generated code gives them)."""
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)  # type: ignore[no-untyped-call]
    server.add_generic_rpc_handlers((bench_generic_handler(),))
