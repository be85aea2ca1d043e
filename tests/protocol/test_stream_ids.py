"""Stream id rules: allocation, ordering, unknown ids, finished ids, rejected streams."""

from __future__ import annotations

import pytest

from grpctunnel.protocol import (
    CallingConnection,
    Code,
    ConnectionConfig,
    HalfClosed,
    MessageReceived,
    ProtocolError,
    ServingConnection,
    StreamCancelled,
    StreamClosed,
    StreamOpened,
    UsageError,
)

from .harness import (
    C2S,
    METHOD,
    S2C,
    c2s_window,
    cancel,
    close,
    half_close,
    headers,
    kinds,
    more_req,
    more_resp,
    new_stream,
    open_on_wire,
    ready_client,
    req,
    resp,
    s2c_window,
    serving_with_stream,
)


def serving() -> ServingConnection:
    s = ServingConnection(ConnectionConfig(negotiated=True))
    s.start()
    s.take_frames()
    return s


def late_c2s(sid: int) -> list[C2S]:
    return [
        req(sid, b"abc"),
        more_req(sid, b"def"),
        req(sid, b"", size=10),
        more_req(sid, b"x" * 100),
        half_close(sid),
        c2s_window(sid, 1000),
        req(sid, b"again"),
        cancel(sid),
        cancel(sid),
    ]


# -- the calling side allocates ---------------------------------------------------------


def test_calling_allocates_increasing_ids_from_one() -> None:
    c = ready_client()
    ids = [c.open_stream(METHOD) for _ in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    c.cancel(3)
    assert c.open_stream(METHOD) == 6  # never reused
    assert [f.stream_id for f in c.take_frames()] == [1, 2, 4, 5, 6]


@pytest.mark.parametrize(
    "method", ["", "/", "Method", "pkg.Service/Method", "/pkg.Service/", "//M", "/a/b/c", "/a b/c"]
)
def test_calling_refuses_malformed_method_names(method: str) -> None:
    c = ready_client()
    with pytest.raises(UsageError):
        c.open_stream(method)
    assert c.take_frames() == []
    assert c.open_stream(METHOD) == 1


# -- new_stream ids on the serving side ---------------------------------------------------


@pytest.mark.parametrize("sid", [0, -1, -5, -(2**63)])
def test_new_stream_with_non_positive_id_is_protocol_error(sid: int) -> None:
    with pytest.raises(ProtocolError) as exc:
        serving().receive(new_stream(sid))
    assert exc.value.code == Code.INVALID_ARGUMENT


@pytest.mark.parametrize(("first", "second"), [(1, 1), (5, 3), (5, 5), (2**62, 7)])
def test_new_stream_id_not_greater_than_every_seen_is_protocol_error(
    first: int, second: int
) -> None:
    s = serving()
    assert [type(e) for e in s.receive(new_stream(first))] == [StreamOpened]
    with pytest.raises(ProtocolError) as exc:
        s.receive(new_stream(second))
    assert exc.value.code == Code.INVALID_ARGUMENT
    assert "not greater" in exc.value.message


def test_new_stream_id_must_exceed_finished_ids_too() -> None:
    s = serving()
    s.receive(new_stream(4))
    s.receive(cancel(4))
    assert not s.has_stream(4)
    with pytest.raises(ProtocolError):
        s.receive(new_stream(4))
    with pytest.raises(ProtocolError):
        s.receive(new_stream(2))


def test_new_stream_ids_may_skip() -> None:
    s = serving()
    for sid in (1, 2, 10, 11, 1000, 2**62):
        assert [type(e) for e in s.receive(new_stream(sid))] == [StreamOpened]
    assert s.active_streams == 6


@pytest.mark.parametrize(
    "frame_of",
    [
        lambda i: req(i, b"x"),
        lambda i: more_req(i, b"x"),
        half_close,
        cancel,
        lambda i: c2s_window(i, 1),
    ],
)
def test_serving_frame_for_id_above_highest_is_protocol_error(frame_of: object) -> None:
    s = serving_with_stream(5)
    with pytest.raises(ProtocolError) as exc:
        s.receive(frame_of(6))  # type: ignore[operator]
    assert exc.value.code == Code.INVALID_ARGUMENT
    assert "never opened" in exc.value.message
    with pytest.raises(ProtocolError):
        serving().receive(frame_of(1))  # type: ignore[operator]


@pytest.mark.parametrize("sid", [0, -1, -(2**63)])
def test_serving_frame_for_non_positive_id_is_protocol_error(sid: int) -> None:
    s = serving_with_stream(5)
    for f in (req(sid, b"x"), cancel(sid), c2s_window(sid, 1), half_close(sid)):
        with pytest.raises(ProtocolError):
            s.receive(f)


def test_serving_frame_without_kind_is_protocol_error() -> None:
    s = serving_with_stream(1)
    with pytest.raises(ProtocolError) as exc:
        s.receive(C2S(stream_id=1))
    assert exc.value.code == Code.INVALID_ARGUMENT


def test_serving_drops_frames_for_finished_ids() -> None:
    s = serving_with_stream(1)
    s.receive(new_stream(3))
    s.accept_stream(3, request_streaming=True)
    s.close_stream(1, None)
    assert kinds(s.take_frames()) == [(1, "response_headers"), (1, "close_stream")]
    assert not s.has_stream(1)
    for f in late_c2s(1):
        assert s.receive(f) == []
    # a cancelled stream
    assert s.receive(cancel(3)) == [StreamCancelled(3)]
    for f in late_c2s(3):
        assert s.receive(f) == []
    # an id below the highest that was never opened (a gap) is treated as finished
    s.receive(new_stream(9))
    for f in late_c2s(7):
        assert s.receive(f) == []
    assert s.take_frames() == []
    assert s.active_streams == 1


def test_serving_drops_frames_while_close_is_queued() -> None:
    s = serving_with_stream(1)
    s.close_stream(1, None)
    for f in late_c2s(1)[:-2]:
        assert s.receive(f) == []
    assert kinds(s.take_frames()) == [(1, "response_headers"), (1, "close_stream")]


# -- rejected new_stream still uses its id -----------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "code"),
    [
        (new_stream(1, "bad"), Code.INVALID_ARGUMENT),
        (new_stream(1, ""), Code.INVALID_ARGUMENT),
        (new_stream(1, "/only.Service"), Code.INVALID_ARGUMENT),
        (new_stream(1, "/a/b/c"), Code.INVALID_ARGUMENT),
        (new_stream(1, "pkg.Svc/M"), Code.INVALID_ARGUMENT),
        (new_stream(1, revision=7), Code.UNAVAILABLE),
        (new_stream(1, revision=2**31 - 1), Code.UNAVAILABLE),
    ],
    ids=["bad", "empty", "no-method", "three-parts", "no-slash", "revision-7", "revision-huge"],
)
@pytest.mark.parametrize("flush_first", [False, True])
def test_rejected_new_stream_counts_as_used(ns: C2S, code: Code, flush_first: bool) -> None:
    s = serving()
    assert s.receive(ns) == []  # no StreamOpened: nothing for the application
    if flush_first:
        frames = s.take_frames()
        assert kinds(frames) == [(1, "response_headers"), (1, "close_stream")]
        assert frames[1].close_stream.status.code == code
    for f in late_c2s(1):
        assert s.receive(f) == []
    if not flush_first:
        frames = s.take_frames()
        # the stream may have been cancelled before its close went out; if the close
        # went out it carries the rejection
        for f in frames:
            if f.HasField("close_stream"):
                assert f.close_stream.status.code == code
    assert s.take_frames() == []
    with pytest.raises(ProtocolError):
        s.receive(new_stream(1))
    # the tunnel lives on
    assert [type(e) for e in s.receive(new_stream(2))] == [StreamOpened]


