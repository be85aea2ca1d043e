"""Response headers, close ordering, and cancellation."""

from __future__ import annotations

import pytest

from grpctunnel.protocol import (
    Code,
    HalfClosed,
    HeadersReceived,
    MessageReceived,
    StreamCancelled,
    StreamClosed,
    StreamFailed,
)

from .harness import (
    METHOD,
    Pair,
    c2s_window,
    cancel,
    close,
    data_bytes,
    half_close,
    headers,
    kind,
    kinds,
    md,
    more_req,
    more_resp,
    open_on_wire,
    payload,
    ready_client,
    req,
    resp,
    s2c_window,
    serving_with_stream,
    status,
)

# -- headers ---------------------------------------------------------------------------


def test_headers_at_most_once() -> None:
    s = serving_with_stream(1)
    assert s.send_headers(1, md(a="1"))
    assert not s.send_headers(1, md(b="2"))
    s.close_stream(1, None)
    frames = s.take_frames()
    assert kinds(frames) == [(1, "response_headers"), (1, "close_stream")]
    assert dict(frames[0].response_headers.md)["a"].val == ["1"]


def test_headers_go_before_messages() -> None:
    s = serving_with_stream(1)
    s.send_headers(1, md(x="y"))
    s.send_message(1, b"one")
    s.send_message(1, b"two")
    frames = s.take_frames()
    assert kinds(frames) == [
        (1, "response_headers"),
        (1, "response_message"),
        (1, "response_message"),
    ]


def test_headers_never_follow_a_message() -> None:
    """PROTOCOL.md: response_headers are sent "at most once, before any response
    message". Headers asked for after a message was queued must not go out after it
    (our own calling side fails a stream that receives headers after a message)."""
    s = serving_with_stream(1)
    s.send_message(1, b"first")
    late = s.send_headers(1, md(x="y"))
    s.close_stream(1, None)
    frames = s.take_frames()
    order = [k for _, k in kinds(frames)]
    assert order.count("response_headers") <= 1
    if "response_headers" in order:
        assert order.index("response_headers") < order.index("response_message"), (late, order)
    # and the calling side sees a well-formed stream
    c = ready_client()
    sid, _ = open_on_wire(c)
    assert sid == 1
    evs = [e for f in frames for e in c.receive(f)]
    assert not [e for e in evs if isinstance(e, StreamFailed)], evs


def test_message_without_headers_is_well_formed() -> None:
    s = serving_with_stream(1)
    s.send_message(1, b"a")
    s.send_message(1, b"b")
    s.close_stream(1, None)
    frames = s.take_frames()
    assert [k for _, k in kinds(frames)] == [
        "response_headers",
        "response_message",
        "response_message",
        "close_stream",
    ]
    c = ready_client()
    open_on_wire(c)
    evs = [e for f in frames for e in c.receive(f)]
    assert [type(e) for e in evs] == [
        HeadersReceived,
        MessageReceived,
        MessageReceived,
        StreamClosed,
    ]


def test_headers_never_sent_go_out_empty_just_before_close() -> None:
    s = serving_with_stream(1)
    s.close_stream(1, status(Code.NOT_FOUND, "nope"), md(t="v"))
    frames = s.take_frames()
    assert kinds(frames) == [(1, "response_headers"), (1, "close_stream")]
    assert len(frames[0].response_headers.md) == 0
    cs = frames[1].close_stream
    assert cs.status.code == Code.NOT_FOUND and cs.status.message == "nope"
    assert list(cs.response_trailers.md["t"].val) == ["v"]


def test_headers_sent_are_not_repeated_before_close() -> None:
    s = serving_with_stream(1)
    s.send_headers(1, md(h="1"))
    assert kinds(s.take_frames()) == [(1, "response_headers")]
    s.send_message(1, b"m")
    s.close_stream(1, None)
    assert kinds(s.take_frames()) == [(1, "response_message"), (1, "close_stream")]


def test_close_without_status_means_ok() -> None:
    s = serving_with_stream(1)
    s.close_stream(1, None)
    frames = s.take_frames()
    assert not frames[-1].close_stream.HasField("status")
    c = ready_client()
    open_on_wire(c)
    evs = [e for f in frames for e in c.receive(f)]
    assert [type(e) for e in evs] == [HeadersReceived, StreamClosed]
    closed = evs[-1]
    assert isinstance(closed, StreamClosed) and closed.status is None


@pytest.mark.parametrize("queue", ["send_headers", "send_message"])
def test_queued_headers_still_precede_close_when_stream_fails(queue: str) -> None:
    """PROTOCOL.md: headers never sent go out (possibly empty) just before
    close_stream. Here the handler queued headers (explicitly, or implicitly with its
    first message), then the caller broke framing before they were framed: the
    failure's close_stream must still be preceded by headers."""
    s = serving_with_stream(1)
    if queue == "send_headers":
        assert s.send_headers(1, md(h="1"))
    else:
        assert s.send_message(1, b"reply")
    (e,) = s.receive(more_req(1, b"no message in progress"))
    assert isinstance(e, StreamFailed)
    frames = s.take_frames()
    assert [k for _, k in kinds(frames)] == ["response_headers", "close_stream"], kinds(frames)


def test_headers_after_close_refused() -> None:
    s = serving_with_stream(1)
    s.close_stream(1, None)
    assert not s.send_headers(1, md())
    assert not s.send_message(1, b"x")
    assert not s.close_stream(1, status(Code.INTERNAL))
    frames = s.take_frames()
    assert kinds(frames) == [(1, "response_headers"), (1, "close_stream")]
    assert not frames[1].close_stream.HasField("status")
    assert not s.send_headers(1, md())
    assert not s.close_stream(1, None)


