"""The two ends of a tunnel, as pure state machines: frames in, events and frames out.

:class:`CallingConnection` is the tunnel client: it opens streams and sends
``ClientToServer`` frames (the network client of a forward tunnel, the network server
of a reverse one). :class:`ServingConnection` is the tunnel server: it accepts streams
and sends ``ServerToClient`` frames. Both are built from a
:class:`~grpctunnel.protocol.config.ConnectionConfig`.

Neither does any I/O. For each message read from the tunnel RPC, take the plain frames
``unbatch()`` returns (the message itself, or the frames of a batch) and feed them one
at a time to ``receive()``, which returns events and raises :class:`ProtocolError` when
the peer broke the protocol badly enough to end the tunnel. Call the sending methods as
the application acts. Then call ``take_frames()`` and write what it returns, in order
(already packed into batches when batching was negotiated). Frames of different
streams are interleaved round-robin, and a stream whose send window is spent waits for
credit without holding up the others.

Backpressure. Some frames answer the peer's and no window limits them: the refusals
of streams it may not open, window updates for the data it sent, cancels. A peer that
keeps sending and never reads would make them pile up without end, so they wait in
one control queue, and once ``config.max_unsent_control_frames`` of them wait unsent,
:attr:`~_Connection.output_backlogged` turns true: take in no more frames (stop
reading the tunnel RPC) until they have been taken and written; ``receive()`` refuses
meanwhile (:class:`UsageError`). A peer that does not read is then no longer read
either: its writes stall in the transport's flow control, and what we hold for it
stays bounded. Nothing of this shows on the wire, so a peer that reads what it is sent,
a Go peer or ours, never notices it; nor does ending the tunnel take a status of its
own. (Two peers of this project that both stopped reading at once would wait for each
other; each would need thousands of control frames of its own unsent, which a peer
that reads never leaves.) A refused stream keeps no state: its refusal goes straight
to the control queue, and the rule that new ids must increase holds by the highest id
seen.

What a connection holds is thus bounded by its configuration: at most
``max_concurrent_streams`` streams, each with its receive window plus one message of
inbound data (revision zero: ``max_unflowed_bytes``) and what the application queued
on it, and ``max_unsent_control_frames`` control frames plus the few that answer one
more frame.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from typing import Generic, TypeVar

from google.protobuf import empty_pb2
from google.rpc import status_pb2

from grpctunnel.protocol import batch, wire
from grpctunnel.protocol import events as ev
from grpctunnel.protocol.batch import Encoded, Frame  # the frames this end sends
from grpctunnel.protocol.config import DEFAULT_WINDOW, ConnectionConfig
from grpctunnel.protocol.errors import Code, ProtocolError, UsageError
from grpctunnel.protocol.stream import (
    ItemKind,
    Outcome,
    OutItem,
    PartialMessage,
    Step,
    Stream,
    StreamInput,
    StreamState,
)
from grpctunnel.protocol.windows import ReceiveWindow, SendWindow
from grpctunnel.v1 import tunnel_pb2

REVISION_ZERO = tunnel_pb2.REVISION_ZERO
REVISION_ONE = tunnel_pb2.REVISION_ONE
TUNNEL_STREAM_ID = -1

_EMPTY = empty_pb2.Empty()
_METHOD_RE = re.compile(r"^/[^/\s]+/[^/\s]+$")
_NO_HEADERS_YET = (StreamState.OPEN, StreamState.HALF_CLOSED)
_SHOWN_METHOD_CHARS = 200  # of a malformed method name, in the status that refuses it

PeerFrame = TypeVar("PeerFrame", tunnel_pb2.ClientToServer, tunnel_pb2.ServerToClient)
"""The frames this end receives."""


class _Connection(Generic[Frame, PeerFrame]):
    """What both ends share: the stream table, framing, windows and the send queue."""

    # how a stream-level protocol error is reported by this end
    _stream_error_code: Code

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        self._streams: dict[int, Stream] = {}
        self._control: deque[Frame] = deque()  # frames not tied to a stream's order
        self._ready: dict[int, None] = {}  # ordered set: streams with a frame to emit

    # -- queries ------------------------------------------------------------------

    @property
    def receive_window(self) -> int:
        """The window this end advertises for each stream of revision one."""
        return self.config.receive_window

    @property
    def max_chunk_size(self) -> int:
        """The largest chunk of message data this end puts in one frame."""
        return self.config.max_chunk_size

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def has_stream(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def queued_bytes(self, stream_id: int) -> int:
        """Message bytes of the stream not yet framed (0 for a finished stream)."""
        st = self._streams.get(stream_id)
        return st.queued_bytes if st is not None else 0

    def fits_window(self, stream_id: int) -> bool:
        """Whether the stream's queued message bytes all fit in its send window now:
        the next ``take_frames`` frames them without waiting for the peer's credit."""
        st = self._streams.get(stream_id)
        if st is None:
            return True
        queued = st.queued_bytes
        return st.send_window.allowance(queued) >= queued

    def wants_to_send(self) -> bool:
        return bool(self._control) or bool(self._ready)

    @property
    def unsent_control_frames(self) -> int:
        """Control frames (refusals, window updates, cancels...) not yet taken."""
        return len(self._control)

    @property
    def output_backlogged(self) -> bool:
        """So many control frames wait unsent that no frame may be taken in until they
        have been taken (see the module's docstring)."""
        return len(self._control) >= self.config.max_unsent_control_frames

    # -- receiving ----------------------------------------------------------------

    def unbatch(self, frame: PeerFrame) -> Sequence[PeerFrame]:
        """The plain frames one message read from the tunnel RPC carries, to feed to
        ``receive()`` one at a time: the message itself, or the frames of a batch.
        Raises :class:`ProtocolError` for a batch the peer may not send."""
        return batch.unpack(
            frame, batching=self.config.batching, error_code=self._stream_error_code
        )

    def _check_not_backlogged(self) -> None:
        if len(self._control) >= self.config.max_unsent_control_frames:
            raise UsageError(
                f"{len(self._control)} control frames wait unsent: take them before "
                "taking in another frame"
            )

    # -- sending ------------------------------------------------------------------

    def message_consumed(self, stream_id: int) -> None:
        """The application took the oldest unread message of the stream: give its
        bytes back to the peer as flow credit."""
        st = self._streams.get(stream_id)
        if st is None or not st.unread:
            return
        st.unread -= 1
        size, held = st.unread_unreleased.popleft()
        st.buffered -= size
        self._release(st, held + st.release_partial())

    def take_frames(self, max_bytes: int = 1 << 20) -> list[Frame | Encoded]:
        """Frames to write now, in order: control frames first, then one frame per
        ready stream in turn, until about ``max_bytes`` of message data is taken.
        With batching, runs of small frames come packed into batch frames."""
        out: list[Frame | Encoded] = list(self._control)
        self._control.clear()
        budget = max_bytes
        ready = self._ready
        while ready and budget > 0:
            for stream_id in list(ready):
                st = self._streams.get(stream_id)
                if st is None:
                    del ready[stream_id]
                    continue
                budget -= self._emit_one(st, out)
                if stream_id in self._streams and st.can_emit():
                    continue
                ready.pop(stream_id, None)
                if budget <= 0:
                    break
        if self.config.batching:
            return batch.pack(out)
        return out

    # -- internals ----------------------------------------------------------------

    def _advance(self, st: Stream, inp: StreamInput) -> Step:
        """Moves the stream along its lifecycle; a stream that is over leaves the table."""
        step = st.advance(inp, self._stream_error_code)
        if step.next_state is StreamState.CLOSED:
            del self._streams[st.stream_id]
            self._ready.pop(st.stream_id, None)
        return step

    def _refused_frame(self, st: Stream, step: Step, kind: str) -> list[ev.Event]:
        """What a frame from the peer that its stream's state does not let through
        comes to: nothing (IGNORE), or the failure of the stream (FAIL)."""
        if step.outcome is Outcome.FAIL:
            return [self._fail_stream(st, step.reason.format(frame=kind))]
        return []

    def _queue_message(self, st: Stream, data: bytes | memoryview) -> None:
        if type(data) is not bytes:  # a message received as a view, sent on: bytes to frame
            data = bytes(data)
        st.outq.append(OutItem(ItemKind.MESSAGE, data=data))
        st.queued_bytes += len(data)
        self._schedule(st)

    def _schedule(self, st: Stream) -> None:
        if st.stream_id not in self._ready and st.can_emit():
            self._ready[st.stream_id] = None

    def _new_windows(
        self, revision: int, peer_window: int
    ) -> tuple[SendWindow, ReceiveWindow | None]:
        if revision == REVISION_ZERO:
            return SendWindow(None), None
        return SendWindow(peer_window or DEFAULT_WINDOW), ReceiveWindow(self.config.receive_window)

    def _release(self, st: Stream, n: int) -> None:
        if n <= 0 or st.recv_window is None:
            return
        credit = st.recv_window.release(n)
        if credit:
            self._control.append(self._window_update_frame(st.stream_id, credit))

    def _emit_one(self, st: Stream, out: list[Frame | Encoded]) -> int:
        """Frames the head of the stream's queue (or one chunk of it) into ``out``;
        returns the number of message bytes framed."""
        item = st.outq[0]
        if item.kind is ItemKind.MESSAGE:
            remaining = len(item.data) - item.offset
            n = st.send_window.allowance(min(remaining, self.config.max_chunk_size))
            if n <= 0 and remaining > 0:
                return 0
            chunk: bytes | memoryview
            if n >= wire.ENCODED_CHUNK_MIN and self.config.encoded_data_frames:
                # in its wire form: one copy of the chunk, cut from a view of the message
                chunk = memoryview(item.data)[item.offset : item.offset + n]
                first, more = wire.message_frame, wire.more_data_frame
            else:
                whole = item.offset == 0 and n == remaining
                chunk = item.data if whole else item.data[item.offset : item.offset + n]
                # (these two take bytes, which is what chunk is on this branch)
                first, more = self._message_frame, self._more_data_frame  # type: ignore[assignment]
            if item.offset == 0:
                out.append(first(st.stream_id, len(item.data), chunk))
            else:
                out.append(more(st.stream_id, chunk))
            item.offset += n
            st.send_window.spend(n)
            st.queued_bytes -= n
            if item.offset >= len(item.data):
                st.outq.popleft()
            return n
        st.outq.popleft()
        self._emit_control_item(st, item, out)
        return 0

    def _emit_control_item(self, st: Stream, item: OutItem, out: list[Frame | Encoded]) -> None:
        raise NotImplementedError

    def _message_frame(self, stream_id: int, size: int, chunk: bytes) -> Frame:
        raise NotImplementedError

    def _more_data_frame(self, stream_id: int, chunk: bytes) -> Frame:
        raise NotImplementedError

    def _window_update_frame(self, stream_id: int, credit: int) -> Frame:
        raise NotImplementedError

    def _fail_stream(self, st: Stream, message: str, code: Code | None = None) -> ev.Event:
        raise NotImplementedError

    def _on_window_update(self, st: Stream, credit: int) -> list[ev.Event]:
        if not st.send_window.grant(credit):
            return [self._fail_stream(st, "window update overflows the send window")]
        self._schedule(st)
        return []

    def _on_message_start(self, st: Stream, data: tunnel_pb2.MessageData) -> list[ev.Event]:
        if st.partial is not None:
            return [
                self._fail_stream(st, "a new message began before the previous one was complete")
            ]
        if st.single_message_in and st.messages_in >= 1:
            return [self._fail_stream(st, "a second message on a method that does not stream it")]
        size = data.size
        limit = self.config.max_receive_message_size
        if limit is not None and size > limit:
            return [
                self._fail_stream(
                    st,
                    f"received message larger than max ({size} vs. {limit})",
                    Code.RESOURCE_EXHAUSTED,
                )
            ]
        st.messages_in += 1
        st.partial = PartialMessage(size)
        return self._on_chunk(st, data.data)

    def _on_more_data(self, st: Stream, chunk: bytes | memoryview) -> list[ev.Event]:
        if st.partial is None:
            return [self._fail_stream(st, "message data arrived with no message in progress")]
        return self._on_chunk(st, chunk)

    def _on_chunk(self, st: Stream, chunk: bytes | memoryview) -> list[ev.Event]:
        p = st.partial
        assert p is not None
        n = len(chunk)
        if st.recv_window is not None and not st.recv_window.accept(n):
            return [
                self._fail_stream(
                    st,
                    f"peer exceeded the flow-control window ({n} bytes sent with "
                    f"{st.recv_window.remaining} allowed)",
                    Code.RESOURCE_EXHAUSTED,
                )
            ]
        if p.received + n > p.size:
            return [
                self._fail_stream(st, f"message data exceeds its declared size of {p.size} bytes")
            ]
        if n:
            p.chunks.append(chunk)
            p.received += n
            st.buffered += n
            limit = self.config.max_unflowed_bytes
            if st.recv_window is None and st.buffered > limit:
                return [
                    self._fail_stream(
                        st,
                        f"peer sent {st.buffered} bytes on a stream without flow control "
                        f"faster than they were read (limit {limit})",
                        Code.RESOURCE_EXHAUSTED,
                    )
                ]
        if p.received < p.size:
            self._release(st, st.release_partial())
            return []
        st.partial = None
        chunks = p.chunks
        # a message that came whole in one frame read by hand stays a view of that frame
        # (wire.DataFrameIn): wire.message_input gives its reader bytes when it needs them
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        st.unread += 1
        st.unread_unreleased.append((p.size, p.size - p.released))
        return [ev.MessageReceived(st.stream_id, data)]


