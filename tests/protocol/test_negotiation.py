"""Negotiation: the settings frame, revision choice, and revision zero."""

from __future__ import annotations

import pytest

from grpctunnel.protocol import (
    DEFAULT_WINDOW,
    SUPPORTED_REVISIONS,
    TUNNEL_STREAM_ID,
    CallingConnection,
    Code,
    ConnectionConfig,
    HalfClosed,
    MessageReceived,
    ProtocolError,
    ServingConnection,
    SettingsReceived,
    StreamOpened,
    UsageError,
)

from .harness import (
    METHOD,
    S2C,
    Pair,
    c2s_window,
    close,
    headers,
    kind,
    kinds,
    new_stream,
    open_on_wire,
    payload,
    ready_client,
    req,
    resp,
    s2c_window,
    settings,
)

# -- the serving side sends settings ------------------------------------------------------


def test_serving_negotiated_sends_settings_first_on_stream_minus_one() -> None:
    s = ServingConnection(ConnectionConfig(negotiated=True, receive_window=12345))
    assert not s.wants_to_send()
    s.start()
    s.start()  # idempotent
    frames = s.take_frames()
    assert len(frames) == 1
    (f,) = frames
    assert f.stream_id == TUNNEL_STREAM_ID == -1
    assert kind(f) == "settings"
    assert list(f.settings.supported_protocol_revisions) == [0, 1]
    assert f.settings.initial_window_size == 12345
    assert SUPPORTED_REVISIONS == (0, 1)
    assert s.take_frames() == []


def test_serving_settings_precede_every_stream_frame() -> None:
    s = ServingConnection(ConnectionConfig(negotiated=True))
    s.start()
    s.receive(new_stream(1))
    s.accept_stream(1, request_streaming=True)
    s.send_headers(1, headers(1).response_headers)
    s.close_stream(1, None)
    frames = s.take_frames()
    assert kinds(frames) == [(-1, "settings"), (1, "response_headers"), (1, "close_stream")]


def test_serving_not_negotiated_sends_no_settings() -> None:
    s = ServingConnection(ConnectionConfig(negotiated=False))
    s.start()
    assert s.take_frames() == []
    assert not s.wants_to_send()


def test_serving_settings_list_its_own_revisions() -> None:
    s = ServingConnection(ConnectionConfig(negotiated=True, supported_revisions=(1, 0, 1)))
    s.start()
    (f,) = s.take_frames()
    assert list(f.settings.supported_protocol_revisions) == [0, 1]


# -- the calling side waits for settings ---------------------------------------------------


def test_calling_negotiated_waits_for_settings() -> None:
    c = CallingConnection(ConnectionConfig(negotiated=True))
    assert not c.ready
    with pytest.raises(UsageError):
        c.open_stream(METHOD)
    evs = c.receive(settings((0, 1), 40000))
    assert evs == [SettingsReceived((0, 1), 40000)]
    assert c.ready
    assert c.revision == 1
    assert c.peer_window == 40000
    assert c.open_stream(METHOD) == 1


@pytest.mark.parametrize(
    "frame",
    [
        headers(1),
        resp(1, b"x"),
        close(1),
        s2c_window(1, 10),
        s2c_window(-1, 10),
        S2C(),
    ],
    ids=["headers", "message", "close", "window", "window-on-tunnel", "empty-frame"],
)
def test_calling_frame_before_settings_is_protocol_error(frame: object) -> None:
    c = CallingConnection(ConnectionConfig(negotiated=True))
    with pytest.raises(ProtocolError) as exc:
        c.receive(frame)  # type: ignore[arg-type]
    assert exc.value.code == Code.INTERNAL
    assert "settings" in exc.value.message


@pytest.mark.parametrize("sid", [0, 1, -2, 2**62])
def test_settings_on_another_stream_id_is_protocol_error(sid: int) -> None:
    c = CallingConnection(ConnectionConfig(negotiated=True))
    with pytest.raises(ProtocolError) as exc:
        c.receive(settings(sid=sid))
    assert "-1" in exc.value.message
    # also once the tunnel is up, and also without negotiation
    c = ready_client()
    with pytest.raises(ProtocolError):
        c.receive(settings(sid=sid))
    with pytest.raises(ProtocolError):
        CallingConnection(ConnectionConfig(negotiated=False)).receive(settings(sid=sid))


