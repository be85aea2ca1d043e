"""The configuration of one protocol connection: what it advertises, what it accepts,
and how much it holds for a peer.

A :class:`ConnectionConfig` is settled once, when the tunnel RPC has opened (whether a
revision is negotiated, whether the peer reads batches), and never changes after.
Its limits bound what a connection holds, whatever the peer sends:

* streams: at most ``max_concurrent_streams`` (serving side; None: no limit); a
  stream refused for being one too many keeps no state;
* inbound bytes per stream: its receive window plus one message (of at most
  ``max_receive_message_size``) on revision one, ``max_unflowed_bytes`` on revision
  zero;
* unsent control frames: about ``max_unsent_control_frames``, past which the
  connection takes in no more frames until they are taken (see
  ``grpctunnel.protocol.connection``).
"""

from __future__ import annotations

from dataclasses import dataclass

from grpctunnel.protocol.windows import MAX_WINDOW
from grpctunnel.v1 import tunnel_pb2

SUPPORTED_REVISIONS: tuple[int, ...] = (tunnel_pb2.REVISION_ZERO, tunnel_pb2.REVISION_ONE)
DEFAULT_WINDOW = 65536  # what Go peers advertise, and assume when told 0
GO_CHUNK_SIZE = 16384  # the chunk size Go peers use
DEFAULT_MAX_RECEIVE_MESSAGE_SIZE = 4 * 1024 * 1024  # gRPC's default receive limit

# Control frames (window updates, cancels, the refusals of streams) that may wait unsent
# before the connection takes in no more frames. A peer that reads what it is sent
# leaves at most a few per stream waiting (a window update per quarter window of data
# it sent, a cancel or a refusal), so thousands of concurrent streams fit; past this the
# peer is not reading, and pausing for it costs it nothing. A queued frame holds about
# 1 KiB of memory (the protobuf message and its arena), so this is about 8 MiB at most.
DEFAULT_MAX_UNSENT_CONTROL_FRAMES = 8192

# revision zero has no windows: what one stream may hold unread before it fails, at least
_MIN_UNFLOWED_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """How one end of a tunnel runs its protocol connection.

    ``negotiated``: both sides exchanged the negotiate header (settings frames, a
    revision per stream). ``receive_window``: the window we advertise for each stream.
    ``max_chunk_size``: the largest chunk of message data we put in one frame.
    ``max_receive_message_size``: the largest message we accept (None: any).
    ``supported_revisions``: the protocol revisions we speak. ``max_concurrent_streams``:
    streams the peer may have open at once (serving side; None: no limit).
    ``batching``: both sides announced the batch extension, so several frames travel
    in one message of the tunnel RPC. ``max_unsent_control_frames``: see above.
    ``encoded_data_frames``: the tunnel RPC's serializer writes frames encoded by hand
    (:mod:`grpctunnel.protocol.wire`), so large chunks of message data go out as those.
    """

    negotiated: bool
    receive_window: int = DEFAULT_WINDOW
    max_chunk_size: int = GO_CHUNK_SIZE
    max_receive_message_size: int | None = DEFAULT_MAX_RECEIVE_MESSAGE_SIZE
    supported_revisions: tuple[int, ...] = SUPPORTED_REVISIONS
    max_concurrent_streams: int | None = None
    batching: bool = False
    max_unsent_control_frames: int = DEFAULT_MAX_UNSENT_CONTROL_FRAMES
    encoded_data_frames: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.receive_window <= MAX_WINDOW:
            raise ValueError("receive_window must be between 1 and 2**32-1")
        if self.max_chunk_size <= 0:
            raise ValueError("max_chunk_size must be positive")
        if self.max_unsent_control_frames <= 0:
            raise ValueError("max_unsent_control_frames must be positive")
        revisions = tuple(sorted({int(r) for r in self.supported_revisions}))
        object.__setattr__(self, "supported_revisions", revisions)

    @property
    def max_unflowed_bytes(self) -> int:
        """What one stream of revision zero (no windows) may hold unread before it fails."""
        return max(_MIN_UNFLOWED_BYTES, 2 * (self.max_receive_message_size or 0))
