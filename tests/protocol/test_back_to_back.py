"""A CallingConnection and a ServingConnection wired back to back (frames pumped through
their encoding) exchanging the four call shapes at once."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pytest

from grpctunnel.protocol import (
    Code,
    Event,
    HalfClosed,
    HeadersReceived,
    MessageReceived,
    StreamCancelled,
    StreamClosed,
    StreamFailed,
    StreamOpened,
)

from .harness import Pair, md, payload, status

UNARY = "/test.Svc/Unary"
SERVER_STREAM = "/test.Svc/ServerStream"
CLIENT_STREAM = "/test.Svc/ClientStream"
BIDI = "/test.Svc/Bidi"
FAIL = "/test.Svc/Fail"
REQUEST_STREAMING = {
    UNARY: False,
    SERVER_STREAM: False,
    CLIENT_STREAM: True,
    BIDI: True,
    FAIL: True,
}
RESPONSE_STREAMING = {
    UNARY: False,
    SERVER_STREAM: True,
    CLIENT_STREAM: False,
    BIDI: True,
    FAIL: False,
}


@dataclass
class ServerCall:
    method: str
    count: int
    requests: list[bytes] = field(default_factory=list)


class EchoServer:
    """A tiny application on the serving side, driven by events."""

    def __init__(self, pair: Pair) -> None:
        self.p = pair
        self.calls: dict[int, ServerCall] = {}
        pair.request_streaming = lambda e: REQUEST_STREAMING[e.method]
        pair.on_server_event = self.on_event

    def on_event(self, e: Event) -> None:
        s = self.p.server
        if isinstance(e, StreamOpened):
            count = int(e.headers.md["count"].val[0]) if "count" in e.headers.md else 1
            self.calls[e.stream_id] = ServerCall(e.method, count)
            if e.method in (BIDI, SERVER_STREAM):
                s.send_headers(e.stream_id, md(shape=e.method))
        elif isinstance(e, MessageReceived):
            call = self.calls[e.stream_id]
            call.requests.append(e.data)
            s.message_consumed(e.stream_id)
            if call.method == BIDI:
                s.send_message(e.stream_id, e.data[::-1])
        elif isinstance(e, HalfClosed):
            call = self.calls[e.stream_id]
            sid = e.stream_id
            if call.method == UNARY:
                s.send_headers(sid, md(shape=UNARY))
                s.send_message(sid, call.requests[0][::-1])
            elif call.method == SERVER_STREAM:
                for i in range(call.count):
                    s.send_message(sid, payload(len(call.requests[0]) + i, (sid, i)))
            elif call.method == CLIENT_STREAM:
                s.send_message(sid, hashlib.sha256(b"".join(call.requests)).digest())
            if call.method == FAIL:
                st = status(Code.FAILED_PRECONDITION, "no")
                st.details.add().Pack(md(why="because"))
                s.close_stream(sid, st, md(t_bin="x"))
            else:
                s.close_stream(sid, None, md(done="yes"))


@dataclass
class ClientCall:
    method: str
    requests: list[bytes]
    headers: list[HeadersReceived] = field(default_factory=list)
    responses: list[bytes] = field(default_factory=list)
    closed: StreamClosed | None = None
    failed: list[StreamFailed] = field(default_factory=list)


def run_calls(p: Pair, specs: list[tuple[str, list[bytes], int]]) -> dict[int, ClientCall]:
    p.handshake()
    server = EchoServer(p)
    calls: dict[int, ClientCall] = {}

    def on_client(e: Event) -> None:
        call = calls[e.stream_id]  # type: ignore[union-attr]
        if isinstance(e, HeadersReceived):
            call.headers.append(e)
        elif isinstance(e, MessageReceived):
            call.responses.append(e.data)
            p.client.message_consumed(e.stream_id)
        elif isinstance(e, StreamClosed):
            call.closed = e
        elif isinstance(e, StreamFailed):
            call.failed.append(e)

    p.on_client_event = on_client
    for method, requests, count in specs:
        sid = p.client.open_stream(
            method, md(count=str(count)), response_streaming=RESPONSE_STREAMING[method]
        )
        calls[sid] = ClientCall(method, requests)
        for r in requests:
            assert p.client.send_message(sid, r)
        p.client.half_close(sid)
        p.step()  # streams overlap: later ones open while earlier ones are in flight
    p.pump()
    assert p.client.active_streams == 0
    assert p.server.active_streams == 0
    assert not [e for e in p.server_events if isinstance(e, StreamFailed | StreamCancelled)]
    assert {sid: c.requests for sid, c in server.calls.items()} == {
        sid: c.requests for sid, c in calls.items()
    }
    return calls


def check_call(sid: int, call: ClientCall, count: int) -> None:
    assert not call.failed
    assert call.closed is not None
    assert len(call.headers) == 1
    if call.method == FAIL:
        assert call.closed.status is not None
        assert call.closed.status.code == Code.FAILED_PRECONDITION
        assert len(call.closed.status.details) == 1
        assert list(call.closed.trailers.md["t-bin"].val) == ["x"]
        assert call.responses == []
        return
    assert call.closed.status is None
    assert list(call.closed.trailers.md["done"].val) == ["yes"]
    if call.method == UNARY:
        assert call.responses == [call.requests[0][::-1]]
        assert list(call.headers[0].headers.md["shape"].val) == [UNARY]
    elif call.method == SERVER_STREAM:
        n = len(call.requests[0])
        assert call.responses == [payload(n + i, (sid, i)) for i in range(count)]
        assert list(call.headers[0].headers.md["shape"].val) == [SERVER_STREAM]
    elif call.method == CLIENT_STREAM:
        assert call.responses == [hashlib.sha256(b"".join(call.requests)).digest()]
        assert len(call.headers[0].headers.md) == 0  # implicit empty headers
    elif call.method == BIDI:
        assert call.responses == [r[::-1] for r in call.requests]


SPECS: list[tuple[str, list[bytes], int]] = [
    (UNARY, [payload(10, 1)], 1),
    (UNARY, [b""], 1),
    (UNARY, [payload(200_000, 2)], 1),
    (SERVER_STREAM, [payload(5, 3)], 20),
    (SERVER_STREAM, [payload(70_000, 4)], 3),
    (CLIENT_STREAM, [payload(n, ("c", n)) for n in (0, 1, 100, 70_000, 16384, 16385)], 1),
    (CLIENT_STREAM, [], 1),
    (BIDI, [payload(n, ("b", n)) for n in (0, 3, 65536, 65537, 1, 0, 150_000)], 1),
    (BIDI, [], 1),
    (FAIL, [b"x"], 1),
]


@pytest.mark.parametrize(
    ("negotiated", "client", "server"),
    [
        (True, {}, {}),
        (False, {}, {}),
        (
            True,
            {"receive_window": 1000, "max_chunk_size": 300},
            {"receive_window": 777, "max_chunk_size": 5000},
        ),
        (True, {"receive_window": 2**20, "max_chunk_size": 2**18}, {"receive_window": 2**21}),
        (True, {"supported_revisions": (0,)}, {}),
    ],
    ids=["go-defaults", "revision-zero", "small-windows", "large-windows", "client-only-rev0"],
)
def test_all_call_shapes_back_to_back(negotiated: bool, client: dict, server: dict) -> None:  # type: ignore[type-arg]
    p = Pair(negotiated=negotiated, client=client, server=server)
    calls = run_calls(p, SPECS)
    assert sorted(calls) == list(range(1, len(SPECS) + 1))
    for sid, call in calls.items():
        check_call(sid, call, SPECS[sid - 1][2])
    # every frame went through its encoding; the wire never carried an empty method
    assert all(f.new_stream.method_name for f in p.c2s_log if f.HasField("new_stream"))
    # response headers precede every response message of their stream
    seen_headers: set[int] = set()
    for f in p.s2c_log:
        if f.HasField("response_headers"):
            assert f.stream_id not in seen_headers
            seen_headers.add(f.stream_id)
        if f.HasField("response_message"):
            assert f.stream_id in seen_headers


def test_many_sequential_unary_calls_reuse_nothing() -> None:
    p = Pair(server={"receive_window": 4096})
    calls = run_calls(p, [(UNARY, [payload(i * 97, i)], 1) for i in range(100)])
    assert len(calls) == 100
    for sid, call in calls.items():
        check_call(sid, call, 1)
