"""Frame builders and a back-to-back harness for the sans-IO protocol core.

The harness wires a CallingConnection to a ServingConnection, pumping frames through
``SerializeToString``/``FromString`` like the real transport (batch frames included,
unpacked with ``unbatch()`` as the session does), and checks on every data
frame that the sender stays inside the window the receiver advertised (an independent
book-keeping of the wire, not the core's own counters).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from google.protobuf import empty_pb2
from google.rpc import status_pb2

from grpctunnel.protocol import (
    DEFAULT_WINDOW,
    CallingConnection,
    Code,
    ConnectionConfig,
    Event,
    ServingConnection,
    SettingsReceived,
    StreamOpened,
)
from grpctunnel.protocol.wire import EncodedFrame, decode_client_frame, decode_server_frame
from grpctunnel.v1 import tunnel_pb2

C2S = tunnel_pb2.ClientToServer
S2C = tunnel_pb2.ServerToClient
METHOD = "/pkg.Service/Method"
EMPTY = empty_pb2.Empty()


# -- frame builders -------------------------------------------------------------------


def md(**values: str | list[str]) -> tunnel_pb2.Metadata:
    m = tunnel_pb2.Metadata()
    for key, val in values.items():
        vals = [val] if isinstance(val, str) else val
        m.md[key.replace("_", "-")].val.extend(vals)
    return m


def settings(revisions: Iterable[int] = (0, 1), window: int = DEFAULT_WINDOW, sid: int = -1) -> S2C:
    return S2C(
        stream_id=sid,
        settings=tunnel_pb2.Settings(
            supported_protocol_revisions=list(revisions),  # type: ignore[arg-type]
            initial_window_size=window,
        ),
    )


def new_stream(
    sid: int,
    method: str = METHOD,
    *,
    revision: int = 1,
    window: int = 0,
    headers: tunnel_pb2.Metadata | None = None,
) -> C2S:
    ns = tunnel_pb2.NewStream(
        method_name=method,
        initial_window_size=window,
        protocol_revision=revision,  # type: ignore[arg-type]
    )
    if headers is not None:
        ns.request_headers.CopyFrom(headers)
    return C2S(stream_id=sid, new_stream=ns)


def req(sid: int, data: bytes, size: int | None = None) -> C2S:
    return C2S(
        stream_id=sid,
        request_message=tunnel_pb2.MessageData(size=len(data) if size is None else size, data=data),
    )


def more_req(sid: int, data: bytes) -> C2S:
    return C2S(stream_id=sid, more_request_data=data)


def half_close(sid: int) -> C2S:
    return C2S(stream_id=sid, half_close=EMPTY)


def cancel(sid: int) -> C2S:
    return C2S(stream_id=sid, cancel=EMPTY)


def c2s_window(sid: int, credit: int) -> C2S:
    return C2S(stream_id=sid, window_update=credit)


def headers(sid: int, m: tunnel_pb2.Metadata | None = None) -> S2C:
    return S2C(stream_id=sid, response_headers=m or tunnel_pb2.Metadata())


def resp(sid: int, data: bytes, size: int | None = None) -> S2C:
    return S2C(
        stream_id=sid,
        response_message=tunnel_pb2.MessageData(
            size=len(data) if size is None else size, data=data
        ),
    )


def more_resp(sid: int, data: bytes) -> S2C:
    return S2C(stream_id=sid, more_response_data=data)


def close(
    sid: int,
    code: int | None = None,
    message: str = "",
    trailers: tunnel_pb2.Metadata | None = None,
) -> S2C:
    cs = tunnel_pb2.CloseStream()
    if code is not None:
        cs.status.CopyFrom(status_pb2.Status(code=int(code), message=message))
    if trailers is not None:
        cs.response_trailers.CopyFrom(trailers)
    return S2C(stream_id=sid, close_stream=cs)


def s2c_window(sid: int, credit: int) -> S2C:
    return S2C(stream_id=sid, window_update=credit)


def status(code: Code, message: str = "") -> status_pb2.Status:
    return status_pb2.Status(code=int(code), message=message)


# -- frame inspection -----------------------------------------------------------------


def kind(frame: C2S | S2C) -> str | None:
    return frame.WhichOneof("frame")


def kinds(frames: Iterable[C2S | S2C]) -> list[tuple[int, str | None]]:
    return [(f.stream_id, kind(f)) for f in frames]


def chunk_of(frame: C2S | S2C) -> bytes | None:
    """The message bytes a frame carries (None for frames that carry none)."""
    k = kind(frame)
    if k in ("request_message", "response_message"):
        return getattr(frame, k).data  # type: ignore[no-any-return]
    if k in ("more_request_data", "more_response_data"):
        return getattr(frame, k)  # type: ignore[no-any-return]
    return None


def data_bytes(frames: Iterable[C2S | S2C], sid: int | None = None) -> bytes:
    return b"".join(
        c for f in frames if (sid is None or f.stream_id == sid) and (c := chunk_of(f)) is not None
    )


def plain_frames(frame: C2S | S2C) -> list[C2S | S2C]:
    """The frames a message of the tunnel RPC carries: those of a batch, or itself."""
    return list(frame.batch) if frame.batch else [frame]


def wire(frame: C2S | S2C) -> C2S | S2C:
    """Round-trips a frame through its encoding, as the transport would."""
    return type(frame).FromString(frame.SerializeToString())


def payload(n: int, seed: object = 0) -> bytes:
    return random.Random(str(seed)).randbytes(n)


# -- single-ended helpers ----------------------------------------------------------------


def ready_client(
    *, revisions: Iterable[int] = (0, 1), window: int = DEFAULT_WINDOW, **kw: object
) -> CallingConnection:
    """A negotiated calling side that has taken in the peer's settings."""
    c = CallingConnection(ConnectionConfig(negotiated=True, **kw))  # type: ignore[arg-type]
    evs = c.receive(settings(revisions, window))
    assert evs and isinstance(evs[0], SettingsReceived)
    return c


