"""What an exposer announces when it opens a reverse tunnel, and how the gateway reads it.

The announcement travels in the tunnel's open metadata: a name callers can pin calls to
(:data:`NAME_HEADER`), the services behind the tunnel (:data:`SERVICES_HEADER`), and which
exposer process (:data:`INSTANCE_HEADER`) and which of its tunnels (:data:`SLOT_HEADER`)
this is. A caller pins a call to a tunnel by name with the :data:`PIN_HEADER` request
header. Both the exposer and the gateway import these from here, and only from here.
"""

from __future__ import annotations

from collections.abc import Iterable

from grpctunnel import metadata as md
from grpctunnel.gateway.reflection_client import REFLECTION_V1, REFLECTION_V1ALPHA
from grpctunnel.handler import ReverseTunnel

NAME_HEADER = "grpctunnel-name"
SERVICES_HEADER = "grpctunnel-services"
PIN_HEADER = "grpctunnel-tunnel"
INSTANCE_HEADER = "grpctunnel-instance"
SLOT_HEADER = "grpctunnel-slot"
# when the exposer process started (nanoseconds since the Unix epoch): the fencing order of
# instances that share a name, newer wins
EPOCH_HEADER = "grpctunnel-epoch"
# in the status of a tunnel closed because a newer instance of its exposer took over
TAKEN_OVER = "taken over by a newer instance"

HEALTH = "grpc.health.v1.Health"
TUNNEL_SERVICE = "grpctunnel.v1.TunnelService"
ADMIN = "grpctunnel.admin.v1.Admin"  # the gateway's admin service (grpctunnel.gateway.admin)
# services a backend may have that the gateway answers for itself
GATEWAY_ANSWERS = frozenset({REFLECTION_V1, REFLECTION_V1ALPHA, HEALTH, ADMIN})


def tunnel_name(tunnel: ReverseTunnel) -> str:
    name = tunnel.metadata_value(NAME_HEADER)
    return name if isinstance(name, str) and name else f"tunnel-{tunnel.id}"


def tunnel_services(tunnel: ReverseTunnel) -> tuple[str, ...]:
    return announced_services(tunnel.metadata)


def announced_name(metadata: md.MetadataPairs) -> str:
    """The tunnel name in tunnel open metadata ("" when none is announced)."""
    value = md.first_value(metadata, NAME_HEADER)
    return value if isinstance(value, str) else ""


def announced_services(metadata: md.MetadataPairs) -> tuple[str, ...]:
    """The services announced in tunnel open metadata."""
    value = md.first_value(metadata, SERVICES_HEADER)
    if not isinstance(value, str):
        return ()
    return tuple(s for s in (part.strip() for part in value.split(",")) if s)


def announced_epoch(metadata: md.MetadataPairs) -> int | None:
    """The announced start time of the exposer instance, or None (not announced, or
    not a number)."""
    value = md.first_value(metadata, EPOCH_HEADER)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def announce_metadata(
    name: str,
    services: Iterable[str],
    *,
    instance: str | None = None,
    slot: int | None = None,
    epoch: int | None = None,
) -> md.MetadataPairs:
    """The tunnel open metadata an exposer sends: its name and services, which process
    (``instance``, started at ``epoch``) and which of its tunnels (``slot``) this is."""
    pairs: list[tuple[str, str | bytes]] = [
        (NAME_HEADER, name),
        (SERVICES_HEADER, ",".join(services)),
    ]
    if instance:
        pairs.append((INSTANCE_HEADER, instance))
        if slot is not None:
            pairs.append((SLOT_HEADER, str(slot)))
        if epoch is not None:
            pairs.append((EPOCH_HEADER, str(epoch)))
    return tuple(pairs)


__all__ = [
    "ADMIN",
    "EPOCH_HEADER",
    "GATEWAY_ANSWERS",
    "HEALTH",
    "INSTANCE_HEADER",
    "NAME_HEADER",
    "PIN_HEADER",
    "SERVICES_HEADER",
    "SLOT_HEADER",
    "TAKEN_OVER",
    "TUNNEL_SERVICE",
    "announce_metadata",
    "announced_epoch",
    "announced_name",
    "announced_services",
    "tunnel_name",
    "tunnel_services",
]
