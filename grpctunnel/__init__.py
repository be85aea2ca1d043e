"""grpctunnel: gRPC calls carried inside one long-lived gRPC stream.

Forward tunnels (:class:`PendingChannel`) give a client a ``grpc.aio.Channel`` whose
calls all travel through one stream to one server. Reverse tunnels
(:class:`ReverseTunnelServer`) let the server call services that the dialling client
hosts: :meth:`TunnelServiceHandler.as_channel` on the server side. The wire protocol is
that of the Go library github.com/jhump/grpctunnel, so Go and Python peers mix freely.
"""

from typing import TYPE_CHECKING

from grpctunnel.lazy import lazy_names

if TYPE_CHECKING:
    from grpctunnel.channel import TunnelChannel
    from grpctunnel.client import PendingChannel, ReverseTunnelServer, ServedTunnel
    from grpctunnel.handler import ReverseTunnel, TunnelServiceHandler
    from grpctunnel.options import TunnelClientOptions, TunnelOptions, TunnelServiceHandlerOptions
    from grpctunnel.rpc import TunnelServiceStub, add_TunnelServiceServicer_to_server
    from grpctunnel.serving import TunnelServicerContext
    from grpctunnel.v1.tunnel_pb2_grpc import TunnelServiceServicer

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


# Where each name of the public API is defined: imported when first asked for (PEP 562), so
# that importing one module of the package (grpctunnel.keepalive, say) does not import all.
_LAZY = {
    "PendingChannel": "grpctunnel.client",
    "ReverseTunnel": "grpctunnel.handler",
    "ReverseTunnelServer": "grpctunnel.client",
    "ServedTunnel": "grpctunnel.client",
    "TunnelChannel": "grpctunnel.channel",
    "TunnelClientOptions": "grpctunnel.options",
    "TunnelOptions": "grpctunnel.options",
    "TunnelServiceHandler": "grpctunnel.handler",
    "TunnelServiceHandlerOptions": "grpctunnel.options",
    "TunnelServiceServicer": "grpctunnel.v1.tunnel_pb2_grpc",
    "TunnelServiceStub": "grpctunnel.rpc",
    "TunnelServicerContext": "grpctunnel.serving",
    "add_TunnelServiceServicer_to_server": "grpctunnel.rpc",
}


__getattr__ = lazy_names(__name__, _LAZY, globals())


def tunnel_metadata(context: object) -> tuple[tuple[str, str | bytes], ...]:
    """The metadata the tunnel carrying this call was opened with, for a handler's
    ``context`` (empty for a call that did not come through a tunnel)."""
    getter = getattr(context, "tunnel_metadata", None)
    return tuple(getter()) if callable(getter) else ()
