"""Flow control (revision one), message size limits, and take_frames fairness."""

from __future__ import annotations

import pytest

from grpctunnel.protocol import (
    DEFAULT_WINDOW,
    GO_CHUNK_SIZE,
    Code,
    ConnectionConfig,
    HalfClosed,
    MessageReceived,
    ServingConnection,
    StreamFailed,
)

from .harness import (
    METHOD,
    Pair,
    c2s_window,
    chunk_of,
    data_bytes,
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


def sizes(frames: list) -> list[int]:  # type: ignore[type-arg]
    return [len(c) for f in frames if (c := chunk_of(f)) is not None]


def window_updates(frames: list) -> list[tuple[int, int]]:  # type: ignore[type-arg]
    return [(f.stream_id, f.window_update) for f in frames if kind(f) == "window_update"]


# -- sending -------------------------------------------------------------------------------


def test_sender_waits_at_zero_and_resumes_on_window_update() -> None:
    c = ready_client(window=1000)
    sid, _ = open_on_wire(c)
    c.send_message(sid, payload(2500))
    assert sizes(c.take_frames()) == [1000]
    assert not c.wants_to_send()
    assert c.take_frames() == []
    c.send_message(sid, b"")  # even an empty message waits behind a blocked one
    assert c.take_frames() == []
    assert c.receive(s2c_window(sid, 600)) == []
    assert c.wants_to_send()
    assert sizes(c.take_frames()) == [600]
    c.receive(s2c_window(sid, 5000))
    out = c.take_frames()
    assert sizes(out) == [900, 0]
    assert kinds(out)[-1] == (sid, "request_message")
    assert c.queued_bytes(sid) == 0


def test_credit_accumulates_while_idle() -> None:
    c = ready_client(window=100)
    sid, _ = open_on_wire(c)
    c.send_message(sid, payload(100))
    c.take_frames()
    c.receive(s2c_window(sid, 300))
    c.receive(s2c_window(sid, 300))
    c.send_message(sid, payload(1000))
    assert sizes(c.take_frames()) == [600]


def test_blocked_stream_does_not_hold_up_others() -> None:
    c = ready_client(window=100)
    a, _ = open_on_wire(c)
    b, _ = open_on_wire(c)
    c.send_message(a, payload(1000))
    c.take_frames()
    c.send_message(a, payload(10))
    c.send_message(b, payload(50))
    c.half_close(b)
    assert kinds(c.take_frames()) == [(b, "request_message"), (b, "half_close")]


def test_serving_send_window_is_the_callers_new_stream_window() -> None:
    s = serving_with_stream(1, window=321)
    s.send_message(1, payload(1000))
    assert sizes(s.take_frames()) == [321]
    s2 = serving_with_stream(1, window=0)  # zero means the default
    s2.send_message(1, payload(100_000))
    assert sum(sizes(s2.take_frames())) == DEFAULT_WINDOW


def test_default_sizes_match_go() -> None:
    assert DEFAULT_WINDOW == 65536
    assert GO_CHUNK_SIZE == 16384
    p = Pair()
    p.handshake()
    sid = p.client.open_stream(METHOD)
    data = payload(300_000)
    p.client.send_message(sid, data)
    p.on_server_event = lambda e: (
        p.server.message_consumed(e.stream_id) if isinstance(e, MessageReceived) else None
    )
    p.pump()
    assert max(sizes(p.c2s_log)) == GO_CHUNK_SIZE
    assert MessageReceived(sid, data) in p.server_events
    assert p.c2s_log[0].new_stream.initial_window_size == DEFAULT_WINDOW


# -- receiving: releasing credit -----------------------------------------------------------


def test_receiver_releases_credit_in_batches_as_messages_are_consumed() -> None:
    s = serving_with_stream(1, receive_window=1000)  # threshold: a quarter
    for i in range(10):
        assert s.receive(req(1, payload(100, i))) == [MessageReceived(1, payload(100, i))]
    assert s.take_frames() == []  # nothing consumed, nothing granted
    updates = []
    for _ in range(10):
        s.message_consumed(1)
        updates.append(window_updates(s.take_frames()))
    assert updates == [[], [], [(1, 300)], [], [], [(1, 300)], [], [], [(1, 300)], []]
    s.message_consumed(1)  # nothing unread: no-op
    s.message_consumed(99)  # unknown stream: no-op
    assert s.take_frames() == []
    # the 900 granted bytes can be sent again, but no more
    for _ in range(9):
        s.receive(req(1, payload(100)))
    (e,) = s.receive(req(1, b"x"))
    assert isinstance(e, StreamFailed) and e.code == Code.RESOURCE_EXHAUSTED


def test_calling_side_releases_credit_too() -> None:
    c = ready_client(receive_window=400)
    sid, frames = open_on_wire(c)
    assert frames[0].new_stream.initial_window_size == 400
    c.receive(resp(sid, payload(400)))
    assert c.take_frames() == []
    c.message_consumed(sid)
    assert window_updates(c.take_frames()) == [(sid, 400)]


def test_partial_message_credit_released_so_large_message_completes() -> None:
    s = serving_with_stream(1, receive_window=1000)
    data = payload(10_000)
    evs = s.receive(req(1, data[:500], size=len(data)))
    granted = window_updates(s.take_frames())
    assert granted == [(1, 500)]
    for i in range(500, 10_000, 500):
        evs = s.receive(more_req(1, data[i : i + 500]))
        granted += window_updates(s.take_frames())
    assert evs == [MessageReceived(1, data)]
    # credit for every byte but the last chunk (released when consumed)
    assert sum(n for _, n in granted) == 9500
    s.message_consumed(1)
    assert window_updates(s.take_frames()) == [(1, 500)]


@pytest.mark.parametrize(
    ("window", "size"), [(1, 10), (100, 10_000), (1000, 1001), (4096, 100_000)]
)
def test_message_larger_than_window_completes_on_pair(window: int, size: int) -> None:
    p = Pair(client={"receive_window": window}, server={"receive_window": window})
    p.handshake()
    sid = p.client.open_stream(METHOD)
    p.client.send_message(sid, payload(size, 1))
    p.client.half_close(sid)

    def on_server(e: object) -> None:
        if isinstance(e, HalfClosed):
            p.server.send_message(e.stream_id, payload(size, 2))
            p.server.close_stream(e.stream_id, None)

    p.on_server_event = on_server
    p.pump()  # nobody consumes: a lone partial message still gets its credit
    assert MessageReceived(sid, payload(size, 1)) in p.server_events
    assert MessageReceived(sid, payload(size, 2)) in p.client_events


@pytest.mark.parametrize(
    ("window", "msg", "count"),
    [(1000, 300, 20), (1000, 3000, 6), (4096, 1, 10_000), (500, 499, 10)],
)
def test_stalled_consumer_holds_at_most_window_plus_one_message(
    window: int, msg: int, count: int
) -> None:
    p = Pair(server={"receive_window": window})
    p.handshake()
    sid = p.client.open_stream(METHOD)
    for i in range(count):
        p.client.send_message(sid, payload(msg, i))
    p.pump()
    received = len(data_bytes(p.c2s_log, sid))
    assert received <= window + msg
    assert received >= min(window, msg * count)  # it did fill the window
    # consuming one message at a time lets everything through, in order
    consumed = 0
    for _ in range(count * 10 + 100):
        unread = [e for e in p.server_events if isinstance(e, MessageReceived)][consumed:]
        if not unread and consumed == count:
            break
        for _e in unread:
            p.server.message_consumed(sid)
            consumed += 1
        held = len(data_bytes(p.c2s_log, sid)) - consumed * msg
        assert held <= window + msg
        p.pump()
    got = [e.data for e in p.server_events if isinstance(e, MessageReceived)]
    assert got == [payload(msg, i) for i in range(count)]


def test_revision_zero_has_no_flow_control() -> None:
    s = serving_with_stream(1, revision=0, receive_window=10)
    assert s.receive(req(1, payload(100_000))) == [MessageReceived(1, payload(100_000))]
    s.message_consumed(1)
    assert s.take_frames() == []


@pytest.mark.parametrize("side", ["serving", "calling"])
def test_revision_zero_still_bounds_unread_memory(side: str) -> None:
    """PROTOCOL.md: revision zero has no window updates; a receiver must still bound
    its memory. A stream whose unread data grows without bound fails with
    RESOURCE_EXHAUSTED; one whose application keeps reading does not."""
    chunk = payload(1 << 20)
    if side == "serving":
        conn = serving_with_stream(1, revision=0)
        sid = 1
        frames = [req(1, chunk)] * 40
    else:
        conn = ready_client(revisions=(0,))
        sid, _ = open_on_wire(conn)
        frames = [resp(sid, chunk)] * 40
    for f in frames:  # 40 MiB, read as it comes: fine
        assert conn.receive(f) == [MessageReceived(sid, chunk)]
        conn.message_consumed(sid)
    evs = [e for f in frames for e in conn.receive(f)]  # 40 MiB nobody reads
    failed = [e for e in evs if isinstance(e, StreamFailed)]
    assert len(failed) == 1 and failed[0].code == Code.RESOURCE_EXHAUSTED
    assert len([e for e in evs if isinstance(e, MessageReceived)]) < 40


# -- window violations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames",
    [
        [req(1, payload(1001))],
        # an unread message holds its credit, so the next one's chunks add up
        [req(1, payload(500)), req(1, payload(400), size=2000), more_req(1, payload(101))],
        [req(1, payload(1000)), req(1, b"x")],
    ],
    ids=["one-chunk", "cumulative", "after-full-window"],
)
def test_serving_chunk_beyond_window_is_resource_exhausted(frames: list) -> None:  # type: ignore[type-arg]
    s = serving_with_stream(1, receive_window=1000)
    s.receive(new_stream(3))
    s.accept_stream(3, request_streaming=True)
    evs = [e for f in frames for e in s.receive(f)]
    failed = [e for e in evs if isinstance(e, StreamFailed)]
    assert [(e.stream_id, e.code) for e in failed] == [(1, Code.RESOURCE_EXHAUSTED)]
    out = s.take_frames()
    assert out[-1].close_stream.status.code == Code.RESOURCE_EXHAUSTED
    assert s.receive(req(3, payload(1000))) == [MessageReceived(3, payload(1000))]  # tunnel lives