# -- close / half-close ordering ----------------------------------------------------------


def test_close_goes_out_after_queued_messages() -> None:
    s = serving_with_stream(1, window=1000, max_chunk_size=400)
    s.send_message(1, payload(2500, 1))
    s.send_message(1, b"")
    s.close_stream(1, status(Code.OK), md(t="x"))
    frames = s.take_frames()
    assert [k for _, k in kinds(frames)][-1] == "more_response_data"  # blocked on window
    assert s.has_stream(1)
    got = frames
    while s.has_stream(1):
        s.receive(c2s_window(1, 1000))
        got += s.take_frames()
    ks = [k for _, k in kinds(got)]
    assert ks[0] == "response_headers"
    assert ks[-2:] == ["response_message", "close_stream"]
    assert data_bytes(got) == payload(2500, 1)


def test_half_close_goes_out_after_queued_messages() -> None:
    c = ready_client(window=100, max_chunk_size=60)
    sid, _ = open_on_wire(c)
    c.send_message(sid, payload(250))
    c.half_close(sid)
    got = c.take_frames()
    assert "half_close" not in [k for _, k in kinds(got)]
    for _ in range(5):
        c.receive(s2c_window(sid, 100))
        got += c.take_frames()
    ks = [k for _, k in kinds(got)]
    assert ks.count("half_close") == 1 and ks[-1] == "half_close"
    assert data_bytes(got) == payload(250)


def test_close_on_pair_delivers_trailers_and_status_details() -> None:
    p = Pair()
    p.handshake()
    sid = p.client.open_stream(METHOD)
    p.pump()
    st = status(Code.FAILED_PRECONDITION, "rich")
    st.details.add().Pack(md(k="v"))
    p.server.close_stream(sid, st, md(trailer_bin="abc"))
    p.pump()
    (closed,) = [e for e in p.client_events if isinstance(e, StreamClosed)]
    assert closed.status == st
    assert list(closed.trailers.md["trailer-bin"].val) == ["abc"]


# -- cancel -------------------------------------------------------------------------------------


def test_cancel_drops_queued_data() -> None:
    c = ready_client(window=1000)
    sid, _ = open_on_wire(c)
    c.send_message(sid, payload(5000))
    c.take_frames()
    assert c.queued_bytes(sid) == 4000
    c.send_message(sid, b"more")
    c.half_close(sid)
    c.cancel(sid)
    assert c.queued_bytes(sid) == 0
    assert not c.has_stream(sid)
    assert kinds(c.take_frames()) == [(sid, "cancel")]
    c.receive(s2c_window(sid, 10_000))  # dropped: no data resumes
    assert c.take_frames() == []
    c.cancel(sid)  # twice: nothing more
    assert c.take_frames() == []
    assert not c.send_message(sid, b"x")


def test_no_cancel_frame_if_new_stream_never_framed() -> None:
    c = ready_client()
    sid = c.open_stream(METHOD)
    c.send_message(sid, b"data")
    c.cancel(sid)
    assert c.take_frames() == []
    assert not c.wants_to_send()


def test_late_frames_after_cancel_are_dropped() -> None:
    c = ready_client()
    sid, _ = open_on_wire(c)
    c.receive(resp(sid, b"ab", size=10))
    c.cancel(sid)
    for f in (
        more_resp(sid, b"cd"),
        resp(sid, b"x"),
        headers(sid),
        s2c_window(sid, 1),
        close(sid),
        close(sid, Code.CANCELLED),
    ):
        assert c.receive(f) == []
    assert kinds(c.take_frames()) == [(sid, "cancel")]


def test_serving_cancel_drops_queued_responses() -> None:
    s = serving_with_stream(1, window=100)
    s.send_message(1, payload(1000))
    s.take_frames()
    s.send_message(1, b"next")
    assert s.receive(cancel(1)) == [StreamCancelled(1)]
    assert s.take_frames() == []
    assert not s.has_stream(1)
    assert not s.send_message(1, b"x")
    assert not s.close_stream(1, None)
    s.receive(c2s_window(1, 1000))
    assert s.take_frames() == []


def test_serving_cancel_mid_message() -> None:
    s = serving_with_stream(1)
    assert s.receive(req(1, b"ab", size=10)) == []
    assert s.receive(cancel(1)) == [StreamCancelled(1)]
    assert s.receive(more_req(1, b"cd")) == []


def test_serving_cancel_after_close_queued_reports_nothing() -> None:
    s = serving_with_stream(1)
    s.close_stream(1, None)
    assert s.receive(cancel(1)) == []
    assert not s.has_stream(1)


def test_cancel_round_trip_on_pair() -> None:
    p = Pair()
    p.handshake()
    sid = p.client.open_stream(METHOD)
    p.client.send_message(sid, b"hi")
    p.pump()
    p.client.cancel(sid)
    p.server.send_message(sid, b"too late")
    p.pump()
    assert StreamCancelled(sid) in p.server_events
    assert not p.server.has_stream(sid)
    assert not [e for e in p.client_events if getattr(e, "stream_id", None) == sid]
    assert [e for e in p.server_events_for(sid)] == [
        p.server_events_for(sid)[0],
        MessageReceived(sid, b"hi"),
        StreamCancelled(sid),
    ]


def test_serving_half_close_event() -> None:
    s = serving_with_stream(1)
    assert s.receive(req(1, b"x")) == [MessageReceived(1, b"x")]
    assert s.receive(half_close(1)) == [HalfClosed(1)]
    s.send_message(1, b"reply")
    s.close_stream(1, None)
    assert [kind(f) for f in s.take_frames()] == [
        "response_headers",
        "response_message",
        "close_stream",
    ]
