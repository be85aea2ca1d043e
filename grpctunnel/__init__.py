"""grpctunnel: gRPC calls carried inside one long-lived gRPC stream.

Forward tunnels (:class:`PendingChannel`) give a client a ``grpc.aio.Channel`` whose
calls all travel through one stream to one server. Reverse tunnels
(:class:`ReverseTunnelServer`) let the server call services that the dialling client
hosts: :meth:`TunnelServiceHandler.as_channel` on the server side. The wire protocol is
that of the Go library github.com/jhump/grpctunnel, so Go and Python peers mix freely.
"""

from grpctunnel.channel import TunnelChannel
from grpctunnel.client import PendingChannel, ReverseTunnelServer, ServedTunnel
from grpctunnel.handler import ReverseTunnel, TunnelServiceHandler
from grpctunnel.options import TunnelClientOptions, TunnelOptions, TunnelServiceHandlerOptions
from grpctunnel.serving import TunnelServicerContext
from grpctunnel.v1.tunnel_pb2_grpc import (
    TunnelServiceServicer,
    TunnelServiceStub,
    add_TunnelServiceServicer_to_server,
)

__all__ = [
    "PendingChannel",
    "ReverseTunnel",
    "ReverseTunnelServer",
    "ServedTunnel",
    "TunnelChannel",
    "TunnelClientOptions",
    "TunnelOptions",
    "TunnelServiceHandler",
    "TunnelServiceHandlerOptions",
    "TunnelServiceServicer",
    "TunnelServiceStub",
    "TunnelServicerContext",
    "add_TunnelServiceServicer_to_server",
    "tunnel_metadata",
]


def tunnel_metadata(context: object) -> tuple[tuple[str, str | bytes], ...]:
    """The metadata the tunnel carrying this call was opened with, for a handler's
    ``context`` (empty for a call that did not come through a tunnel)."""
    getter = getattr(context, "tunnel_metadata", None)
    return tuple(getter()) if callable(getter) else ()
