"""The TunnelService RPCs as this library opens and serves them: the stub and the server
registration that ``grpctunnel`` exports.

They are the generated ones (``grpctunnel.v1.tunnel_pb2_grpc``, which work too) but for
the (de)serializers of the frames (see :mod:`grpctunnel.protocol.wire`): the frames this
side writes may be in their wire form already
(:class:`~grpctunnel.protocol.wire.EncodedFrame`), and a large data frame read is read
by hand, its chunk a view of the bytes received. A tunnel opened through
:class:`TunnelServiceStub`, or served by a servicer added with
:func:`add_TunnelServiceServicer_to_server`, so moves each large chunk of message data
with one copy instead of four on the way out and none instead of two on the way in. The
bytes on the wire are the same either way.

A tunnel learns which it got when it opens: :func:`tunnel_rpc` picks the encoded RPC of
a stub of this module, and the handler's servicer registered here is the variant whose
tunnels write encoded frames (``with_encoded_frames``). Everything else (a generated
stub, the ``OpenTunnel`` / ``OpenReverseTunnel`` of this stub called directly, a
servicer of your own) sees protobuf frames, as generated code does.
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc

from grpctunnel.protocol.wire import decode_client_frame, decode_server_frame
from grpctunnel.v1 import tunnel_pb2_grpc

SERVICE = "grpctunnel.v1.TunnelService"
_OPEN_TUNNEL = f"/{SERVICE}/OpenTunnel"
_OPEN_REVERSE_TUNNEL = f"/{SERVICE}/OpenReverseTunnel"


class _Serializable(Protocol):
    def SerializeToString(self) -> bytes: ...


def serialize_frame(frame: _Serializable) -> bytes:
    """A frame's bytes, whether a protobuf frame or one already in its wire form."""
    return frame.SerializeToString()


class TunnelServiceStub(tunnel_pb2_grpc.TunnelServiceStub):
    """The client of ``TunnelService``: the generated stub, whose ``OpenTunnel`` and
    ``OpenReverseTunnel`` stay as generated (protobuf frames, for code that reads and
    writes frames itself), plus the same two RPCs with the tunnel's own
    (de)serializers, which :class:`~grpctunnel.PendingChannel` and
    :class:`~grpctunnel.ReverseTunnelServer` open (see :func:`tunnel_rpc`)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel)  # type: ignore[no-untyped-call]
        self.open_tunnel_encoded = channel.stream_stream(
            _OPEN_TUNNEL,
            request_serializer=serialize_frame,
            response_deserializer=decode_server_frame,
        )
        self.open_reverse_tunnel_encoded = channel.stream_stream(
            _OPEN_REVERSE_TUNNEL,
            request_serializer=serialize_frame,
            response_deserializer=decode_client_frame,
        )


def tunnel_rpc(stub: tunnel_pb2_grpc.TunnelServiceStub, *, reverse: bool) -> tuple[Any, bool]:
    """The RPC that opens a tunnel (``OpenReverseTunnel`` with ``reverse``) through
    ``stub``, and whether its frames may be in their wire form: the encoded variant of a
    stub of this module, else the stub's own (a generated stub: protobuf frames)."""
    if isinstance(stub, TunnelServiceStub):
        return (stub.open_reverse_tunnel_encoded if reverse else stub.open_tunnel_encoded), True
    return (stub.OpenReverseTunnel if reverse else stub.OpenTunnel), False


def add_TunnelServiceServicer_to_server(servicer: Any, server: Any) -> None:
    """Adds ``servicer`` to ``server``, as the generated function does. The servicer of
    a :class:`~grpctunnel.TunnelServiceHandler` (``handler.service()``) is registered
    with the tunnel's own (de)serializers, its tunnels then writing and reading large
    data frames in their wire form; any other servicer (one of your own, or a wrapper
    around the handler's) is registered exactly as the generated function would, and
    sees protobuf frames."""
    if "with_encoded_frames" not in type(servicer).__dict__:
        # not the handler's own servicer (a subclass or a wrapper would be bypassed)
        tunnel_pb2_grpc.add_TunnelServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        return
    encoded = servicer.with_encoded_frames()
    handlers = {
        "OpenTunnel": grpc.stream_stream_rpc_method_handler(
            encoded.OpenTunnel,
            request_deserializer=decode_client_frame,
            response_serializer=serialize_frame,
        ),
        "OpenReverseTunnel": grpc.stream_stream_rpc_method_handler(
            encoded.OpenReverseTunnel,
            request_deserializer=decode_server_frame,
            response_serializer=serialize_frame,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


__all__ = [
    "SERVICE",
    "TunnelServiceStub",
    "add_TunnelServiceServicer_to_server",
    "serialize_frame",
    "tunnel_rpc",
]
