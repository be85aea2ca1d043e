"""The two ends of a tunnel, as pure state machines: frames in, events and frames out.

:class:`CallingConnection` is the tunnel client: it opens streams and sends
``ClientToServer`` frames (the network client of a forward tunnel, the network server
of a reverse one). :class:`ServingConnection` is the tunnel server: it accepts streams
and sends ``ServerToClient`` frames.

Neither does any I/O. Feed each frame read from the tunnel RPC to ``receive()``, which
returns events and raises :class:`ProtocolError` when the peer broke the protocol badly
enough to end the tunnel. Call the sending methods as the application acts. Then call
``take_frames()`` and write what it returns, in order. Frames of different streams are
interleaved round-robin, and a stream whose send window is spent waits for credit
without holding up the others.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Generic, TypeVar

from google.protobuf import empty_pb2
from google.rpc import status_pb2

from grpctunnel.protocol import events as ev
from grpctunnel.protocol.errors import Code, ProtocolError, UsageError
from grpctunnel.protocol.stream import ItemKind, OutItem, PartialMessage, StreamState
from grpctunnel.protocol.windows import MAX_WINDOW, ReceiveWindow, SendWindow
from grpctunnel.v1 import tunnel_pb2

REVISION_ZERO = tunnel_pb2.REVISION_ZERO
REVISION_ONE = tunnel_pb2.REVISION_ONE
SUPPORTED_REVISIONS: tuple[int, ...] = (REVISION_ZERO, REVISION_ONE)

DEFAULT_WINDOW = 65536  # what Go peers advertise, and assume when told 0
GO_CHUNK_SIZE = 16384  # the chunk size Go peers use
TUNNEL_STREAM_ID = -1

_EMPTY = empty_pb2.Empty()
_METHOD_RE = re.compile(r"^/[^/\s]+/[^/\s]+$")

Frame = TypeVar("Frame", tunnel_pb2.ClientToServer, tunnel_pb2.ServerToClient)


class _Connection(Generic[Frame]):
    """What both ends share: the stream table, framing, windows and the send queue."""

    # how a stream-level protocol error is reported by this end
    _stream_error_code: Code

    def __init__(
        self,
        *,
        receive_window: int,
        max_chunk_size: int,
        max_receive_message_size: int | None,
        supported_revisions: tuple[int, ...],
        max_concurrent_streams: int | None = None,
    ) -> None:
        if not 0 < receive_window <= MAX_WINDOW:
            raise ValueError("receive_window must be between 1 and 2**32-1")
        if max_chunk_size <= 0:
            raise ValueError("max_chunk_size must be positive")
        self.receive_window = receive_window
        self.max_chunk_size = max_chunk_size
        self.max_receive_message_size = max_receive_message_size
        self.supported_revisions = tuple(sorted(set(supported_revisions)))
        # serving side: streams beyond this many at once are refused
        self.max_concurrent_streams = max_concurrent_streams
        # revision zero has no windows: what one stream may hold unread before it fails
        self.max_unflowed_bytes = max(16 * 1024 * 1024, 2 * (max_receive_message_size or 0))
        self._streams: dict[int, StreamState] = {}
        self._control: deque[Frame] = deque()  # frames not tied to a stream's order
        self._ready: dict[int, None] = {}  # ordered set: streams with a frame to emit

    # -- queries ------------------------------------------------------------------

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def has_stream(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def queued_bytes(self, stream_id: int) -> int:
        """Message bytes of the stream not yet framed (0 for a finished stream)."""
        st = self._streams.get(stream_id)
        return st.queued_bytes if st is not None else 0

    def wants_to_send(self) -> bool:
        return bool(self._control) or bool(self._ready)

    # -- sending ------------------------------------------------------------------

    def send_message(self, stream_id: int, data: bytes) -> bool:
        """Queues one whole message. False if the stream is already finished."""
        st = self._streams.get(stream_id)
        if st is None or st.closing or st.local_half_closed:
            return False
        st.outq.append(OutItem(ItemKind.MESSAGE, data=data))
        st.queued_bytes += len(data)
        self._schedule(st)
        return True

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

    def take_frames(self, max_bytes: int = 1 << 20) -> list[Frame]:
        """Frames to write now, in order: control frames first, then one frame per
        ready stream in turn, until about ``max_bytes`` of message data is taken."""
        out: list[Frame] = list(self._control)
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
        return out

    # -- internals ----------------------------------------------------------------

    def _schedule(self, st: StreamState) -> None:
        if st.stream_id not in self._ready and st.can_emit():
            self._ready[st.stream_id] = None

    def _new_windows(
        self, revision: int, peer_window: int
    ) -> tuple[SendWindow, ReceiveWindow | None]:
        if revision == REVISION_ZERO:
            return SendWindow(None), None
        return SendWindow(peer_window or DEFAULT_WINDOW), ReceiveWindow(self.receive_window)

    def _release(self, st: StreamState, n: int) -> None:
        if n <= 0 or st.recv_window is None:
            return
        credit = st.recv_window.release(n)
        if credit:
            self._control.append(self._window_update_frame(st.stream_id, credit))

    def _emit_one(self, st: StreamState, out: list[Frame]) -> int:
        """Frames the head of the stream's queue (or one chunk of it) into ``out``;
        returns the number of message bytes framed."""
        item = st.outq[0]
        if item.kind is ItemKind.MESSAGE:
            remaining = len(item.data) - item.offset
            n = st.send_window.allowance(min(remaining, self.max_chunk_size))
            if n <= 0 and remaining > 0:
                return 0
            if item.offset == 0 and n == remaining:
                chunk = item.data
            else:
                chunk = item.data[item.offset : item.offset + n]
            if item.offset == 0:
                out.append(self._message_frame(st.stream_id, len(item.data), chunk))
            else:
                out.append(self._more_data_frame(st.stream_id, chunk))
            item.offset += n
            st.send_window.spend(n)
            st.queued_bytes -= n
            if item.offset >= len(item.data):
                st.outq.popleft()
            return n
        st.outq.popleft()
        self._emit_control_item(st, item, out)
        return 0

    def _emit_control_item(self, st: StreamState, item: OutItem, out: list[Frame]) -> None:
        raise NotImplementedError

    def _message_frame(self, stream_id: int, size: int, chunk: bytes) -> Frame:
        raise NotImplementedError

    def _more_data_frame(self, stream_id: int, chunk: bytes) -> Frame:
        raise NotImplementedError

    def _window_update_frame(self, stream_id: int, credit: int) -> Frame:
        raise NotImplementedError

    def _fail_stream(self, st: StreamState, message: str, code: Code | None = None) -> ev.Event:
        raise NotImplementedError

    def _on_window_update(self, st: StreamState, credit: int) -> list[ev.Event]:
        if not st.send_window.grant(credit):
            return [self._fail_stream(st, "window update overflows the send window")]
        self._schedule(st)
        return []

    def _on_message_start(self, st: StreamState, data: tunnel_pb2.MessageData) -> list[ev.Event]:
        if st.partial is not None:
            return [
                self._fail_stream(st, "a new message began before the previous one was complete")
            ]
        if st.single_message_in and st.messages_in >= 1:
            return [self._fail_stream(st, "a second message on a method that does not stream it")]
        size = data.size
        limit = self.max_receive_message_size
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

    def _on_more_data(self, st: StreamState, chunk: bytes) -> list[ev.Event]:
        if st.partial is None:
            return [self._fail_stream(st, "message data arrived with no message in progress")]
        return self._on_chunk(st, chunk)

    def _on_chunk(self, st: StreamState, chunk: bytes) -> list[ev.Event]:
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
            if st.recv_window is None and st.buffered > self.max_unflowed_bytes:
                return [
                    self._fail_stream(
                        st,
                        f"peer sent {st.buffered} bytes on a stream without flow control "
                        f"faster than they were read (limit {self.max_unflowed_bytes})",
                        Code.RESOURCE_EXHAUSTED,
                    )
                ]
        if p.received < p.size:
            self._release(st, st.release_partial())
            return []
        st.partial = None
        data = p.chunks[0] if len(p.chunks) == 1 else b"".join(p.chunks)
        st.unread += 1
        st.unread_unreleased.append((p.size, p.size - p.released))
        return [ev.MessageReceived(st.stream_id, data)]


class CallingConnection(_Connection[tunnel_pb2.ClientToServer]):
    """The end that opens streams: sends ``ClientToServer``, receives ``ServerToClient``.

    With ``negotiated`` (both sides exchanged the negotiate header) the peer's settings
    frame must come first, and :attr:`ready` stays False until it has.
    """

    _stream_error_code = Code.INTERNAL

    def __init__(
        self,
        *,
        negotiated: bool,
        receive_window: int = DEFAULT_WINDOW,
        max_chunk_size: int = GO_CHUNK_SIZE,
        max_receive_message_size: int | None = 4 * 1024 * 1024,
        supported_revisions: tuple[int, ...] = SUPPORTED_REVISIONS,
        max_concurrent_streams: int | None = None,
    ) -> None:
        super().__init__(
            receive_window=receive_window,
            max_chunk_size=max_chunk_size,
            max_receive_message_size=max_receive_message_size,
            supported_revisions=supported_revisions,
            max_concurrent_streams=max_concurrent_streams,
        )
        self.negotiated = negotiated
        self.ready = not negotiated
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
        st = StreamState(stream_id, self.revision, send_window, recv_window)
        st.single_message_in = not response_streaming
        ns = tunnel_pb2.NewStream(
            method_name=method,
            initial_window_size=self.receive_window if recv_window is not None else 0,
            protocol_revision=self.revision,  # type: ignore[arg-type]
        )
        if headers is not None:
            ns.request_headers.CopyFrom(headers)
        st.outq.append(OutItem(ItemKind.NEW_STREAM, new_stream=ns))
        self._streams[stream_id] = st
        self._schedule(st)
        return stream_id

    def half_close(self, stream_id: int) -> None:
        """Queues the end of the requests, after any queued message."""
        st = self._streams.get(stream_id)
        if st is None or st.local_half_closed:
            return
        st.local_half_closed = True
        st.outq.append(OutItem(ItemKind.HALF_CLOSE))
        self._schedule(st)

    def cancel(self, stream_id: int) -> None:
        """Abandons the stream: drops what is queued and tells the peer, if the peer
        knows of the stream yet. Later frames for it are dropped."""
        st = self._streams.pop(stream_id, None)
        self._ready.pop(stream_id, None)
        if st is not None and st.opened_on_wire:
            self._control.append(tunnel_pb2.ClientToServer(stream_id=stream_id, cancel=_EMPTY))

    # -- frames from the peer -------------------------------------------------------

    def receive(self, frame: tunnel_pb2.ServerToClient) -> list[ev.Event]:
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
        if not st.opened_on_wire:
            raise ProtocolError(f"{kind} frame for stream {stream_id}, which was never opened")
        if kind == "response_message":
            return self._on_message_start(st, frame.response_message)
        if kind == "more_response_data":
            return self._on_more_data(st, frame.more_response_data)
        if kind == "response_headers":
            if st.headers_received or st.messages_in:
                return [self._fail_stream(st, "response headers arrived twice or after a message")]
            st.headers_received = True
            return [ev.HeadersReceived(stream_id, frame.response_headers)]
        if kind == "close_stream":
            return self._on_close(st, frame.close_stream)
        if kind == "window_update":
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
        common = set(revisions) & set(self.supported_revisions)
        if not common:
            raise ProtocolError(
                f"no protocol revision in common (peer supports {list(revisions)}, "
                f"we support {list(self.supported_revisions)})"
            )
        self.revision = max(common)
        self.peer_window = settings.initial_window_size or DEFAULT_WINDOW
        self.ready = True
        return [ev.SettingsReceived(revisions, settings.initial_window_size)]

    def _on_close(self, st: StreamState, close: tunnel_pb2.CloseStream) -> list[ev.Event]:
        status = close.status if close.HasField("status") else None
        ok = status is None or status.code == Code.OK
        if ok and st.partial is not None:
            return [self._fail_stream(st, "stream closed in the middle of a message")]
        del self._streams[st.stream_id]
        self._ready.pop(st.stream_id, None)
        return [ev.StreamClosed(st.stream_id, status, close.response_trailers)]

    # -- framing --------------------------------------------------------------------

    def _fail_stream(self, st: StreamState, message: str, code: Code | None = None) -> ev.Event:
        self.cancel(st.stream_id)
        return ev.StreamFailed(st.stream_id, code or self._stream_error_code, message)

    def _emit_control_item(
        self, st: StreamState, item: OutItem, out: list[tunnel_pb2.ClientToServer]
    ) -> None:
        if item.kind is ItemKind.NEW_STREAM:
            st.opened_on_wire = True
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


class ServingConnection(_Connection[tunnel_pb2.ServerToClient]):
    """The end that serves streams: receives ``ClientToServer``, sends ``ServerToClient``.

    Call :meth:`start` once the tunnel RPC is up; with ``negotiated`` it queues the
    settings frame that must precede everything else.
    """

    _stream_error_code = Code.INVALID_ARGUMENT

    def __init__(
        self,
        *,
        negotiated: bool,
        receive_window: int = DEFAULT_WINDOW,
        max_chunk_size: int = GO_CHUNK_SIZE,
        max_receive_message_size: int | None = 4 * 1024 * 1024,
        supported_revisions: tuple[int, ...] = SUPPORTED_REVISIONS,
        max_concurrent_streams: int | None = None,
    ) -> None:
        super().__init__(
            receive_window=receive_window,
            max_chunk_size=max_chunk_size,
            max_receive_message_size=max_receive_message_size,
            supported_revisions=supported_revisions,
            max_concurrent_streams=max_concurrent_streams,
        )
        self.negotiated = negotiated
        self._highest_stream_id = 0
        self._started = False

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.negotiated:
            settings = tunnel_pb2.Settings(
                supported_protocol_revisions=list(self.supported_revisions),  # type: ignore[arg-type]
                initial_window_size=self.receive_window,
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
        if st is None or st.closing or st.headers_sent:
            return False
        st.headers_sent = True
        st.outq.append(OutItem(ItemKind.HEADERS, metadata=headers))
        self._schedule(st)
        return True

    def send_message(self, stream_id: int, data: bytes) -> bool:
        """Queues one response message (empty headers first, if none were sent:
        headers always precede messages)."""
        st = self._streams.get(stream_id)
        if st is not None and not st.headers_sent and not st.closing:
            self.send_headers(stream_id, tunnel_pb2.Metadata())
        return super().send_message(stream_id, data)

    def close_stream(
        self,
        stream_id: int,
        status: status_pb2.Status | None,
        trailers: tunnel_pb2.Metadata | None = None,
    ) -> bool:
        """Queues the final status after any queued message (headers first if they
        were never sent). False if the stream is already over."""
        st = self._streams.get(stream_id)
        if st is None or st.closing:
            return False
        st.closing = True
        st.outq.append(OutItem(ItemKind.CLOSE, metadata=trailers, status=status))
        self._schedule(st)
        return True

    # -- frames from the peer -------------------------------------------------------

    def receive(self, frame: tunnel_pb2.ClientToServer) -> list[ev.Event]:
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
        if kind == "cancel":
            del self._streams[stream_id]
            self._ready.pop(stream_id, None)
            return [] if st.closing else [ev.StreamCancelled(stream_id)]
        if kind == "window_update":
            return self._on_window_update(st, frame.window_update)
        if st.closing:
            return []  # the handler is done; what the caller still sends is moot
        if st.remote_half_closed:
            return [self._fail_stream(st, f"{kind} frame after the caller half-closed")]
        if kind == "request_message":
            return self._on_message_start(st, frame.request_message)
        if kind == "more_request_data":
            return self._on_more_data(st, frame.more_request_data)
        if kind == "half_close":
            if st.partial is not None:
                return [self._fail_stream(st, "half-close in the middle of a message")]
            st.remote_half_closed = True
            return [ev.HalfClosed(stream_id)]
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
        revision = int(ns.protocol_revision)
        send_window, recv_window = self._new_windows(revision, ns.initial_window_size)
        st = StreamState(stream_id, revision, send_window, recv_window)
        limit = self.max_concurrent_streams
        over_limit = limit is not None and len(self._streams) >= limit
        self._streams[stream_id] = st
        if over_limit:
            self.reject_stream(
                stream_id,
                Code.RESOURCE_EXHAUSTED,
                f"too many concurrent streams on this tunnel (limit {limit})",
            )
            return []
        if revision not in self.supported_revisions:
            self.reject_stream(
                stream_id, Code.UNAVAILABLE, f"unsupported protocol revision {revision}"
            )
            return []
        method = ns.method_name
        if not _METHOD_RE.match(method):
            self.reject_stream(
                stream_id,
                Code.INVALID_ARGUMENT,
                f"malformed method name {method!r}: want /package.Service/Method",
            )
            return []
        return [ev.StreamOpened(stream_id, method, ns.request_headers, revision)]

    # -- framing --------------------------------------------------------------------

    def _fail_stream(self, st: StreamState, message: str, code: Code | None = None) -> ev.Event:
        code = code or self._stream_error_code
        # drop queued data, but keep queued headers: they must still precede the close
        kept = [item for item in st.outq if item.kind is ItemKind.HEADERS]
        st.outq.clear()
        st.outq.extend(kept)
        st.queued_bytes = 0
        if st.partial is not None:
            st.buffered -= st.partial.received
        st.partial = None
        st.closing = False
        self.close_stream(st.stream_id, _status(code, message))
        return ev.StreamFailed(st.stream_id, code, message)

    def _emit_control_item(
        self, st: StreamState, item: OutItem, out: list[tunnel_pb2.ServerToClient]
    ) -> None:
        stream_id = st.stream_id
        if item.kind is ItemKind.HEADERS:
            out.append(
                tunnel_pb2.ServerToClient(stream_id=stream_id, response_headers=item.metadata)
            )
        elif item.kind is ItemKind.CLOSE:
            if not st.headers_sent:
                st.headers_sent = True
                out.append(
                    tunnel_pb2.ServerToClient(
                        stream_id=stream_id, response_headers=tunnel_pb2.Metadata()
                    )
                )
            close = tunnel_pb2.CloseStream(response_trailers=item.metadata, status=item.status)
            out.append(tunnel_pb2.ServerToClient(stream_id=stream_id, close_stream=close))
            del self._streams[stream_id]

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