def test_rejected_stream_close_goes_out_and_late_frames_do_not_end_tunnel() -> None:
    s = serving()
    s.receive(new_stream(1, ""))
    s.receive(req(1, b"hello"))
    s.receive(half_close(1))
    frames = s.take_frames()
    assert kinds(frames) == [(1, "response_headers"), (1, "close_stream")]
    assert frames[1].close_stream.status.code == Code.INVALID_ARGUMENT
    assert "malformed method name" in frames[1].close_stream.status.message


# -- the calling side checks ids too ----------------------------------------------------------


@pytest.mark.parametrize(
    "frame_of",
    [
        headers,
        lambda i: resp(i, b"x"),
        lambda i: more_resp(i, b"x"),
        close,
        lambda i: s2c_window(i, 1),
    ],
)
def test_calling_frame_for_unknown_id_is_protocol_error(frame_of: object) -> None:
    c = ready_client()
    open_on_wire(c)
    for sid in (2, 0, -1, -7, 2**62):
        with pytest.raises(ProtocolError) as exc:
            c.receive(frame_of(sid))  # type: ignore[operator]
        assert exc.value.code == Code.INTERNAL


def test_calling_frame_for_stream_not_yet_on_wire_is_protocol_error() -> None:
    c = ready_client()
    sid = c.open_stream(METHOD)  # new_stream not yet taken
    with pytest.raises(ProtocolError):
        c.receive(headers(sid))


def test_calling_frame_without_kind_is_protocol_error() -> None:
    c = ready_client()
    sid, _ = open_on_wire(c)
    with pytest.raises(ProtocolError):
        c.receive(S2C(stream_id=sid))


def test_calling_drops_frames_for_finished_ids() -> None:
    c = ready_client()
    a, _ = open_on_wire(c)
    b, _ = open_on_wire(c)
    assert [type(e) for e in c.receive(close(a))] == [StreamClosed]
    c.cancel(b)
    assert kinds(c.take_frames()) == [(b, "cancel")]
    for sid in (a, b):
        for f in (
            headers(sid),
            resp(sid, b"late"),
            more_resp(sid, b"x"),
            s2c_window(sid, 5),
            close(sid),
        ):
            assert c.receive(f) == []
    assert c.take_frames() == []
    # a stream cancelled before its new_stream went out is finished too
    d = c.open_stream(METHOD)
    c.cancel(d)
    assert c.take_frames() == []
    assert c.receive(close(d)) == []


def test_serving_events_name_their_stream() -> None:
    s = serving()
    s.receive(new_stream(1))
    s.accept_stream(1, request_streaming=True)
    assert s.receive(req(1, b"abc")) == [MessageReceived(1, b"abc")]
    assert s.receive(half_close(1)) == [HalfClosed(1)]


def test_calling_connection_not_negotiated_id_rules() -> None:
    c = CallingConnection(ConnectionConfig(negotiated=False))
    sid, _ = open_on_wire(c)
    with pytest.raises(ProtocolError):
        c.receive(headers(sid + 1))
    assert c.receive(close(sid))
    assert c.receive(close(sid)) == []