def test_serving_exactly_the_window_is_fine() -> None:
    s = serving_with_stream(1, receive_window=1000)
    assert s.receive(req(1, payload(400), size=1000)) == []
    assert s.receive(more_req(1, payload(600))) != []


def test_calling_chunk_beyond_window_is_resource_exhausted() -> None:
    c = ready_client(receive_window=1000)
    sid, _ = open_on_wire(c)
    other, _ = open_on_wire(c)
    (e,) = c.receive(resp(sid, payload(1001)))
    assert isinstance(e, StreamFailed) and e.code == Code.RESOURCE_EXHAUSTED
    assert kinds(c.take_frames()) == [(sid, "cancel")]
    assert c.receive(resp(other, payload(1000))) == [MessageReceived(other, payload(1000))]


def test_calling_window_update_overflow_fails_stream() -> None:
    c = ready_client(window=2**32 - 1)
    sid, _ = open_on_wire(c)
    c.send_message(sid, payload(100))
    c.take_frames()
    assert c.receive(s2c_window(sid, 100)) == []
    (e,) = c.receive(s2c_window(sid, 1))
    assert isinstance(e, StreamFailed) and e.stream_id == sid
    assert "overflow" in e.message
    assert kinds(c.take_frames()) == [(sid, "cancel")]