class CallingConnection(_Connection[tunnel_pb2.ClientToServer, tunnel_pb2.ServerToClient]):
    """The end that opens streams: sends ``ClientToServer``, receives ``ServerToClient``.

    With ``config.negotiated`` (both sides exchanged the negotiate header) the peer's
    settings frame must come first, and :attr:`ready` stays False until it has.
    """

    _stream_error_code = Code.INTERNAL

    def __init__(self, config: ConnectionConfig) -> None:
        super().__init__(config)
        self.ready = not config.negotiated
        self.revision: int = int(REVISION_ZERO)
        self.peer_window = DEFAULT_WINDOW
        self._last_stream_id = 0

    # -- the application's side -----------------------------------------------------

    def open_stream(
        self,
        method: str,
        headers: tunnel_pb2.Metadata | None = None,
        *,
        response_streaming: bool = True,
    ) -> int:
        """Allocates a stream id and queues its ``new_stream`` frame."""
        if not self.ready:
            raise UsageError("the tunnel's settings have not arrived yet")
        if not _METHOD_RE.match(method):
            raise UsageError(f"method name {method!r} is not of the form /package.Service/Method")
        self._last_stream_id += 1
        stream_id = self._last_stream_id
        send_window, recv_window = self._new_windows(self.revision, self.peer_window)
        st = Stream(
            stream_id,
            self.revision,
            send_window,
            recv_window,
            single_message_in=not response_streaming,
        )
        ns = tunnel_pb2.NewStream(
            method_name=method,
            initial_window_size=self.config.receive_window if recv_window is not None else 0,
            protocol_revision=self.revision,  # type: ignore[arg-type]
        )
        if headers is not None:
            ns.request_headers.CopyFrom(headers)
        st.outq.append(OutItem(ItemKind.NEW_STREAM, new_stream=ns))
        self._streams[stream_id] = st
        self._schedule(st)
        return stream_id

    def send_message(self, stream_id: int, data: bytes | memoryview) -> bool:
        """Queues one whole request. False if the stream is half-closed or finished."""
        st = self._streams.get(stream_id)
        if st is None or self._advance(st, StreamInput.SEND_REQUEST).outcome is Outcome.REFUSE:
            return False
        self._queue_message(st, data)
        return True

    def half_close(self, stream_id: int) -> None:
        """Queues the end of the requests, after any queued message."""
        st = self._streams.get(stream_id)
        if st is None or self._advance(st, StreamInput.SEND_HALF_CLOSE).outcome is Outcome.REFUSE:
            return
        st.outq.append(OutItem(ItemKind.HALF_CLOSE))
        self._schedule(st)

    def cancel(self, stream_id: int) -> None:
        """Abandons the stream: drops what is queued and tells the peer, if the peer
        knows of the stream yet. Later frames for it are dropped."""
        st = self._streams.get(stream_id)
        if st is None:
            return
        announced = st.announced
        self._advance(st, StreamInput.SEND_CANCEL)
        if announced:
            self._control.append(tunnel_pb2.ClientToServer(stream_id=stream_id, cancel=_EMPTY))

    # -- frames from the peer -------------------------------------------------------

    def receive(self, frame: tunnel_pb2.ServerToClient) -> list[ev.Event]:
        """Takes in one plain frame (see ``unbatch()``); returns what it brought about.
        Not while :attr:`output_backlogged`."""
        self._check_not_backlogged()
        kind = frame.WhichOneof("frame")
        stream_id = frame.stream_id
        if kind == "settings":
            return self._on_settings(stream_id, frame.settings)
        if not self.ready:
            raise ProtocolError(
                f"expected the tunnel's settings frame first, got {kind or 'an empty frame'}"
                f" for stream {stream_id}"
            )
        if kind is None:
            raise ProtocolError(f"frame for stream {stream_id} has no known kind")
        st = self._streams.get(stream_id)
        if st is None:
            if stream_id <= 0 or stream_id > self._last_stream_id:
                raise ProtocolError(f"{kind} frame for stream {stream_id}, which was never opened")
            return []  # the stream has finished: late frames are dropped
        if not st.announced:
            raise ProtocolError(f"{kind} frame for stream {stream_id}, which was never opened")
        if kind == "response_message":
            self._advance(st, StreamInput.RECV_RESPONSE)
            return self._on_message_start(st, frame.response_message)
        if kind == "more_response_data":
            self._advance(st, StreamInput.RECV_RESPONSE)
            return self._on_more_data(st, frame.more_response_data)
        if kind == "response_headers":
            step = self._advance(st, StreamInput.RECV_HEADERS)
            if step.outcome is not Outcome.PROCEED:
                return self._refused_frame(st, step, kind)
            return [ev.HeadersReceived(stream_id, frame.response_headers)]
        if kind == "close_stream":
            return self._on_close(st, frame.close_stream)
        if kind == "window_update":
            self._advance(st, StreamInput.RECV_WINDOW_UPDATE)
            return self._on_window_update(st, frame.window_update)
        raise ProtocolError(f"unexpected {kind} frame for stream {stream_id}")

    def _on_settings(self, stream_id: int, settings: tunnel_pb2.Settings) -> list[ev.Event]:
        if stream_id != TUNNEL_STREAM_ID:
            raise ProtocolError(
                f"settings frame on stream {stream_id}; settings belong on stream -1"
            )
        if self.ready:
            return []  # settings only count once
        revisions = tuple(int(r) for r in settings.supported_protocol_revisions)
        if not revisions:
            raise ProtocolError("settings frame lists no protocol revisions")
        ours = self.config.supported_revisions
        common = set(revisions) & set(ours)
        if not common:
            raise ProtocolError(
                f"no protocol revision in common (peer supports {list(revisions)}, "
                f"we support {list(ours)})"
            )
        self.revision = max(common)
        self.peer_window = settings.initial_window_size or DEFAULT_WINDOW
        self.ready = True
        return [ev.SettingsReceived(revisions, settings.initial_window_size)]

    def _on_close(self, st: Stream, close: tunnel_pb2.CloseStream) -> list[ev.Event]:
        status = close.status if close.HasField("status") else None
        ok = status is None or status.code == Code.OK
        if ok and st.partial is not None:
            return [self._fail_stream(st, "stream closed in the middle of a message")]
        self._advance(st, StreamInput.RECV_CLOSE)
        return [ev.StreamClosed(st.stream_id, status, close.response_trailers)]

    # -- framing --------------------------------------------------------------------

    def _fail_stream(self, st: Stream, message: str, code: Code | None = None) -> ev.Event:
        self.cancel(st.stream_id)
        return ev.StreamFailed(st.stream_id, code or self._stream_error_code, message)

    def _emit_control_item(
        self, st: Stream, item: OutItem, out: list[tunnel_pb2.ClientToServer | Encoded]
    ) -> None:
        if item.kind is ItemKind.NEW_STREAM:
            out.append(
                tunnel_pb2.ClientToServer(stream_id=st.stream_id, new_stream=item.new_stream)
            )
        elif item.kind is ItemKind.HALF_CLOSE:
            out.append(tunnel_pb2.ClientToServer(stream_id=st.stream_id, half_close=_EMPTY))

    def _message_frame(self, stream_id: int, size: int, chunk: bytes) -> tunnel_pb2.ClientToServer:
        # assigned field by field: passing a MessageData to the constructor copies the
        # chunk twice more (serialize, reparse)
        frame = tunnel_pb2.ClientToServer(stream_id=stream_id)
        message = frame.request_message
        message.size = size
        message.data = chunk
        return frame

    def _more_data_frame(self, stream_id: int, chunk: bytes) -> tunnel_pb2.ClientToServer:
        return tunnel_pb2.ClientToServer(stream_id=stream_id, more_request_data=chunk)

    def _window_update_frame(self, stream_id: int, credit: int) -> tunnel_pb2.ClientToServer:
        return tunnel_pb2.ClientToServer(stream_id=stream_id, window_update=credit)