def open_on_wire(c: CallingConnection, method: str = METHOD, **kw: object) -> tuple[int, list[C2S]]:
    """Opens a stream and takes the frames (so its new_stream is on the wire)."""
    sid = c.open_stream(method, **kw)  # type: ignore[arg-type]
    return sid, c.take_frames()


def serving_with_stream(
    sid: int = 1,
    *,
    revision: int = 1,
    window: int = 0,
    request_streaming: bool = True,
    **kw: object,
) -> ServingConnection:
    """A serving side with one accepted stream and its output drained."""
    s = ServingConnection(ConnectionConfig(negotiated=revision == 1, **kw))  # type: ignore[arg-type]
    s.start()
    s.take_frames()
    evs = s.receive(new_stream(sid, revision=revision, window=window))
    assert [type(e) for e in evs] == [StreamOpened]
    s.accept_stream(sid, request_streaming=request_streaming)
    return s


# -- the back-to-back pair -------------------------------------------------------------------


class WindowViolation(AssertionError):
    pass


@dataclass
class _Dir:
    """Wire book-keeping for one direction of one stream."""

    window: int | None  # None: revision zero, unlimited
    sent: int = 0
    credit: int = 0


@dataclass
class WireChecker:
    """Independent flow-control check: for every data frame, bytes sent so far minus
    credit the sender had received must fit the window the receiver advertised."""

    server_window: int = DEFAULT_WINDOW  # from Settings (calling side's send window)
    c2s: dict[int, _Dir] = field(default_factory=dict)
    s2c: dict[int, _Dir] = field(default_factory=dict)
    max_chunk_c2s: int | None = None
    max_chunk_s2c: int | None = None

    def client_sent(self, f: C2S) -> None:
        k = kind(f)
        if k == "new_stream":
            ns = f.new_stream
            rev1 = ns.protocol_revision == tunnel_pb2.REVISION_ONE
            self.c2s[f.stream_id] = _Dir(self.server_window if rev1 else None)
            self.s2c[f.stream_id] = _Dir(
                (ns.initial_window_size or DEFAULT_WINDOW) if rev1 else None
            )
            return
        c = chunk_of(f)
        if c is not None:
            self._spend(self.c2s[f.stream_id], len(c), self.max_chunk_c2s, f)

    def server_sent(self, f: S2C) -> None:
        k = kind(f)
        if k == "settings":
            self.server_window = f.settings.initial_window_size or DEFAULT_WINDOW
            return
        c = chunk_of(f)
        if c is not None:
            self._spend(self.s2c[f.stream_id], len(c), self.max_chunk_s2c, f)

    def client_received(self, f: S2C) -> None:
        if kind(f) == "window_update" and f.stream_id in self.c2s:
            self.c2s[f.stream_id].credit += f.window_update

    def server_received(self, f: C2S) -> None:
        if kind(f) == "window_update" and f.stream_id in self.s2c:
            self.s2c[f.stream_id].credit += f.window_update

    @staticmethod
    def _spend(d: _Dir, n: int, max_chunk: int | None, f: C2S | S2C) -> None:
        if max_chunk is not None and n > max_chunk:
            raise WindowViolation(f"chunk of {n} bytes exceeds the chunk limit {max_chunk}: {f}")
        if d.window is not None and d.sent + n - d.credit > d.window:
            raise WindowViolation(
                f"stream {f.stream_id}: {d.sent + n} bytes sent with {d.credit} credit "
                f"exceeds the window {d.window}"
            )
        d.sent += n


