"""Options for both ends of a tunnel, and how they become a protocol connection's
configuration.

Between two peers of this project (both sent the extensions header) windows and chunks
are large, which is what lets a tunnel stream near the speed of the transport; with any
other peer, such as a Go peer, they are those the Go library uses.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from grpctunnel import keepalive
from grpctunnel.defaults import DEFAULT_ESTABLISHMENT_TIMEOUT as DEFAULT_ESTABLISHMENT_TIMEOUT
from grpctunnel.metadata import MetadataPairs
from grpctunnel.protocol import (
    DEFAULT_MAX_RECEIVE_MESSAGE_SIZE,
    DEFAULT_WINDOW,
    GO_CHUNK_SIZE,
    SUPPORTED_REVISIONS,
    ConnectionConfig,
)

if TYPE_CHECKING:
    from grpctunnel.handler import ReverseTunnel, TunnelRecord
    from grpctunnel.opening import TunnelOpening

DEFAULT_MAX_RECEIVE_MESSAGE_LENGTH = DEFAULT_MAX_RECEIVE_MESSAGE_SIZE  # gRPC's default limit
EXTENDED_WINDOW = 4 * 1024 * 1024
EXTENDED_CHUNK_SIZE = 1024 * 1024  # well below the 4 MiB limit of the tunnel RPC itself
# the largest message of the tunnel RPC itself that a peer sends (a frame with a chunk of a
# message, a batch of small frames): gRPC's default limit, which Go peers keep too
TUNNEL_RPC_MESSAGE_LIMIT = DEFAULT_MAX_RECEIVE_MESSAGE_SIZE
DEFAULT_STALE_AFTER = keepalive.stale_after()  # a frozen peer may have been given up on


def rpc_message_limit(limit: int | None) -> int:
    """The gRPC message limit (send and receive) of a connection that carries tunnel RPCs
    besides calls each bounded by ``limit`` (None: no bound; then -1, gRPC's "none"):
    never below :data:`TUNNEL_RPC_MESSAGE_LIMIT`, so that a small ``limit`` fails a call
    over it (the tunnel's own limits do that), never the tunnel that carries it."""
    return -1 if limit is None else max(limit, TUNNEL_RPC_MESSAGE_LIMIT)


@dataclass
class TunnelOptions:
    """What both ends of a tunnel can tune.

    ``max_receive_message_length`` / ``max_send_message_length`` bound each tunnelled
    message (None: no limit); beyond them a call fails with RESOURCE_EXHAUSTED.
    ``disable_flow_control`` uses protocol revision zero (no windows). Window and
    chunk sizes default to the large ones between peers of this project and Go's
    otherwise. ``max_concurrent_streams`` bounds the calls a peer may have in progress
    at once on one tunnel served here; beyond it a call fails with RESOURCE_EXHAUSTED.

    ``establishment_timeout`` bounds a tunnel's opening handshake: once the tunnel RPC
    is answered, the side that opens calls waits at most that long for the peer's
    settings frame (with a negotiating peer); then the tunnel ends with
    DEADLINE_EXCEEDED ("tunnel not established within ..."). None waits without limit.

    ``stale_after`` (serving side) drops a tunnel whose process or event loop was
    frozen for longer than that many seconds (a SIGSTOP, a debugger, a blocked loop):
    by then its peer may have given up on the tunnel and told its callers so, so the
    calls found queued on it when it resumes are never started; the tunnel ends with
    UNAVAILABLE ("tunnel stalled for ...") and a dialling side redials. The default is
    :func:`grpctunnel.keepalive.stale_after` of the default keepalive settings; None
    never drops a tunnel for that.

    ``handler_executor`` runs synchronous (non-``async``) servicer methods, as a
    grpc.aio server's thread pool does; None: a shared pool of ``min(32, CPUs + 4)``
    threads.
    """

    max_receive_message_length: int | None = DEFAULT_MAX_RECEIVE_MESSAGE_LENGTH
    max_send_message_length: int | None = None
    disable_flow_control: bool = False
    initial_window_size: int | None = None
    max_chunk_size: int | None = None
    max_concurrent_streams: int | None = None
    establishment_timeout: float | None = DEFAULT_ESTABLISHMENT_TIMEOUT
    stale_after: float | None = DEFAULT_STALE_AFTER
    handler_executor: Executor | None = None

    def connection_config(self, opening: TunnelOpening) -> ConnectionConfig:
        """The configuration of the protocol connection of a tunnel so opened."""
        extended = opening.extended
        window = self.initial_window_size or (EXTENDED_WINDOW if extended else DEFAULT_WINDOW)
        chunk = self.max_chunk_size or (EXTENDED_CHUNK_SIZE if extended else GO_CHUNK_SIZE)
        return ConnectionConfig(
            negotiated=opening.negotiated,
            receive_window=window,
            max_chunk_size=chunk,
            max_receive_message_size=self.max_receive_message_length,
            supported_revisions=(0,) if self.disable_flow_control else SUPPORTED_REVISIONS,
            max_concurrent_streams=self.max_concurrent_streams,
            batching=opening.batches,
            encoded_data_frames=opening.encoded_frames,
        )


@dataclass
class TunnelServiceHandlerOptions(TunnelOptions):
    """Options of :class:`~grpctunnel.TunnelServiceHandler`, after the Go library's.

    ``no_reverse_tunnels`` refuses ``OpenReverseTunnel``. ``on_reverse_tunnel_open`` /
    ``on_reverse_tunnel_close`` are called with the :class:`ReverseTunnel` as reverse
    tunnels come and go. ``affinity_key`` maps a reverse tunnel (its metadata, its peer)
    to the key that ``key_as_channel`` selects tunnels by.

    ``accept_tunnel(kind, metadata, peer)`` (kind "forward" or "reverse") may refuse a
    tunnel as it opens by returning a status code and message; ``authorize_call(
    tunnel_metadata, method)`` may likewise refuse each call made through a forward
    tunnel. Both see the metadata the tunnel was opened with (its credentials).
    ``admit_tunnel(record)`` runs after ``accept_tunnel``, with the
    :class:`~grpctunnel.handler.TunnelRecord` the tunnel will have: it may refuse the same
    way, or keep state on the record (``record.labels``) and be told when the tunnel ends
    (``record.add_end_callback``), whether it ever became usable or not.
    ``grpctunnel.gateway.auth.require_tokens(options, authority)`` sets both to check bearer
    tokens, and ``grpctunnel.gateway.Gateway(authority=...)`` does that and more (tunnel
    names, tunnels per credential). ``on_tunnel_refused(kind, code, details)`` is told
    of every tunnel the handler refuses, whoever refused it (the hooks above, a shutdown
    under way, ``no_reverse_tunnels``): the place to count refusals. ``max_concurrent_streams``
    is the usual guard against a peer that opens streams without end.
    """

    no_reverse_tunnels: bool = False
    accept_tunnel: (
        Callable[[str, MetadataPairs, str], tuple[grpc.StatusCode, str] | None] | None
    ) = None
    authorize_call: Callable[[MetadataPairs, str], tuple[grpc.StatusCode, str] | None] | None = None
    admit_tunnel: Callable[[TunnelRecord], tuple[grpc.StatusCode, str] | None] | None = None
    on_tunnel_refused: Callable[[str, grpc.StatusCode, str], None] | None = None
    on_reverse_tunnel_open: Callable[[ReverseTunnel], Any] | None = None
    on_reverse_tunnel_close: Callable[[ReverseTunnel], Any] | None = None
    affinity_key: Callable[[ReverseTunnel], Hashable] | None = None


@dataclass
class TunnelClientOptions(TunnelOptions):
    """Options of :class:`~grpctunnel.PendingChannel` and
    :class:`~grpctunnel.ReverseTunnelServer`. ``metadata`` is sent when the tunnel RPC
    opens (the "tunnel metadata" the other side can read: a token, a name)."""

    metadata: MetadataPairs = field(default_factory=tuple)


def __getattr__(name: str) -> Any:
    # TunnelOpening lived here before opening.py; still importable from here, but
    # imported only when asked for, since opening.py imports most of the library.
    if name == "TunnelOpening":
        from grpctunnel.opening import TunnelOpening

        return TunnelOpening
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