class ServingConnection(_Connection[tunnel_pb2.ServerToClient, tunnel_pb2.ClientToServer]):
    """The end that serves streams: receives ``ClientToServer``, sends ``ServerToClient``.

    Call :meth:`start` once the tunnel RPC is up; with ``config.negotiated`` it queues
    the settings frame that must precede everything else.
    """

    _stream_error_code = Code.INVALID_ARGUMENT

    def __init__(self, config: ConnectionConfig) -> None:
        super().__init__(config)
        self._highest_stream_id = 0
        self._started = False

    @property
    def highest_stream_id(self) -> int:
        """The highest stream id the peer has opened (or tried to); 0: none yet."""
        return self._highest_stream_id

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.config.negotiated:
            settings = tunnel_pb2.Settings(
                supported_protocol_revisions=list(self.config.supported_revisions),  # type: ignore[arg-type]
                initial_window_size=self.config.receive_window,
            )
            self._control.append(
                tunnel_pb2.ServerToClient(stream_id=TUNNEL_STREAM_ID, settings=settings)
            )

    # -- the application's side -----------------------------------------------------

    def accept_stream(self, stream_id: int, *, request_streaming: bool) -> None:
        """Says whether the method takes a stream of requests (a second request on
        one that does not fails the stream)."""
        st = self._streams.get(stream_id)
        if st is not None:
            st.single_message_in = not request_streaming

    def reject_stream(self, stream_id: int, code: Code, message: str) -> None:
        """Closes a just-opened stream with an error status (no handler runs)."""
        self.close_stream(stream_id, _status(code, message))

    def send_headers(self, stream_id: int, headers: tunnel_pb2.Metadata) -> bool:
        """Queues the response headers. False if already sent or the stream is over."""
        st = self._streams.get(stream_id)
        if st is None or self._advance(st, StreamInput.SEND_HEADERS).outcome is Outcome.REFUSE:
            return False
        st.outq.append(OutItem(ItemKind.HEADERS, metadata=headers))
        self._schedule(st)
        return True

    def send_message(self, stream_id: int, data: bytes | memoryview) -> bool:
        """Queues one response message (empty headers first, if none were sent:
        headers always precede messages). False if the stream is closing or over."""
        st = self._streams.get(stream_id)
        if st is None:
            return False
        if st.state in _NO_HEADERS_YET:
            self.send_headers(stream_id, tunnel_pb2.Metadata())
        if self._advance(st, StreamInput.SEND_RESPONSE).outcome is Outcome.REFUSE:
            return False
        self._queue_message(st, data)
        return True

    def close_stream(
        self,
        stream_id: int,
        status: status_pb2.Status | None,
        trailers: tunnel_pb2.Metadata | None = None,
    ) -> bool:
        """Queues the final status after any queued message (headers first if they
        were never sent). False if the stream is already over."""
        st = self._streams.get(stream_id)
        if st is None:
            return False
        headers_first = st.state in _NO_HEADERS_YET
        if self._advance(st, StreamInput.SEND_CLOSE).outcome is Outcome.REFUSE:
            return False
        st.outq.append(
            OutItem(ItemKind.CLOSE, metadata=trailers, status=status, headers_first=headers_first)
        )
        self._schedule(st)
        return True

    # -- frames from the peer -------------------------------------------------------

    def receive(self, frame: tunnel_pb2.ClientToServer) -> list[ev.Event]:
        """Takes in one plain frame (see ``unbatch()``); returns what it brought about.
        Not while :attr:`output_backlogged`."""
        self._check_not_backlogged()
        kind = frame.WhichOneof("frame")
        stream_id = frame.stream_id
        if kind == "new_stream":
            return self._on_new_stream(stream_id, frame.new_stream)
        if kind is None:
            raise ProtocolError(
                f"frame for stream {stream_id} has no known kind", self._stream_error_code
            )
        st = self._streams.get(stream_id)
        if st is None:
            if stream_id <= 0 or stream_id > self._highest_stream_id:
                raise ProtocolError(
                    f"{kind} frame for stream {stream_id}, which was never opened",
                    self._stream_error_code,
                )
            return []  # the stream has finished: late frames are dropped
        if kind == "request_message" or kind == "more_request_data":
            step = self._advance(st, StreamInput.RECV_REQUEST)
            if step.outcome is not Outcome.PROCEED:
                return self._refused_frame(st, step, kind)
            if kind == "request_message":
                return self._on_message_start(st, frame.request_message)
            return self._on_more_data(st, frame.more_request_data)
        if kind == "window_update":
            self._advance(st, StreamInput.RECV_WINDOW_UPDATE)
            return self._on_window_update(st, frame.window_update)
        if kind == "half_close":
            step = self._advance(st, StreamInput.RECV_HALF_CLOSE)
            if step.outcome is not Outcome.PROCEED:
                return self._refused_frame(st, step, kind)
            if st.partial is not None:
                return [self._fail_stream(st, "half-close in the middle of a message")]
            return [ev.HalfClosed(stream_id)]
        if kind == "cancel":
            step = self._advance(st, StreamInput.RECV_CANCEL)
            return [] if step.outcome is Outcome.IGNORE else [ev.StreamCancelled(stream_id)]
        raise ProtocolError(
            f"unexpected {kind} frame for stream {stream_id}", self._stream_error_code
        )

    def _on_new_stream(self, stream_id: int, ns: tunnel_pb2.NewStream) -> list[ev.Event]:
        if stream_id <= self._highest_stream_id:
            raise ProtocolError(
                f"new stream id {stream_id} is not greater than every id seen so far "
                f"({self._highest_stream_id})",
                self._stream_error_code,
            )
        self._highest_stream_id = stream_id
        limit = self.config.max_concurrent_streams
        if limit is not None and len(self._streams) >= limit:
            self._refuse(
                stream_id,
                Code.RESOURCE_EXHAUSTED,
                f"too many concurrent streams on this tunnel (limit {limit})",
            )
            return []
        revision = int(ns.protocol_revision)
        if revision not in self.config.supported_revisions:
            self._refuse(stream_id, Code.UNAVAILABLE, f"unsupported protocol revision {revision}")
            return []
        method = ns.method_name
        if not _METHOD_RE.match(method):
            shown = method[:_SHOWN_METHOD_CHARS]
            if len(method) > _SHOWN_METHOD_CHARS:
                shown += f"... ({len(method)} characters)"
            self._refuse(
                stream_id,
                Code.INVALID_ARGUMENT,
                f"malformed method name {shown!r}: want /package.Service/Method",
            )
            return []
        send_window, recv_window = self._new_windows(revision, ns.initial_window_size)
        self._streams[stream_id] = Stream(stream_id, revision, send_window, recv_window)
        return [ev.StreamOpened(stream_id, method, ns.request_headers, revision)]

    def _refuse(self, stream_id: int, code: Code, message: str) -> None:
        """Answers a new stream the core will not open with (empty) headers and an
        error close, and keeps nothing of it: only its id stays used."""
        self._control.append(
            tunnel_pb2.ServerToClient(stream_id=stream_id, response_headers=tunnel_pb2.Metadata())
        )
        close = tunnel_pb2.CloseStream(status=_status(code, message))
        self._control.append(tunnel_pb2.ServerToClient(stream_id=stream_id, close_stream=close))

    # -- framing --------------------------------------------------------------------

    def _fail_stream(self, st: Stream, message: str, code: Code | None = None) -> ev.Event:
        code = code or self._stream_error_code
        # drop queued data, but keep queued headers: they must still precede the close;
        # a close already queued gives way to this one
        queued_close = next((item for item in st.outq if item.kind is ItemKind.CLOSE), None)
        headers_first = (
            queued_close.headers_first if queued_close is not None else st.state in _NO_HEADERS_YET
        )
        kept = [item for item in st.outq if item.kind is ItemKind.HEADERS]
        st.outq.clear()
        st.outq.extend(kept)
        st.queued_bytes = 0
        if st.partial is not None:
            st.buffered -= st.partial.received
        st.partial = None
        self._advance(st, StreamInput.SEND_ERROR_CLOSE)
        st.outq.append(
            OutItem(ItemKind.CLOSE, status=_status(code, message), headers_first=headers_first)
        )
        self._schedule(st)
        return ev.StreamFailed(st.stream_id, code, message)

    def _emit_control_item(
        self, st: Stream, item: OutItem, out: list[tunnel_pb2.ServerToClient | Encoded]
    ) -> None:
        stream_id = st.stream_id
        if item.kind is ItemKind.HEADERS:
            out.append(
                tunnel_pb2.ServerToClient(stream_id=stream_id, response_headers=item.metadata)
            )
        elif item.kind is ItemKind.CLOSE:
            if item.headers_first:
                out.append(
                    tunnel_pb2.ServerToClient(
                        stream_id=stream_id, response_headers=tunnel_pb2.Metadata()
                    )
                )
            close = tunnel_pb2.CloseStream(response_trailers=item.metadata, status=item.status)
            out.append(tunnel_pb2.ServerToClient(stream_id=stream_id, close_stream=close))
            self._advance(st, StreamInput.CLOSE_WRITTEN)

    def _message_frame(self, stream_id: int, size: int, chunk: bytes) -> tunnel_pb2.ServerToClient:
        frame = tunnel_pb2.ServerToClient(stream_id=stream_id)  # see CallingConnection
        message = frame.response_message
        message.size = size
        message.data = chunk
        return frame

    def _more_data_frame(self, stream_id: int, chunk: bytes) -> tunnel_pb2.ServerToClient:
        return tunnel_pb2.ServerToClient(stream_id=stream_id, more_response_data=chunk)

    def _window_update_frame(self, stream_id: int, credit: int) -> tunnel_pb2.ServerToClient:
        return tunnel_pb2.ServerToClient(stream_id=stream_id, window_update=credit)


def _status(code: Code, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=int(code), message=message)