def test_settings_with_empty_revision_list_is_protocol_error() -> None:
    c = CallingConnection(ConnectionConfig(negotiated=True))
    with pytest.raises(ProtocolError) as exc:
        c.receive(settings(revisions=()))
    assert "no protocol revisions" in exc.value.message
    assert exc.value.code != Code.OK
    assert not c.ready


@pytest.mark.parametrize(
    ("ours", "theirs"), [((0, 1), (5,)), ((1,), (0,)), ((0,), (1, 2)), ((0, 1), (2, 3, 7))]
)
def test_no_common_revision_is_protocol_error(
    ours: tuple[int, ...], theirs: tuple[int, ...]
) -> None:
    c = CallingConnection(ConnectionConfig(negotiated=True, supported_revisions=ours))
    with pytest.raises(ProtocolError) as exc:
        c.receive(settings(revisions=theirs))
    assert "in common" in exc.value.message
    assert not c.ready


@pytest.mark.parametrize(
    ("ours", "theirs", "chosen"),
    [
        ((0, 1), (0, 1), 1),
        ((0, 1), (1, 0), 1),
        ((0, 1), (0,), 0),
        ((0,), (0, 1), 0),
        ((0, 1), (1, 7), 1),
        ((1,), (1,), 1),
    ],
)
def test_highest_common_revision_is_chosen(
    ours: tuple[int, ...], theirs: tuple[int, ...], chosen: int
) -> None:
    c = CallingConnection(
        ConnectionConfig(negotiated=True, supported_revisions=ours, receive_window=5000)
    )
    c.receive(settings(revisions=theirs))
    assert c.revision == chosen
    _, frames = open_on_wire(c)
    (f,) = frames
    assert f.new_stream.protocol_revision == chosen
    assert f.new_stream.initial_window_size == (5000 if chosen == 1 else 0)


def test_settings_window_zero_means_default_window() -> None:
    c = ready_client(window=0)
    assert c.peer_window == DEFAULT_WINDOW
    sid, _ = open_on_wire(c)
    c.send_message(sid, payload(DEFAULT_WINDOW + 10))
    sent = sum(
        len(f.request_message.data or b"") + len(f.more_request_data) for f in c.take_frames()
    )
    assert sent == DEFAULT_WINDOW


def test_second_settings_frame_is_ignored() -> None:
    c = ready_client(window=100)
    assert c.receive(settings(revisions=(0,), window=5)) == []
    assert c.revision == 1
    assert c.peer_window == 100


def test_settings_on_not_negotiated_tunnel_are_ignored() -> None:
    c = CallingConnection(ConnectionConfig(negotiated=False))
    assert c.ready
    assert c.receive(settings()) == []
    assert c.revision == 0


# -- revision zero: not negotiated ----------------------------------------------------------


def test_not_negotiated_is_revision_zero_without_windows() -> None:
    c = CallingConnection(
        ConnectionConfig(negotiated=False, receive_window=100, max_chunk_size=1000)
    )
    assert c.ready and c.revision == 0
    sid, frames = open_on_wire(c, METHOD)
    (f,) = frames
    assert f.new_stream.protocol_revision == 0
    assert f.new_stream.initial_window_size == 0
    # sending is limited only by the chunk size, never by a window
    c.send_message(sid, payload(100_000))
    frames = c.take_frames()
    assert sum(len(x.request_message.data) + len(x.more_request_data) for x in frames) == 100_000
    assert all(len(x.request_message.data) + len(x.more_request_data) <= 1000 for x in frames)
    # receiving more than the advertised window is fine, and no window update goes out
    evs = c.receive(resp(sid, payload(5000)))
    assert [type(e) for e in evs] == [MessageReceived]
    c.message_consumed(sid)
    assert c.take_frames() == []
    # window updates from the peer are ignored
    assert c.receive(s2c_window(sid, 2**32 - 1)) == []
    assert c.receive(s2c_window(sid, 2**32 - 1)) == []


