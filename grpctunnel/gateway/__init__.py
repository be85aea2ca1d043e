"""The gateway: a tunnel server that routes calls by service over reverse tunnels.

Built on the tunnel library (``grpctunnel``), never imported by it. Its parts:

- :mod:`~grpctunnel.gateway.announce`: what an exposer announces as a tunnel opens
  (name, services, instance, slot) and the pin header callers route by;
- :mod:`~grpctunnel.gateway.gateway`: :class:`Gateway`, admission of tunnels (tokens,
  names, takeover) and routing of calls to the tunnels that expose their service;
- :mod:`~grpctunnel.gateway.proxy`: relaying any call as raw bytes to a routed channel;
- :mod:`~grpctunnel.gateway.method_kinds`: which kind each relayed method is;
- :mod:`~grpctunnel.gateway.reflection`: reflection merged across every backend;
- :mod:`~grpctunnel.gateway.reflection_client`: asking a reflection service one question;
- :mod:`~grpctunnel.gateway.auth`: bearer tokens and their rights;
- :mod:`~grpctunnel.gateway.exposer`: publishing a backend through reverse tunnels;
- :mod:`~grpctunnel.gateway.server`: :class:`GatewayServer`, a serving gateway assembled.
"""

from typing import TYPE_CHECKING

from grpctunnel.lazy import lazy_names

if TYPE_CHECKING:
    from grpctunnel.gateway.announce import (
        INSTANCE_HEADER,
        NAME_HEADER,
        PIN_HEADER,
        SERVICES_HEADER,
        SLOT_HEADER,
        TAKEN_OVER,
        announce_metadata,
        announced_name,
        announced_services,
        tunnel_name,
        tunnel_services,
    )
    from grpctunnel.gateway.gateway import Gateway
    from grpctunnel.gateway.server import BindError, GatewayServer, GatewaySettings

__all__ = [
    "INSTANCE_HEADER",
    "NAME_HEADER",
    "PIN_HEADER",
    "SERVICES_HEADER",
    "SLOT_HEADER",
    "TAKEN_OVER",
    "BindError",
    "Gateway",
    "GatewayServer",
    "GatewaySettings",
    "announce_metadata",
    "announced_name",
    "announced_services",
    "tunnel_name",
    "tunnel_services",
]

# Where each name is defined: imported when first asked for (PEP 562), so that importing one
# module of the gateway (reflection_client, auth) does not import the whole gateway.
_LAZY = {
    **dict.fromkeys(
        (
            "INSTANCE_HEADER",
            "NAME_HEADER",
            "PIN_HEADER",
            "SERVICES_HEADER",
            "SLOT_HEADER",
            "TAKEN_OVER",
            "announce_metadata",
            "announced_name",
            "announced_services",
            "tunnel_name",
            "tunnel_services",
        ),
        "grpctunnel.gateway.announce",
    ),
    "Gateway": "grpctunnel.gateway.gateway",
    "BindError": "grpctunnel.gateway.server",
    "GatewayServer": "grpctunnel.gateway.server",
    "GatewaySettings": "grpctunnel.gateway.server",
}


__getattr__ = lazy_names(__name__, _LAZY, globals())