class Pair:
    """A calling and a serving connection wired back to back.

    Events are collected per side; ``on_server_event`` / ``on_client_event`` callbacks
    (set by tests) act on them as an application would. By default the server accepts
    every opened stream as request-streaming.
    """

    def __init__(
        self,
        *,
        negotiated: bool = True,
        batching: bool = False,
        client: dict[str, object] | None = None,
        server: dict[str, object] | None = None,
    ) -> None:
        self.client = CallingConnection(
            ConnectionConfig(negotiated=negotiated, batching=batching, **(client or {}))  # type: ignore[arg-type]
        )
        self.server = ServingConnection(
            ConnectionConfig(negotiated=negotiated, batching=batching, **(server or {}))  # type: ignore[arg-type]
        )
        self.server.start()
        self.checker = WireChecker(
            max_chunk_c2s=self.client.max_chunk_size, max_chunk_s2c=self.server.max_chunk_size
        )
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []
        self.c2s_log: list[C2S] = []  # every plain frame sent, batched or not
        self.s2c_log: list[S2C] = []
        self.batches_c2s = 0  # batch frames sent
        self.batches_s2c = 0
        self.encoded_c2s = 0  # frames sent in their wire form (grpctunnel.protocol.wire)
        self.encoded_s2c = 0
        self.delivered_c2s: dict[int, int] = {}  # message bytes taken in by the server
        self.delivered_s2c: dict[int, int] = {}  # message bytes taken in by the client
        self.in_flight_c2s: deque[C2S] = deque()
        self.in_flight_s2c: deque[S2C] = deque()
        self.request_streaming: Callable[[StreamOpened], bool] = lambda e: True
        self.on_server_event: Callable[[Event], None] | None = None
        self.on_client_event: Callable[[Event], None] | None = None

    # moving frames ------------------------------------------------------------------

    def flush_client(self) -> int:
        frames = self.client.take_frames()
        for sent in frames:
            self.encoded_c2s += isinstance(sent, EncodedFrame)  # already in its wire form
            raw = sent.SerializeToString()
            f = C2S.FromString(raw)
            self.batches_c2s += bool(f.batch)
            for one in plain_frames(f):
                self.checker.client_sent(one)
                self.c2s_log.append(one)
            # read as the tunnel RPC reads it: a large data frame by hand (wire.DataFrameIn)
            self.in_flight_c2s.append(decode_client_frame(raw))
        return len(frames)

    def flush_server(self) -> int:
        frames = self.server.take_frames()
        for sent in frames:
            self.encoded_s2c += isinstance(sent, EncodedFrame)  # already in its wire form
            raw = sent.SerializeToString()
            f = S2C.FromString(raw)
            self.batches_s2c += bool(f.batch)
            for one in plain_frames(f):
                self.checker.server_sent(one)
                self.s2c_log.append(one)
            # read as the tunnel RPC reads it: a large data frame by hand (wire.DataFrameIn)
            self.in_flight_s2c.append(decode_server_frame(raw))
        return len(frames)

    def deliver_to_server(self, limit: int | None = None) -> int:
        n = 0
        while self.in_flight_c2s and (limit is None or n < limit):
            for f in self.server.unbatch(self.in_flight_c2s.popleft()):
                self.checker.server_received(f)
                if (c := chunk_of(f)) is not None:
                    self.delivered_c2s[f.stream_id] = self.delivered_c2s.get(f.stream_id, 0) + len(
                        c
                    )
                for e in self.server.receive(f):
                    self.server_events.append(e)
                    if isinstance(e, StreamOpened):
                        self.server.accept_stream(
                            e.stream_id, request_streaming=self.request_streaming(e)
                        )
                    if self.on_server_event is not None:
                        self.on_server_event(e)
            n += 1
        return n

    def deliver_to_client(self, limit: int | None = None) -> int:
        n = 0
        while self.in_flight_s2c and (limit is None or n < limit):
            for f in self.client.unbatch(self.in_flight_s2c.popleft()):
                self.checker.client_received(f)
                if (c := chunk_of(f)) is not None:
                    self.delivered_s2c[f.stream_id] = self.delivered_s2c.get(f.stream_id, 0) + len(
                        c
                    )
                for e in self.client.receive(f):
                    self.client_events.append(e)
                    if self.on_client_event is not None:
                        self.on_client_event(e)
            n += 1
        return n

    def step(self) -> int:
        return (
            self.flush_client()
            + self.flush_server()
            + self.deliver_to_server()
            + self.deliver_to_client()
        )

    def pump(self, max_rounds: int = 100_000) -> None:
        """Moves frames both ways until nothing moves."""
        for _ in range(max_rounds):
            if not self.step():
                return
        raise AssertionError("the pair did not settle (livelock?)")

    def handshake(self) -> None:
        """Delivers the server's settings (if any) so the client is ready."""
        self.flush_server()
        self.deliver_to_client()
        assert self.client.ready

    # events -----------------------------------------------------------------------------

    def client_events_for(self, sid: int) -> list[Event]:
        return [e for e in self.client_events if getattr(e, "stream_id", None) == sid]

    def server_events_for(self, sid: int) -> list[Event]:
        return [e for e in self.server_events if getattr(e, "stream_id", None) == sid]


