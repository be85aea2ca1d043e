"""Opening a tunnel: what the opening of its RPC settled, and the one place that builds
the protocol connection and the session of either side from it.

Whichever side dialled, the tunnel RPC opens the same way: the dialling side sends its
request headers, the accepting side answers with its response headers, and each side
learns from the other's headers whether to negotiate a protocol revision and whether
the peer is of this project (base64 binary metadata, large windows, frame batches).
:class:`TunnelOpening` holds what one side learnt.
"""

from __future__ import annotations

from grpctunnel import metadata as md
from grpctunnel.metadata import MetadataPairs


class TunnelOpening:
    """What a tunnel's opening settled for one side: the metadata the other side sent
    when the tunnel RPC opened (its request headers, or its response headers), who it
    is, and what those headers agreed.

    ``TunnelOpening(metadata, peer)`` reads the agreement from the headers; the
    keyword arguments state it instead (an in-memory tunnel has no headers to read).
    """

    __slots__ = ("batches", "extended", "metadata", "negotiated", "peer")

    def __init__(
        self,
        metadata: MetadataPairs,
        peer: str,
        *,
        negotiated: bool | None = None,
        extended: bool | None = None,
        batches: bool | None = None,
    ) -> None:
        self.metadata: MetadataPairs = tuple(metadata)
        self.peer = peer
        # a protocol revision is negotiated (settings frames, windows)
        self.negotiated = md.peer_negotiates(metadata) if negotiated is None else negotiated
        # the peer is of this project: base64 binary metadata, large windows and chunks
        self.extended = md.peer_has_extensions(metadata) if extended is None else extended
        # the peer reads several frames in one message of the tunnel RPC
        self.batches = md.peer_batches(metadata) if batches is None else batches

    def __repr__(self) -> str:
        return (
            f"TunnelOpening(peer={self.peer!r}, negotiated={self.negotiated}, "
            f"extended={self.extended}, batches={self.batches})"
        )