def test_serving_window_update_overflow_fails_stream() -> None:
    s = serving_with_stream(1, window=2**32 - 10)
    assert s.receive(c2s_window(1, 9)) == []
    (e,) = s.receive(c2s_window(1, 1))
    assert isinstance(e, StreamFailed) and e.code == Code.INVALID_ARGUMENT
    assert s.take_frames()[-1].close_stream.status.code == Code.INVALID_ARGUMENT
    assert s.receive(c2s_window(1, 2**32 - 1)) == []


# -- max receive message size ----------------------------------------------------------------


def test_serving_max_receive_message_size() -> None:
    s = serving_with_stream(1, max_receive_message_size=100)
    assert s.receive(req(1, payload(100))) == [MessageReceived(1, payload(100))]
    (e,) = s.receive(req(1, b"x", size=101))
    assert isinstance(e, StreamFailed)
    assert e.code == Code.RESOURCE_EXHAUSTED
    assert "received message larger than max (101 vs. 100)" in e.message
    status = s.take_frames()[-1].close_stream.status
    assert status.code == Code.RESOURCE_EXHAUSTED and "larger than max" in status.message


def test_calling_max_receive_message_size() -> None:
    c = ready_client(max_receive_message_size=10)
    sid, _ = open_on_wire(c)
    (e,) = c.receive(resp(sid, b"", size=11))
    assert isinstance(e, StreamFailed) and e.code == Code.RESOURCE_EXHAUSTED
    assert "larger than max (11 vs. 10)" in e.message
    assert kinds(c.take_frames()) == [(sid, "cancel")]