def check_invariants(conn: CallingConnection | ServingConnection) -> None:
    """Window and queue invariants of every stream the connection holds."""
    from grpctunnel.protocol.stream import ItemKind, StreamState

    for sid, st in conn._streams.items():
        assert st.stream_id == sid
        rw = st.recv_window
        if rw is not None:
            assert 0 <= rw.remaining <= rw.size, (sid, rw.remaining, rw.size)
            assert rw.unreleased >= 0
        sw = st.send_window
        if sw.limited:
            assert sw.available >= 0, (sid, sw.available)
        assert st.queued_bytes >= 0, (sid, st.queued_bytes)
        unframed = sum(len(i.data) - i.offset for i in st.outq if i.kind is ItemKind.MESSAGE)
        assert st.queued_bytes == unframed, (sid, st.queued_bytes, unframed)
        assert conn.queued_bytes(sid) == st.queued_bytes
        assert st.unread == len(st.unread_unreleased) >= 0
        if st.partial is not None:
            assert 0 <= st.partial.released <= st.partial.received <= st.partial.size
            assert st.partial.received == sum(len(c) for c in st.partial.chunks)
        if hasattr(st, "buffered"):  # bytes received and not yet consumed
            partial = st.partial.received if st.partial is not None else 0
            unread = sum(u[0] if isinstance(u, tuple) else 0 for u in st.unread_unreleased)
            if all(isinstance(u, tuple) for u in st.unread_unreleased):
                if st.state is StreamState.CLOSING:  # a failed stream may forget its partial
                    assert st.buffered >= unread + partial, (sid, st.buffered, unread, partial)
                else:
                    assert st.buffered == unread + partial, (sid, st.buffered, unread, partial)
