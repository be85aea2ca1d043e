"""Property (c): whatever the peer sends, and whether or not our output is ever
written, what a connection holds is bounded by its configuration:

* streams: at most ``max_concurrent_streams`` (serving side), at most those the
  application opened (calling side);
* inbound bytes of a stream: its receive window plus one message (revision one), or
  ``max_unflowed_bytes`` (revision zero);
* outbound: what the application queued on its streams, and at most
  ``max_unsent_control_frames`` control frames plus the few that one more frame, and
  the application's answer to it, add.

The peer is hostile but plausible: it floods new streams (alone, or whole calls in
batches), sends data past its window or with credit it only guesses (it never reads
our window updates), cancels, half-closes, grants credit. Our application accepts,
consumes everything at once (so window updates keep coming) and answers some calls.
Frames are fed as the session feeds them: through ``unbatch()``, one at a time, and
none while the connection's output is backlogged; a run that never takes our output
then stops taking in frames, as a session stops reading a peer that does not read.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from grpctunnel.protocol import (
    CallingConnection,
    Code,
    ConnectionConfig,
    MessageReceived,
    ProtocolError,
    ServingConnection,
    StreamOpened,
)
from grpctunnel.protocol.stream import Stream

from .harness import (
    C2S,
    S2C,
    c2s_window,
    cancel,
    close,
    half_close,
    headers,
    md,
    more_req,
    more_resp,
    new_stream,
    req,
    resp,
    s2c_window,
)
from .harness import (
    settings as settings_frame,
)

BOUNDED = settings(
    max_examples=int(os.environ.get("GRPCTUNNEL_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_BUF = bytes(300_000)
sizes = st.one_of(
    st.integers(0, 50),
    st.integers(0, 3000),
    st.integers(0, 3000),
    st.sampled_from([65536, 200_000]),
)


def check_bounded(
    conn: CallingConnection | ServingConnection, max_streams: int, *, app_control: int
) -> None:
    """What ``conn`` holds is within its configuration's bounds; ``app_control``:
    control frames the application itself may have queued since the last take."""
    config = conn.config
    assert conn.active_streams <= max_streams
    assert conn.unsent_control_frames <= config.max_unsent_control_frames + 2 + app_control
    max_msg = config.max_receive_message_size
    for st_ in conn._streams.values():
        assert isinstance(st_, Stream)
        window = st_.recv_window
        if window is None:
            assert st_.buffered <= config.max_unflowed_bytes
        elif max_msg is not None:
            assert st_.buffered <= window.size + max_msg, (st_.buffered, window.size, max_msg)
        assert len(st_.outq) <= 4  # new_stream or headers, a message, half-close or close


# -- the serving side ------------------------------------------------------------------


def serving_flood_message(
    data: st.DataObject, s: ServingConnection, opened: list[int], batching: bool
) -> C2S:
    """One message of the tunnel RPC from a peer bent on making us hold things."""
    hi = s.highest_stream_id
    what = data.draw(
        st.sampled_from(["open"] * 4 + ["call", "data", "data", "credit", "cancel", "half"]),
        label="peer does",
    )
    if not opened:
        what = "open" if what != "call" else what
    sid = data.draw(st.sampled_from(opened), label="sid") if opened else hi
    if what == "open":
        method = data.draw(st.sampled_from(["/pkg.Service/Method"] * 5 + ["bad", ""]))
        revision = data.draw(st.sampled_from([0, 1, 1, 1, 7]), label="revision")
        return new_stream(hi + data.draw(st.integers(1, 3)), method, revision=revision)
    if what == "call":
        nsid = hi + 1
        frames = [
            new_stream(nsid, revision=data.draw(st.sampled_from([0, 1]))),
            req(nsid, _BUF[: data.draw(sizes)]),
            half_close(nsid),
        ]
        if not batching:
            return frames[0]
        outer = C2S()
        outer.batch.extend(frames)
        return outer
    if what == "data":
        n = data.draw(sizes, label="chunk")
        if data.draw(st.booleans(), label="start?"):
            return req(sid, _BUF[:n], size=n + data.draw(st.sampled_from([0, 0, 10, 100_000])))
        return more_req(sid, _BUF[:n])
    if what == "credit":
        return c2s_window(sid, data.draw(st.integers(1, 2**31)))
    if what == "cancel":
        return cancel(sid)
    return half_close(sid)


@BOUNDED
@given(
    limit=st.sampled_from([0, 1, 3, 10]),
    bound=st.sampled_from([1, 2, 5, 64]),
    window=st.sampled_from([16, 1000, 65536]),
    max_msg=st.sampled_from([100, 5000, 70_000]),
    batching=st.booleans(),
    drains=st.sampled_from([False, False, True]),
    steps=st.integers(1, 300),
    data=st.data(),
)
def test_serving_connection_holds_a_bounded_amount_whatever_the_peer_sends(
    limit: int,
    bound: int,
    window: int,
    max_msg: int,
    batching: bool,
    drains: bool,
    steps: int,
    data: st.DataObject,
) -> None:
    s = ServingConnection(
        ConnectionConfig(
            negotiated=True,
            receive_window=window,
            max_receive_message_size=max_msg,
            max_concurrent_streams=limit,
            batching=batching,
            max_unsent_control_frames=bound,
        )
    )
    s.start()
    app_control = 1  # the settings frame
    opened: list[int] = []
    for _ in range(steps):
        message = serving_flood_message(data, s, opened, batching)
        try:
            frames = s.unbatch(message)
            for frame in frames:
                if s.output_backlogged:
                    if not drains:
                        event("serving: the peer is no longer read")
                        check_bounded(s, limit, app_control=app_control)
                        return
                    s.take_frames()
                    app_control = 0
                for e in s.receive(frame):
                    if isinstance(e, StreamOpened):
                        opened.append(e.stream_id)
                        s.accept_stream(e.stream_id, request_streaming=data.draw(st.booleans()))
                    elif isinstance(e, MessageReceived):
                        s.message_consumed(e.stream_id)  # at once: credit keeps flowing
                        app_control += 1
                        if data.draw(st.integers(0, 3), label="answer?") == 0:
                            s.send_message(e.stream_id, b"reply")
                            s.close_stream(e.stream_id, None, md(done="1"))
                check_bounded(s, limit, app_control=app_control)
        except ProtocolError as e:
            assert e.code == Code.INVALID_ARGUMENT
            event("serving: ProtocolError")
            return
        if drains and data.draw(st.integers(0, 7), label="take?") == 0:
            s.take_frames()
            app_control = 0
        opened = [sid for sid in opened if s.has_stream(sid)] or opened[-1:]
    check_bounded(s, limit, app_control=app_control)


# -- the calling side ------------------------------------------------------------------


def calling_flood_frame(data: st.DataObject, sids: list[int]) -> S2C:
    """A frame from a serving peer bent on making the calling side hold things."""
    sid = data.draw(st.sampled_from(sids), label="sid")
    what = data.draw(
        st.sampled_from(["data"] * 5 + ["headers", "credit", "close"]), label="peer does"
    )
    if what == "data":
        n = data.draw(sizes, label="chunk")
        if data.draw(st.booleans(), label="start?"):
            return resp(sid, _BUF[:n], size=n + data.draw(st.sampled_from([0, 0, 10, 100_000])))
        return more_resp(sid, _BUF[:n])
    if what == "headers":
        return headers(sid)
    if what == "credit":
        return s2c_window(sid, data.draw(st.integers(1, 2**31)))
    return close(sid, data.draw(st.sampled_from([None, Code.INTERNAL])))


@BOUNDED
@given(
    streams=st.integers(1, 5),
    bound=st.sampled_from([1, 2, 5, 64]),
    window=st.sampled_from([16, 1000, 65536]),
    max_msg=st.sampled_from([100, 5000, 70_000]),
    revisions=st.sampled_from([(0, 1), (0,)]),
    drains=st.sampled_from([False, False, True]),
    steps=st.integers(1, 150),
    data=st.data(),
)
def test_calling_connection_holds_a_bounded_amount_whatever_the_peer_sends(
    streams: int,
    bound: int,
    window: int,
    max_msg: int,
    revisions: tuple[int, ...],
    drains: bool,
    steps: int,
    data: st.DataObject,
) -> None:
    c = CallingConnection(
        ConnectionConfig(
            negotiated=True,
            receive_window=window,
            max_receive_message_size=max_msg,
            max_unsent_control_frames=bound,
        )
    )
    c.receive(settings_frame(revisions))
    sids = [c.open_stream("/pkg.Service/Method") for _ in range(streams)]
    c.take_frames()
    app_control = 0
    for _ in range(steps):
        if c.output_backlogged:
            if not drains:
                event("calling: the peer is no longer read")
                break
            c.take_frames()
            app_control = 0
        try:
            for e in c.receive(calling_flood_frame(data, sids)):
                if isinstance(e, MessageReceived):
                    c.message_consumed(e.stream_id)
                    app_control += 1
        except ProtocolError as e:
            assert e.code == Code.INTERNAL
            event("calling: ProtocolError")
            return
        check_bounded(c, streams, app_control=app_control)
        if drains and data.draw(st.integers(0, 7), label="take?") == 0:
            c.take_frames()
            app_control = 0
    check_bounded(c, streams, app_control=app_control)
