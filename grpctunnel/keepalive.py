"""Keepalive settings for tunnel connections, in one place.

A tunnel is one long-lived RPC, so a half-open connection (a frozen peer, a pulled
cable) would otherwise go unnoticed until the operating system gives up, which can take
hours. Both ends ping: the dialling side through its channel options, the tunnel server
through its server options, and each end gives up on the connection when a ping goes
unanswered for ``timeout`` seconds, which fails every call on the tunnel with
UNAVAILABLE. The server accepts pings as often as its own clients send them, so clients
are never told "too many pings".

grpc core waits for the answer to any ping for ``grpc.http2.ping_timeout_ms`` (a minute
by default), and a keepalive ping that finds another ping in flight waits on that one, so
``grpc.keepalive_timeout_ms`` alone does not bound how long a frozen peer goes unnoticed.
Both options are set here to the same timeout.

A peer that gives up on a frozen process (SIGSTOP, a frozen VM) tells its callers their
calls failed; :func:`stale_after` is how long the serving end of a tunnel may find
itself frozen before it must assume so (see ``TunnelOptions.stale_after``).
"""

from __future__ import annotations

from typing import Any

DEFAULT_INTERVAL = 10.0  # seconds between pings on an idle connection
DEFAULT_TIMEOUT = 10.0  # seconds to wait for a ping's answer: dead within ~20 s


def stale_after(timeout: float = DEFAULT_TIMEOUT) -> float:
    """How long a process may have been frozen before a peer that waits ``timeout``
    seconds for the answer to its keepalive pings can have given up on it.

    A peer pinging every ``interval`` seconds gives up between ``timeout`` and
    ``interval + timeout`` seconds into the freeze (its next ping may fall due the
    moment the freeze begins), so the soonest, ``timeout``, is the safe threshold.
    """
    return timeout


def channel_options(
    interval: float = DEFAULT_INTERVAL, timeout: float = DEFAULT_TIMEOUT
) -> list[tuple[str, Any]]:
    """grpc channel options for the dialling side of tunnels (PendingChannel,
    ReverseTunnelServer, expose)."""
    return [
        ("grpc.keepalive_time_ms", int(interval * 1000)),
        ("grpc.keepalive_timeout_ms", int(timeout * 1000)),
        ("grpc.http2.ping_timeout_ms", int(timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_options(
    interval: float = DEFAULT_INTERVAL, timeout: float = DEFAULT_TIMEOUT
) -> list[tuple[str, Any]]:
    """grpc server options for a tunnel server: it pings its clients too, and lets
    them ping as often as :func:`channel_options` makes them."""
    min_client_interval_ms = max(1000, int(interval * 1000 / 2))
    return [
        ("grpc.keepalive_time_ms", int(interval * 1000)),
        ("grpc.keepalive_timeout_ms", int(timeout * 1000)),
        ("grpc.http2.ping_timeout_ms", int(timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", min_client_interval_ms),
        ("grpc.http2.min_ping_interval_without_data_ms", min_client_interval_ms),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.http2.max_pings_without_data", 0),
    ]


__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_TIMEOUT",
    "channel_options",
    "server_options",
    "stale_after",
]
