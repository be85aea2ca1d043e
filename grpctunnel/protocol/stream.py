"""The state of one tunnelled stream: inbound message reassembly, the outbound queue,
and its flow-control windows.

Inbound, a message arrives as one ``*_message`` frame (total size and first chunk) and
any number of ``more_*_data`` frames; chunks are kept in a list and joined once, so a
message costs time linear in its size. Flow credit is released by these rules, which
bound what a stream holds to its window plus one message:

* bytes of a message still being assembled are released at once while the application
  has no whole message waiting unread (it is keeping up), and held otherwise;
* the rest of a message's bytes are released when the application consumes it.

Outbound, everything the stream will send (its opening, headers, messages, half-close
or close) waits in one FIFO so that the frames keep their order; messages are cut into
chunks no larger than the send window and the chunk limit allow.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from google.rpc import status_pb2

from grpctunnel.protocol.windows import ReceiveWindow, SendWindow
from grpctunnel.v1 import tunnel_pb2


class ItemKind(Enum):
    NEW_STREAM = 1
    HEADERS = 2
    MESSAGE = 3
    HALF_CLOSE = 4
    CLOSE = 5


@dataclass(slots=True)
class OutItem:
    """One thing queued for sending on a stream."""

    kind: ItemKind
    data: bytes = b""
    offset: int = 0  # MESSAGE: how many bytes are already framed
    new_stream: tunnel_pb2.NewStream | None = None
    metadata: tunnel_pb2.Metadata | None = None
    status: status_pb2.Status | None = None


@dataclass(slots=True)
class PartialMessage:
    """A message whose chunks are still arriving."""

    size: int
    chunks: list[bytes] = field(default_factory=list)
    received: int = 0
    released: int = 0  # bytes already granted back as flow credit


class StreamState:
    """Everything the core knows about one open stream."""

    __slots__ = (
        "buffered",
        "closing",
        "headers_received",
        "headers_sent",
        "local_half_closed",
        "messages_in",
        "opened_on_wire",
        "outq",
        "partial",
        "queued_bytes",
        "recv_window",
        "remote_half_closed",
        "revision",
        "send_window",
        "single_message_in",
        "stream_id",
        "unread",
        "unread_unreleased",
    )

    def __init__(
        self,
        stream_id: int,
        revision: int,
        send_window: SendWindow,
        recv_window: ReceiveWindow | None,
    ) -> None:
        self.stream_id = stream_id
        self.revision = revision
        self.send_window = send_window
        self.recv_window = recv_window
        self.outq: deque[OutItem] = deque()
        self.queued_bytes = 0  # message bytes queued but not yet framed
        self.partial: PartialMessage | None = None
        self.unread = 0  # whole messages delivered but not yet consumed
        self.unread_unreleased: deque[tuple[int, int]] = (
            deque()
        )  # per unread message: (size, bytes held)
        self.buffered = 0  # bytes received and not yet consumed by the application
        self.messages_in = 0
        self.single_message_in = False  # a second inbound message is an error
        self.headers_sent = False
        self.headers_received = False
        self.local_half_closed = False
        self.remote_half_closed = False
        self.closing = False  # serving side: close queued, inbound frames are ignored
        self.opened_on_wire = False  # calling side: new_stream has been framed

    # -- outbound -------------------------------------------------------------------

    def can_emit(self) -> bool:
        """Whether the head of the queue can be framed now."""
        if not self.outq:
            return False
        head = self.outq[0]
        if head.kind is not ItemKind.MESSAGE:
            return True
        if head.offset == 0 and not head.data:
            return True  # a zero-length message needs no credit
        return not self.send_window.blocked

    # -- inbound --------------------------------------------------------------------

    def release_partial(self) -> int:
        """Bytes of the partial message that may be granted back now (none while
        whole messages wait unread)."""
        p = self.partial
        if p is None or self.unread:
            return 0
        n = p.received - p.released
        p.released = p.received
        return n
