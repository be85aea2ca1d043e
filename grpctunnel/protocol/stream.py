"""One tunnelled stream: its lifecycle as a state machine, inbound message reassembly,
the outbound queue, and its flow-control windows.

Lifecycle. Both ends of a stream go through the same states, named from the call's
point of view: the caller's requests flow until it half-closes; the serving side's
response starts with its headers and ends with its close. What one end does locally
(``SEND_*``) the other takes in from the wire (``RECV_*``), and :data:`TRANSITIONS`,
the one table of what may happen in which state, serves both::

    OPEN ------------- headers ------------> RESPONDING
      |                                          |
    half-close                               half-close
      v                                          v
    HALF_CLOSED ------ headers ------> HALF_CLOSED_RESPONDING

    any of the four --close queued--> CLOSING --close written--> CLOSED  (serving side)
    any of the four --close received, or cancel--> CLOSED

(A message without headers first implies them: the serving side queues empty headers
before its first message, and the calling side takes a first message as the end of
the headers.) A transition the table does not list is a bug of whoever asked for it:
:class:`~grpctunnel.protocol.errors.ProtocolError` for the peer, :class:`UsageError` for
the application. Listed transitions have an :class:`Outcome`: go ahead, ignore a frame
that is moot, refuse what the application asked for (the sending methods return
False), or fail the stream because the peer broke its rules (the tunnel lives on).

The state tracks what the application and the peer have done, not what has been
written yet: a calling stream's ``new_stream`` frame may still be queued
(:attr:`Stream.announced` says whether it went out), and a serving stream stays in
CLOSING until its close has been framed. Two facts are not part of the lifecycle and
stay plain fields: ``single_message_in`` (the method takes one message towards this
end, fixed when the stream opens or is accepted) and ``messages_in`` (how many
arrived, which that rule counts).

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
from typing import NamedTuple

from google.rpc import status_pb2

from grpctunnel.protocol.errors import Code, ProtocolError, UsageError
from grpctunnel.protocol.windows import ReceiveWindow, SendWindow
from grpctunnel.v1 import tunnel_pb2

# -- the lifecycle ------------------------------------------------------------------------


class StreamState(Enum):
    OPEN = "open"  # requests may flow; no response headers yet
    RESPONDING = "responding"  # requests may flow; the response has begun (its headers)
    HALF_CLOSED = "half-closed"  # the caller sent its last request; no response headers yet
    HALF_CLOSED_RESPONDING = "half-closed, responding"  # ... and the headers are sent
    CLOSING = "closing"  # serving side: the final status is queued; inbound is moot
    CLOSED = "closed"  # over: the stream leaves the connection's table


class StreamInput(Enum):
    """What can happen to a stream: ``SEND_*`` is this end acting (its application, or
    the core on its behalf), ``RECV_*`` a frame from the peer."""

    # the calling side
    SEND_REQUEST = "send a request"
    SEND_HALF_CLOSE = "half-close"
    SEND_CANCEL = "cancel"
    RECV_HEADERS = "response headers"
    RECV_RESPONSE = "response data"  # a response message, or more of one
    RECV_CLOSE = "close_stream"
    # the serving side
    SEND_HEADERS = "send response headers"
    SEND_RESPONSE = "send a response"
    SEND_CLOSE = "close"
    SEND_ERROR_CLOSE = "close with an error"  # the core failed the stream: replaces a queued close
    CLOSE_WRITTEN = "close written"
    RECV_REQUEST = "request data"  # a request message, or more of one
    RECV_HALF_CLOSE = "half_close"
    RECV_CANCEL = "cancel frame"
    # both
    RECV_WINDOW_UPDATE = "window_update"

    @property
    def from_peer(self) -> bool:
        return self.name.startswith("RECV_")


class Outcome(Enum):
    PROCEED = "proceed"  # legal: act on it
    IGNORE = "ignore"  # a frame from the peer that is moot now: drop it quietly
    REFUSE = "refuse"  # the application asked for what the stream is past: say no
    FAIL = "fail"  # the peer broke the stream's rules: the stream fails, the tunnel lives


class Step(NamedTuple):
    outcome: Outcome
    next_state: StreamState
    reason: str = ""  # for FAIL: why, with {frame} for the frame's kind


_AFTER_HALF_CLOSE = "{frame} frame after the caller half-closed"
_HEADERS_AGAIN = "response headers arrived twice or after a message"


S, I = StreamState, StreamInput  # noqa: E741 (short names keep the table readable)
GO, IGNORE, REFUSE, FAIL = Outcome.PROCEED, Outcome.IGNORE, Outcome.REFUSE, Outcome.FAIL

TRANSITIONS: dict[tuple[StreamState, StreamInput], Step] = {
    # OPEN: the call is open both ways; no response headers yet
    (S.OPEN, I.SEND_REQUEST): Step(GO, S.OPEN),
    (S.OPEN, I.SEND_HALF_CLOSE): Step(GO, S.HALF_CLOSED),
    (S.OPEN, I.SEND_CANCEL): Step(GO, S.CLOSED),
    (S.OPEN, I.RECV_HEADERS): Step(GO, S.RESPONDING),
    (S.OPEN, I.RECV_RESPONSE): Step(GO, S.RESPONDING),
    (S.OPEN, I.RECV_CLOSE): Step(GO, S.CLOSED),
    (S.OPEN, I.SEND_HEADERS): Step(GO, S.RESPONDING),
    (S.OPEN, I.SEND_CLOSE): Step(GO, S.CLOSING),
    (S.OPEN, I.SEND_ERROR_CLOSE): Step(GO, S.CLOSING),
    (S.OPEN, I.RECV_REQUEST): Step(GO, S.OPEN),
    (S.OPEN, I.RECV_HALF_CLOSE): Step(GO, S.HALF_CLOSED),
    (S.OPEN, I.RECV_CANCEL): Step(GO, S.CLOSED),
    (S.OPEN, I.RECV_WINDOW_UPDATE): Step(GO, S.OPEN),
    # RESPONDING: the response has begun (its headers went out, or came in); requests flow
    (S.RESPONDING, I.SEND_REQUEST): Step(GO, S.RESPONDING),
    (S.RESPONDING, I.SEND_HALF_CLOSE): Step(GO, S.HALF_CLOSED_RESPONDING),
    (S.RESPONDING, I.SEND_CANCEL): Step(GO, S.CLOSED),
    (S.RESPONDING, I.RECV_HEADERS): Step(FAIL, S.RESPONDING, _HEADERS_AGAIN),
    (S.RESPONDING, I.RECV_RESPONSE): Step(GO, S.RESPONDING),
    (S.RESPONDING, I.RECV_CLOSE): Step(GO, S.CLOSED),
    (S.RESPONDING, I.SEND_HEADERS): Step(REFUSE, S.RESPONDING),
    (S.RESPONDING, I.SEND_RESPONSE): Step(GO, S.RESPONDING),
    (S.RESPONDING, I.SEND_CLOSE): Step(GO, S.CLOSING),
    (S.RESPONDING, I.SEND_ERROR_CLOSE): Step(GO, S.CLOSING),
    (S.RESPONDING, I.RECV_REQUEST): Step(GO, S.RESPONDING),
    (S.RESPONDING, I.RECV_HALF_CLOSE): Step(GO, S.HALF_CLOSED_RESPONDING),
    (S.RESPONDING, I.RECV_CANCEL): Step(GO, S.CLOSED),
    (S.RESPONDING, I.RECV_WINDOW_UPDATE): Step(GO, S.RESPONDING),
    # HALF_CLOSED: the caller sent its last request; no response headers yet
    (S.HALF_CLOSED, I.SEND_REQUEST): Step(REFUSE, S.HALF_CLOSED),
    (S.HALF_CLOSED, I.SEND_HALF_CLOSE): Step(REFUSE, S.HALF_CLOSED),
    (S.HALF_CLOSED, I.SEND_CANCEL): Step(GO, S.CLOSED),
    (S.HALF_CLOSED, I.RECV_HEADERS): Step(GO, S.HALF_CLOSED_RESPONDING),
    (S.HALF_CLOSED, I.RECV_RESPONSE): Step(GO, S.HALF_CLOSED_RESPONDING),
    (S.HALF_CLOSED, I.RECV_CLOSE): Step(GO, S.CLOSED),
    (S.HALF_CLOSED, I.SEND_HEADERS): Step(GO, S.HALF_CLOSED_RESPONDING),
    (S.HALF_CLOSED, I.SEND_CLOSE): Step(GO, S.CLOSING),
    (S.HALF_CLOSED, I.SEND_ERROR_CLOSE): Step(GO, S.CLOSING),
    (S.HALF_CLOSED, I.RECV_REQUEST): Step(FAIL, S.HALF_CLOSED, _AFTER_HALF_CLOSE),
    (S.HALF_CLOSED, I.RECV_HALF_CLOSE): Step(FAIL, S.HALF_CLOSED, _AFTER_HALF_CLOSE),
    (S.HALF_CLOSED, I.RECV_CANCEL): Step(GO, S.CLOSED),
    (S.HALF_CLOSED, I.RECV_WINDOW_UPDATE): Step(GO, S.HALF_CLOSED),
    # HALF_CLOSED_RESPONDING: the caller is done; the response has begun
    (S.HALF_CLOSED_RESPONDING, I.SEND_REQUEST): Step(REFUSE, S.HALF_CLOSED_RESPONDING),
    (S.HALF_CLOSED_RESPONDING, I.SEND_HALF_CLOSE): Step(REFUSE, S.HALF_CLOSED_RESPONDING),
    (S.HALF_CLOSED_RESPONDING, I.SEND_CANCEL): Step(GO, S.CLOSED),
    (S.HALF_CLOSED_RESPONDING, I.RECV_HEADERS): Step(
        FAIL, S.HALF_CLOSED_RESPONDING, _HEADERS_AGAIN
    ),
    (S.HALF_CLOSED_RESPONDING, I.RECV_RESPONSE): Step(GO, S.HALF_CLOSED_RESPONDING),
    (S.HALF_CLOSED_RESPONDING, I.RECV_CLOSE): Step(GO, S.CLOSED),
    (S.HALF_CLOSED_RESPONDING, I.SEND_HEADERS): Step(REFUSE, S.HALF_CLOSED_RESPONDING),
    (S.HALF_CLOSED_RESPONDING, I.SEND_RESPONSE): Step(GO, S.HALF_CLOSED_RESPONDING),
    (S.HALF_CLOSED_RESPONDING, I.SEND_CLOSE): Step(GO, S.CLOSING),
    (S.HALF_CLOSED_RESPONDING, I.SEND_ERROR_CLOSE): Step(GO, S.CLOSING),
    (S.HALF_CLOSED_RESPONDING, I.RECV_REQUEST): Step(
        FAIL, S.HALF_CLOSED_RESPONDING, _AFTER_HALF_CLOSE
    ),
    (S.HALF_CLOSED_RESPONDING, I.RECV_HALF_CLOSE): Step(
        FAIL, S.HALF_CLOSED_RESPONDING, _AFTER_HALF_CLOSE
    ),
    (S.HALF_CLOSED_RESPONDING, I.RECV_CANCEL): Step(GO, S.CLOSED),
    (S.HALF_CLOSED_RESPONDING, I.RECV_WINDOW_UPDATE): Step(GO, S.HALF_CLOSED_RESPONDING),
    # CLOSING: serving side: the close is queued; what the caller sends is moot, but credit
    # still counts (the close may wait behind messages) and a cancel ends it at once
    (S.CLOSING, I.SEND_HEADERS): Step(REFUSE, S.CLOSING),
    (S.CLOSING, I.SEND_RESPONSE): Step(REFUSE, S.CLOSING),
    (S.CLOSING, I.SEND_CLOSE): Step(REFUSE, S.CLOSING),
    (S.CLOSING, I.SEND_ERROR_CLOSE): Step(GO, S.CLOSING),
    (S.CLOSING, I.CLOSE_WRITTEN): Step(GO, S.CLOSED),
    (S.CLOSING, I.RECV_REQUEST): Step(IGNORE, S.CLOSING),
    (S.CLOSING, I.RECV_HALF_CLOSE): Step(IGNORE, S.CLOSING),
    (S.CLOSING, I.RECV_CANCEL): Step(IGNORE, S.CLOSED),
    (S.CLOSING, I.RECV_WINDOW_UPDATE): Step(GO, S.CLOSING),
}
"""Every legal (state, input) pair and what follows; nothing else may happen. CLOSED
has no row: a closed stream has left the connection's table, and what still arrives
for it is dropped before it gets here."""

del S, I, GO, IGNORE, REFUSE, FAIL


# -- what a stream holds -------------------------------------------------------------------


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
    headers_first: bool = False  # CLOSE: headers were never sent; empty ones precede it


@dataclass(slots=True)
class PartialMessage:
    """A message whose chunks are still arriving."""

    size: int
    chunks: list[bytes | memoryview] = field(default_factory=list)  # views: wire.DataFrameIn
    received: int = 0
    released: int = 0  # bytes already granted back as flow credit


class Stream:
    """Everything the core knows about one open stream."""

    __slots__ = (
        "buffered",
        "messages_in",
        "outq",
        "partial",
        "queued_bytes",
        "recv_window",
        "revision",
        "send_window",
        "single_message_in",
        "state",
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
        *,
        single_message_in: bool = False,
    ) -> None:
        self.stream_id = stream_id
        self.revision = revision
        self.state = StreamState.OPEN
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
        self.single_message_in = single_message_in  # a second inbound message is an error

    # -- the lifecycle ----------------------------------------------------------------

    def advance(self, inp: StreamInput, peer_error_code: Code) -> Step:
        """Applies ``inp`` by :data:`TRANSITIONS` and says what follows. An input the
        table does not list raises: :class:`ProtocolError` (with ``peer_error_code``)
        if it came from the peer, :class:`UsageError` otherwise."""
        step = TRANSITIONS.get((self.state, inp))
        if step is None:
            message = (
                f"stream {self.stream_id}: {inp.value} is not possible when {self.state.value}"
            )
            if inp.from_peer:
                raise ProtocolError(message, peer_error_code)
            raise UsageError(message)
        self.state = step.next_state
        return step

    @property
    def announced(self) -> bool:
        """Whether the peer knows of the stream: its ``new_stream`` frame, always the
        first thing a calling stream queues, has been framed (always, serving side)."""
        return not self.outq or self.outq[0].kind is not ItemKind.NEW_STREAM

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
