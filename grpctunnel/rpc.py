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

A tunnel learns which it got when it opens: a stub of this module says so
(:func:`writes_encoded_frames`), and the handler's servicer registered here is the
variant whose tunnels write encoded frames (``with_encoded_frames``). A servicer or a
stub of the generated code gets protobuf frames only.
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
    """The client of ``TunnelService`` (as the generated stub), whose tunnels write
    large data frames in their wire form."""

    writes_encoded_frames = True

    def __init__(self, channel: grpc.aio.Channel | grpc.Channel) -> None:
        # not the generated __init__: its multicallables serialize protobuf frames only
        self.OpenTunnel = channel.stream_stream(
            _OPEN_TUNNEL,
            request_serializer=serialize_frame,
            response_deserializer=decode_server_frame,
        )
        self.OpenReverseTunnel = channel.stream_stream(
            _OPEN_REVERSE_TUNNEL,
            request_serializer=serialize_frame,
            response_deserializer=decode_client_frame,
        )


def writes_encoded_frames(stub: object) -> bool:
    """Whether the tunnels opened through ``stub`` may write frames in their wire form
    (a stub of this module; not the generated one)."""
    return getattr(stub, "writes_encoded_frames", False) is True


def add_TunnelServiceServicer_to_server(servicer: Any, server: Any) -> None:
    """Adds ``servicer`` (``TunnelServiceHandler.service()``, or any
    ``TunnelServiceServicer``) to ``server``, as the generated function does; the
    handler's tunnels served through it write large data frames in their wire form."""
    variant = getattr(servicer, "with_encoded_frames", None)
    if callable(variant):
        servicer = variant()
    handlers = {
        "OpenTunnel": grpc.stream_stream_rpc_method_handler(
            servicer.OpenTunnel,
            request_deserializer=decode_client_frame,
            response_serializer=serialize_frame,
        ),
        "OpenReverseTunnel": grpc.stream_stream_rpc_method_handler(
            servicer.OpenReverseTunnel,
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
    "writes_encoded_frames",
]
