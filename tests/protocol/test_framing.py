"""Framing: chunking, reassembly, and the per-stream framing errors that fail one
stream while the tunnel keeps working."""

from __future__ import annotations

import pytest

from grpctunnel.protocol import (
    CallingConnection,
    Code,
    ConnectionConfig,
    HalfClosed,
    HeadersReceived,
    MessageReceived,
    ServingConnection,
    StreamCancelled,
    StreamClosed,
    StreamFailed,
    StreamOpened,
)

from .harness import (
    C2S,
    S2C,
    c2s_window,
    cancel,
    chunk_of,
    close,
    data_bytes,
    half_close,
    headers,
    kind,
    kinds,
    more_req,
    more_resp,
    new_stream,
    open_on_wire,
    payload,
    ready_client,
    req,
    resp,
    s2c_window,
    serving_with_stream,
)

# -- outbound chunking ---------------------------------------------------------------------


def test_zero_length_message_is_one_frame_each_way() -> None:
    c = ready_client()
    sid, _ = open_on_wire(c)
    assert c.send_message(sid, b"")
    frames = c.take_frames()
    assert kinds(frames) == [(sid, "request_message")]
    assert frames[0].request_message.size == 0 and frames[0].request_message.data == b""

    s = serving_with_stream(1)
    assert s.receive(frames[0]) == [MessageReceived(1, b"")]
    assert s.send_message(1, b"")
    out = [f for f in s.take_frames() if kind(f) != "response_headers"]
    assert kinds(out) == [(1, "response_message")]
    assert out[0].response_message.size == 0
    assert c.receive(out[0]) == [MessageReceived(sid, b"")]


def test_zero_length_message_needs_no_credit() -> None:
    c = ready_client(window=10)
    sid, _ = open_on_wire(c)
    c.send_message(sid, b"0123456789")
    assert data_bytes(c.take_frames()) == b"0123456789"
    assert c.send_message(sid, b"")
    frames = c.take_frames()
    assert kinds(frames) == [(sid, "request_message")]
    # but a non-empty message behind it waits
    c.send_message(sid, b"x")
    c.send_message(sid, b"")
    assert c.take_frames() == []