def test_negotiated_revision_zero_has_no_window_updates() -> None:
    c = ready_client(revisions=(0,), receive_window=100)
    sid, _ = open_on_wire(c)
    for i in range(5):
        c.receive(resp(sid, payload(1000, i)))
        c.message_consumed(sid)
    assert c.take_frames() == []


def test_serving_chooses_revision_per_stream() -> None:
    s = ServingConnection(
        ConnectionConfig(negotiated=True, receive_window=1000, max_chunk_size=100_000)
    )
    s.start()
    s.take_frames()
    assert [type(e) for e in s.receive(new_stream(1, revision=0))] == [StreamOpened]
    assert s.receive(new_stream(3, revision=1, window=500))[0] == StreamOpened(
        3, METHOD, new_stream(3).new_stream.request_headers, 1
    )
    s.accept_stream(1, request_streaming=True)
    s.accept_stream(3, request_streaming=True)
    # revision zero stream: no window, no updates
    assert [type(e) for e in s.receive(req(1, payload(5000)))] == [MessageReceived]
    s.message_consumed(1)
    # revision one stream: window enforced and credit granted back
    assert [type(e) for e in s.receive(req(3, payload(1000)))] == [MessageReceived]
    s.message_consumed(3)
    assert kinds(s.take_frames()) == [(3, "window_update")]
    # sending: unlimited on stream 1, 500 bytes on stream 3
    s.send_message(1, payload(4000))
    s.send_message(3, payload(4000))
    out = s.take_frames()
    assert (
        sum(
            len(f.response_message.data) + len(f.more_response_data)
            for f in out
            if f.stream_id == 1
        )
        == 4000
    )
    assert (
        sum(
            len(f.response_message.data) + len(f.more_response_data)
            for f in out
            if f.stream_id == 3
        )
        == 500
    )


def test_serving_unsupported_revision_is_unavailable() -> None:
    s = ServingConnection(ConnectionConfig(negotiated=True, supported_revisions=(0,)))
    s.start()
    s.take_frames()
    assert s.receive(new_stream(1, revision=1)) == []
    frames = s.take_frames()
    assert kinds(frames) == [(1, "response_headers"), (1, "close_stream")]
    assert frames[1].close_stream.status.code == Code.UNAVAILABLE
    # a revision nobody knows
    assert s.receive(new_stream(2, revision=7)) == []
    frames = s.take_frames()
    assert frames[-1].close_stream.status.code == Code.UNAVAILABLE
    assert "revision" in frames[-1].close_stream.status.message


@pytest.mark.parametrize("negotiated", [True, False])
def test_pair_negotiates_and_exchanges(negotiated: bool) -> None:
    p = Pair(
        negotiated=negotiated, client={"receive_window": 3000}, server={"receive_window": 2000}
    )
    p.flush_server()
    if negotiated:
        assert kinds(p.in_flight_s2c) == [(-1, "settings")]
        assert not p.client.ready
    p.handshake()
    assert p.client.revision == (1 if negotiated else 0)
    sid = p.client.open_stream(METHOD)
    p.client.send_message(sid, payload(10_000))
    p.client.half_close(sid)

    def on_server(e: object) -> None:
        if isinstance(e, MessageReceived):
            p.server.message_consumed(e.stream_id)
            p.server.send_message(e.stream_id, e.data[::-1])
        if isinstance(e, HalfClosed):
            p.server.close_stream(e.stream_id, None)

    p.on_server_event = on_server
    p.pump()
    got = [e for e in p.client_events_for(sid) if isinstance(e, MessageReceived)]
    assert [m.data for m in got] == [payload(10_000)[::-1]]
    window_updates = [f for f in p.c2s_log + p.s2c_log if kind(f) == "window_update"]
    assert bool(window_updates) == negotiated
    assert not p.client.has_stream(sid) and not p.server.has_stream(sid)


def test_window_update_on_revision_zero_serving_stream_ignored() -> None:
    s = ServingConnection(ConnectionConfig(negotiated=False))
    s.receive(new_stream(1, revision=0))
    s.accept_stream(1, request_streaming=True)
    assert s.receive(c2s_window(1, 2**32 - 1)) == []
    assert s.receive(c2s_window(1, 2**32 - 1)) == []
    assert s.has_stream(1)
