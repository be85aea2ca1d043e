"""Opening a tunnel: what the opening of its RPC settled, and the one place that builds
the protocol connection and the session of either side from it.

Whichever side dialled, the tunnel RPC opens the same way: the dialling side sends its
request headers, the accepting side answers with its response headers, and each side
learns from the other's headers whether to negotiate a protocol revision and whether
the peer is of this project (base64 binary metadata, large windows, frame batches).
:class:`TunnelOpening` holds what one side learnt. From it, the stream of the tunnel RPC
and the options, :func:`calling_session` and :func:`serving_session` build the session of
the side that opens calls and of the side that serves them: the forward and reverse
tunnels of the handler and of the client, and the in-memory pair, all start here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from grpctunnel import metadata as md
from grpctunnel.calls import CallingSession, CallingStream
from grpctunnel.metadata import MetadataPairs
from grpctunnel.protocol import CallingConnection, ServingConnection
from grpctunnel.serving import CallAuthorizer, ServiceRegistry, ServingSession, ServingStream

if TYPE_CHECKING:
    from grpctunnel.options import TunnelOptions

Conn = TypeVar("Conn", CallingConnection, ServingConnection)


class TunnelOpening:
    """What a tunnel's opening settled for one side: the metadata the other side sent
    when the tunnel RPC opened (its request headers, or its response headers), who it
    is, and what those headers agreed.

    ``TunnelOpening(metadata, peer)`` reads the agreement from the headers; the
    keyword arguments state it instead (an in-memory tunnel has no headers to read).
    ``encoded_frames`` says whether this side's end of the tunnel RPC takes frames in
    their wire form (see :mod:`grpctunnel.rpc`).
    """

    __slots__ = ("batches", "encoded_frames", "extended", "metadata", "negotiated", "peer")

    def __init__(
        self,
        metadata: MetadataPairs,
        peer: str,
        *,
        negotiated: bool | None = None,
        extended: bool | None = None,
        batches: bool | None = None,
        encoded_frames: bool = False,
    ) -> None:
        self.metadata: MetadataPairs = tuple(metadata)
        self.peer = peer
        # a protocol revision is negotiated (settings frames, windows)
        self.negotiated = md.peer_negotiates(metadata) if negotiated is None else negotiated
        # the peer is of this project: base64 binary metadata, large windows and chunks
        self.extended = md.peer_has_extensions(metadata) if extended is None else extended
        # the peer reads several frames in one message of the tunnel RPC
        self.batches = md.peer_batches(metadata) if batches is None else batches
        # this side's tunnel RPC serializes frames in their wire form (grpctunnel.rpc):
        # not the peer's doing, but how this side opened or registered the RPC
        self.encoded_frames = encoded_frames

    def __repr__(self) -> str:
        return (
            f"TunnelOpening(peer={self.peer!r}, negotiated={self.negotiated}, "
            f"extended={self.extended}, batches={self.batches}, "
            f"encoded_frames={self.encoded_frames})"
        )


def _connection(side: type[Conn], options: TunnelOptions, opening: TunnelOpening) -> Conn:
    """The protocol connection of one side of a tunnel so opened: the one place a
    connection is configured from the options and the opening."""
    return side(options.connection_config(opening))


def calling_session(
    stream: CallingStream, opening: TunnelOpening, options: TunnelOptions
) -> CallingSession:
    """The session of the side that opens calls through the tunnel (a forward
    tunnel's dialler, a reverse tunnel's accepting server), over ``stream``. Run it
    with ``run()``; with a negotiating peer, ``wait_ready()`` waits for its settings
    before the first call."""
    return CallingSession(
        stream,
        _connection(CallingConnection, options, opening),
        opening,
        max_send_message_length=options.max_send_message_length,
    )


def serving_session(
    stream: ServingStream,
    opening: TunnelOpening,
    options: TunnelOptions,
    registry: ServiceRegistry,
    *,
    authorize_call: CallAuthorizer | None = None,
) -> ServingSession:
    """The session of the side that serves the calls that come through the tunnel
    (a forward tunnel's accepting server, a reverse tunnel's dialler) with the
    services of ``registry``, each call first allowed by ``authorize_call`` (when
    given). Its first frame (the settings, with a negotiating peer) is queued: it goes
    out as soon as the session runs."""
    conn = _connection(ServingConnection, options, opening)
    conn.start()
    session = ServingSession(
        stream,
        conn,
        opening,
        registry=registry,
        max_send_message_length=options.max_send_message_length,
        authorize_call=authorize_call,
        stale_after=options.stale_after,
        handler_executor=options.handler_executor,
    )
    session.flush()
    return session


__all__ = ["TunnelOpening", "calling_session", "serving_session"]