@pytest.mark.parametrize(
    ("size", "chunk"), [(1, 1), (5000, 1000), (5001, 1000), (999, 1000), (100_000, 16384)]
)
def test_message_split_into_chunks_of_at_most_chunk_size(size: int, chunk: int) -> None:
    c = ready_client(window=1 << 20, max_chunk_size=chunk)
    sid, _ = open_on_wire(c)
    data = payload(size)
    c.send_message(sid, data)
    frames = c.take_frames()
    assert kind(frames[0]) == "request_message"
    assert frames[0].request_message.size == size
    assert all(kind(f) == "more_request_data" for f in frames[1:])
    chunks = [chunk_of(f) for f in frames]
    assert all(c is not None and 0 < len(c) <= chunk for c in chunks)
    assert len(frames) == -(-size // chunk)
    assert data_bytes(frames) == data


def test_chunks_bounded_by_window_and_chunk_size() -> None:
    c = ready_client(window=3000, max_chunk_size=1000)
    sid, _ = open_on_wire(c)
    data = payload(10_000)
    c.send_message(sid, data)
    frames = c.take_frames()
    assert [len(chunk_of(f) or b"") for f in frames] == [1000, 1000, 1000]
    assert c.queued_bytes(sid) == 7000
    assert c.receive(s2c_window(sid, 1500)) == []
    assert [len(chunk_of(f) or b"") for f in c.take_frames()] == [1000, 500]
    assert c.receive(s2c_window(sid, 700)) == []
    assert [len(chunk_of(f) or b"") for f in c.take_frames()] == [700]
    assert c.queued_bytes(sid) == 4800


def test_window_smaller_than_chunk_limit() -> None:
    c = ready_client(window=700, max_chunk_size=1000)
    sid, _ = open_on_wire(c)
    c.send_message(sid, payload(2000))
    assert [len(chunk_of(f) or b"") for f in c.take_frames()] == [700]


def test_serving_side_chunks_by_callers_window() -> None:
    s = serving_with_stream(1, window=2500, max_chunk_size=1000)
    s.send_headers(1, headers(1).response_headers)
    s.send_message(1, payload(4000))
    frames = s.take_frames()
    assert [len(chunk_of(f) or b"") for f in frames if chunk_of(f) is not None] == [1000, 1000, 500]
    s.receive(c2s_window(1, 10_000))
    assert [len(chunk_of(f) or b"") for f in s.take_frames()] == [1000, 500]


# -- inbound reassembly -----------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 997, 16384])
def test_reassembly_of_many_chunks_is_identical(chunk: int) -> None:
    s = serving_with_stream(1, max_receive_message_size=None, receive_window=1 << 20)
    data = payload(50_000, chunk)
    evs = s.receive(req(1, data[:chunk], size=len(data)))
    for i in range(chunk, len(data), chunk):
        assert evs == []
        evs = s.receive(more_req(1, data[i : i + chunk]))
        s.take_frames()
    assert evs == [MessageReceived(1, data)]


def test_reassembly_tolerates_empty_chunks() -> None:
    c = ready_client()
    sid, _ = open_on_wire(c)
    assert c.receive(resp(sid, b"", size=6)) == []
    assert c.receive(more_resp(sid, b"")) == []
    assert c.receive(more_resp(sid, b"abc")) == []
    assert c.receive(more_resp(sid, b"")) == []
    assert c.receive(more_resp(sid, b"def")) == [MessageReceived(sid, b"abcdef")]


# -- framing errors: serving side ------------------------------------------------------------


SERVING_FRAMING_ERRORS: dict[str, list[C2S]] = {
    "new-message-before-previous-complete": [req(1, b"ab", size=5), req(1, b"cde")],
    "more-bytes-than-size-first-chunk": [req(1, b"abcdef", size=3)],
    "more-bytes-than-size-later-chunk": [req(1, b"ab", size=3), more_req(1, b"cd")],
    "more-data-without-message": [more_req(1, b"xyz")],
    "more-data-after-complete-message": [req(1, b"abc"), more_req(1, b"x")],
    "empty-more-data-without-message": [more_req(1, b"")],
    "half-close-mid-message": [req(1, b"ab", size=5), half_close(1)],
}


@pytest.mark.parametrize(
    "frames", SERVING_FRAMING_ERRORS.values(), ids=SERVING_FRAMING_ERRORS.keys()
)
def test_serving_framing_error_fails_only_that_stream(frames: list[C2S]) -> None:
    s = serving_with_stream(1)
    s.receive(new_stream(3))
    s.accept_stream(3, request_streaming=True)
    s.send_message(1, payload(100))
    s.take_frames()
    s.send_message(1, payload(100))  # queued response data is dropped by the failure
    evs = []
    for f in frames:
        evs += s.receive(f)
    failed = [e for e in evs if isinstance(e, StreamFailed)]
    assert len(failed) == 1
    assert failed[0].stream_id == 1 and failed[0].code == Code.INVALID_ARGUMENT
    assert failed[0].message
    out = s.take_frames()
    assert kinds(out) == [(1, "close_stream")]
    assert out[0].close_stream.status.code == Code.INVALID_ARGUMENT
    assert out[0].close_stream.status.message == failed[0].message
    assert not s.has_stream(1)
    # later frames of the failed stream are dropped, the other stream works
    assert s.receive(more_req(1, b"late")) == []
    assert s.receive(req(1, b"late")) == []
    assert s.receive(req(3, b"fine")) == [MessageReceived(3, b"fine")]
    assert s.receive(half_close(3)) == [HalfClosed(3)]
    assert [type(e) for e in s.receive(new_stream(5))] == [StreamOpened]


def test_serving_second_request_on_unary_request_method_fails_stream() -> None:
    s = serving_with_stream(1, request_streaming=False)
    assert s.receive(req(1, b"one")) == [MessageReceived(1, b"one")]
    evs = s.receive(req(1, b"two"))
    assert [(type(e), e.stream_id, e.code) for e in evs] == [
        (StreamFailed, 1, Code.INVALID_ARGUMENT)
    ]  # type: ignore[union-attr]
    frames = s.take_frames()
    assert frames[-1].close_stream.status.code == Code.INVALID_ARGUMENT

    s = serving_with_stream(1, request_streaming=True)
    for i in range(5):
        assert s.receive(req(1, b"%d" % i)) == [MessageReceived(1, b"%d" % i)]


@pytest.mark.parametrize(
    "late",
    [req(1, b"x"), req(1, b""), more_req(1, b"x"), half_close(1)],
    ids=["message", "empty-message", "more-data", "half-close"],
)
def test_serving_frames_after_half_close_fail_stream(late: C2S) -> None:
    s = serving_with_stream(1)
    assert s.receive(half_close(1)) == [HalfClosed(1)]
    evs = s.receive(late)
    assert len(evs) == 1 and isinstance(evs[0], StreamFailed)
    assert evs[0].code == Code.INVALID_ARGUMENT
    assert s.take_frames()[-1].close_stream.status.code == Code.INVALID_ARGUMENT


def test_serving_cancel_and_window_update_after_half_close_are_fine() -> None:
    s = serving_with_stream(1, window=10)
    s.receive(half_close(1))
    s.send_message(1, payload(30))
    s.take_frames()
    assert s.receive(c2s_window(1, 20)) == []
    assert data_bytes(s.take_frames()) == payload(30)[10:30]
    assert s.receive(cancel(1)) == [StreamCancelled(1)]


# -- framing errors: calling side ------------------------------------------------------------


CALLING_FRAMING_ERRORS: dict[str, list[S2C]] = {
    "new-message-before-previous-complete": [resp(1, b"ab", size=5), resp(1, b"cde")],
    "more-bytes-than-size-first-chunk": [resp(1, b"abcdef", size=3)],
    "more-bytes-than-size-later-chunk": [resp(1, b"ab", size=3), more_resp(1, b"cd")],
    "more-data-without-message": [more_resp(1, b"xyz")],
    "more-data-after-complete-message": [resp(1, b"abc"), more_resp(1, b"x")],
    "headers-twice": [headers(1), headers(1)],
    "headers-after-message": [resp(1, b"abc"), headers(1)],
    "ok-close-mid-message": [resp(1, b"ab", size=5), close(1)],
}


@pytest.mark.parametrize(
    "frames", CALLING_FRAMING_ERRORS.values(), ids=CALLING_FRAMING_ERRORS.keys()
)
def test_calling_framing_error_fails_only_that_stream(frames: list[S2C]) -> None:
    c = ready_client()
    a, _ = open_on_wire(c)
    b, _ = open_on_wire(c)
    assert a == 1
    c.send_message(a, payload(100_000))  # queued request data is dropped by the failure
    c.take_frames()
    c.send_message(a, payload(10))
    evs = []
    for f in frames:
        evs += c.receive(f)
    failed = [e for e in evs if isinstance(e, StreamFailed)]
    assert len(failed) == 1
    assert failed[0].stream_id == a and failed[0].code == Code.INTERNAL
    assert kinds(c.take_frames()) == [(a, "cancel")]
    assert not c.has_stream(a)
    assert c.queued_bytes(a) == 0
    # late frames for the failed stream are dropped, the other stream works
    assert c.receive(more_resp(a, b"x")) == []
    assert c.receive(close(a, Code.INTERNAL)) == []
    assert c.receive(headers(b)) == [HeadersReceived(b, headers(b).response_headers)]
    assert c.receive(resp(b, b"fine")) == [MessageReceived(b, b"fine")]
    assert [type(e) for e in c.receive(close(b))] == [StreamClosed]
    assert c.open_stream("/a.B/C") == 3


def test_calling_error_close_mid_message_is_a_close() -> None:
    c = ready_client()
    sid, _ = open_on_wire(c)
    c.receive(resp(sid, b"ab", size=5))
    (e,) = c.receive(close(sid, Code.ABORTED, "gone"))
    assert isinstance(e, StreamClosed)
    assert e.status is not None and e.status.code == Code.ABORTED and e.status.message == "gone"
    assert c.take_frames() == []


def test_calling_second_response_on_unary_response_fails_stream() -> None:
    c = ready_client()
    sid, _ = open_on_wire(c, response_streaming=False)
    assert c.receive(resp(sid, b"one")) == [MessageReceived(sid, b"one")]
    (e,) = c.receive(resp(sid, b"two"))
    assert isinstance(e, StreamFailed) and e.code == Code.INTERNAL
    assert kinds(c.take_frames()) == [(sid, "cancel")]

    c = ready_client()
    sid, _ = open_on_wire(c, response_streaming=True)
    for i in range(5):
        assert c.receive(resp(sid, b"%d" % i)) == [MessageReceived(sid, b"%d" % i)]


def test_calling_send_after_half_close_refused() -> None:
    c = ready_client()
    sid, _ = open_on_wire(c)
    c.send_message(sid, b"a")
    c.half_close(sid)
    c.half_close(sid)
    assert not c.send_message(sid, b"b")
    assert kinds(c.take_frames()) == [(sid, "request_message"), (sid, "half_close")]


@pytest.mark.parametrize("conn", ["calling", "serving"])
def test_tunnel_survives_many_failed_streams(conn: str) -> None:
    if conn == "calling":
        c = ready_client()
        out = []
        for _ in range(50):
            sid, frames = open_on_wire(c)
            out += frames
            assert isinstance(c.receive(more_resp(sid, b"x"))[0], StreamFailed)
        out += c.take_frames()
        assert c.active_streams == 0
        assert [k for _, k in kinds(out)] == ["new_stream"] + ["cancel", "new_stream"] * 49 + [
            "cancel"
        ]
    else:
        s = ServingConnection(ConnectionConfig(negotiated=False))
        for sid in range(1, 51):
            s.receive(new_stream(sid, revision=0))
            assert isinstance(s.receive(more_req(sid, b"x"))[0], StreamFailed)
        assert len(s.take_frames()) == 100
        assert s.active_streams == 0


def test_calling_connection_max_chunk_validation() -> None:
    with pytest.raises(ValueError):
        CallingConnection(ConnectionConfig(negotiated=False, max_chunk_size=0))
    with pytest.raises(ValueError):
        CallingConnection(ConnectionConfig(negotiated=False, receive_window=0))
    with pytest.raises(ValueError):
        ServingConnection(ConnectionConfig(negotiated=False, receive_window=2**32))