def test_default_max_receive_message_size_is_4mib_and_none_is_unlimited() -> None:
    s = serving_with_stream(1)
    (e,) = s.receive(req(1, b"", size=4 * 1024 * 1024 + 1))
    assert isinstance(e, StreamFailed) and e.code == Code.RESOURCE_EXHAUSTED
    s = serving_with_stream(1, max_receive_message_size=None)
    assert s.receive(req(1, b"abc", size=2**32 - 1)) == []
    assert s.has_stream(1)


# -- fairness ------------------------------------------------------------------------------


def test_take_frames_round_robin_between_streams() -> None:
    c = ready_client(window=1 << 20, max_chunk_size=1000)
    a, _ = open_on_wire(c)
    b, _ = open_on_wire(c)
    c.send_message(a, payload(20_000, "a"))
    c.send_message(b, payload(30_000, "b"))
    frames = c.take_frames()
    order = [f.stream_id for f in frames]
    assert order[:40] == [a, b] * 20
    assert order[40:] == [b] * 10
    assert data_bytes(frames, a) == payload(20_000, "a")
    assert data_bytes(frames, b) == payload(30_000, "b")


def test_serving_take_frames_round_robin() -> None:
    s = ServingConnection(ConnectionConfig(negotiated=False, max_chunk_size=100))
    for sid in (1, 2, 3):
        s.receive(new_stream(sid, revision=0))
        s.accept_stream(sid, request_streaming=True)
        s.send_message(sid, payload(1000, sid))
    frames = [f for f in s.take_frames() if chunk_of(f) is not None]
    assert [f.stream_id for f in frames] == [1, 2, 3] * 10


def test_take_frames_budget_keeps_order() -> None:
    c = ready_client(window=1 << 20, max_chunk_size=1000)
    a, _ = open_on_wire(c)
    b, _ = open_on_wire(c)
    c.send_message(a, payload(10_000, "a"))
    c.send_message(b, payload(10_000, "b"))
    batches = []
    while c.wants_to_send():
        batch = c.take_frames(max_bytes=3000)
        assert 0 < sum(sizes(batch)) <= 3000 + 2 * 1000
        batches += batch
    assert data_bytes(batches, a) == payload(10_000, "a")
    assert data_bytes(batches, b) == payload(10_000, "b")
    assert sizes(batches) == [1000] * 20


def test_fairness_on_pair_with_large_messages() -> None:
    p = Pair(client={"max_chunk_size": 4096}, server={"receive_window": 1 << 20})
    p.handshake()
    a = p.client.open_stream(METHOD)
    b = p.client.open_stream(METHOD)
    p.client.send_message(a, payload(200_000, "a"))
    p.client.send_message(b, payload(200_000, "b"))
    p.flush_client()
    data_ids = [f.stream_id for f in p.in_flight_c2s if chunk_of(f) is not None]
    # both streams advance together, neither waits for the other to finish
    assert data_ids[: 2 * 40] == [a, b] * 40


def test_wire_checker_catches_a_sender_over_its_window() -> None:
    """The harness's independent check (used by the pair tests) does fire."""
    from .harness import WindowViolation, WireChecker, new_stream

    checker = WireChecker(server_window=100, max_chunk_c2s=60)
    checker.client_sent(new_stream(1, window=50))
    checker.client_sent(req(1, payload(60), size=200))
    checker.client_sent(more_req(1, payload(40)))
    with pytest.raises(WindowViolation):
        checker.client_sent(more_req(1, payload(1)))
    checker.client_received(s2c_window(1, 10))
    checker.client_sent(more_req(1, payload(10)))
    with pytest.raises(WindowViolation):
        checker.client_sent(more_req(1, payload(61)))  # over the chunk limit
    checker.server_sent(resp(1, payload(50)))
    with pytest.raises(WindowViolation):
        checker.server_sent(more_resp(1, payload(1)))


def test_fits_window_says_whether_queued_bytes_go_out_without_credit() -> None:
    c = ready_client(window=1000)
    sid, _ = open_on_wire(c)
    assert c.fits_window(sid)  # nothing queued
    c.send_message(sid, payload(600))
    assert c.fits_window(sid)
    c.send_message(sid, payload(400))
    assert c.fits_window(sid)  # exactly the window
    c.send_message(sid, payload(1))
    assert not c.fits_window(sid)
    assert sizes(c.take_frames()) == [600, 400]
    assert not c.fits_window(sid)  # the last byte waits for credit
    c.receive(s2c_window(sid, 1))
    assert c.fits_window(sid)
    assert c.fits_window(sid + 100)  # no such stream: nothing waits
