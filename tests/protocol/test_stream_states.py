"""A stream's lifecycle: the one table of legal transitions, and how the two ends walk
it. What the table does not list is the peer's fault (ProtocolError, with the code of
the side that saw it) or the application's (UsageError)."""

from __future__ import annotations

import pytest

from grpctunnel.protocol import Code, ProtocolError, UsageError
from grpctunnel.protocol.stream import (
    TRANSITIONS,
    Outcome,
    Stream,
    StreamInput,
    StreamState,
)
from grpctunnel.protocol.windows import SendWindow

from .harness import half_close, headers, md, open_on_wire, ready_client, serving_with_stream

LIVE = [s for s in StreamState if s not in (StreamState.CLOSING, StreamState.CLOSED)]


def stream_in(state: StreamState) -> Stream:
    st = Stream(1, 1, SendWindow(None), None)
    st.state = state
    return st


def test_the_table_is_total_for_live_states_and_closed_has_no_way_out() -> None:
    for state in LIVE:
        for inp in StreamInput:
            if inp is StreamInput.CLOSE_WRITTEN:
                assert (state, inp) not in TRANSITIONS  # only a queued close is written
            elif inp is StreamInput.SEND_RESPONSE and state in (
                StreamState.OPEN,
                StreamState.HALF_CLOSED,
            ):
                assert (state, inp) not in TRANSITIONS  # headers first
            else:
                assert (state, inp) in TRANSITIONS, (state, inp)
    assert not [key for key in TRANSITIONS if key[0] is StreamState.CLOSED]
    # every FAIL says why; only peer frames are ignored or fail, only the application
    # is refused
    for (_, inp), step in TRANSITIONS.items():
        if step.outcome in (Outcome.FAIL, Outcome.IGNORE):
            assert inp.from_peer
        if step.outcome is Outcome.FAIL:
            assert step.reason
        if step.outcome is Outcome.REFUSE:
            assert not inp.from_peer


def test_a_transition_not_in_the_table_blames_whoever_asked() -> None:
    with pytest.raises(ProtocolError) as info:
        stream_in(StreamState.CLOSING).advance(StreamInput.RECV_HEADERS, Code.INTERNAL)
    assert info.value.code == Code.INTERNAL and "closing" in info.value.message
    with pytest.raises(UsageError):
        stream_in(StreamState.OPEN).advance(StreamInput.SEND_RESPONSE, Code.INVALID_ARGUMENT)
    with pytest.raises(UsageError):
        stream_in(StreamState.RESPONDING).advance(StreamInput.CLOSE_WRITTEN, Code.INTERNAL)


def test_serving_stream_walks_open_responding_half_closed_closing_closed() -> None:
    s = serving_with_stream(1)
    st = s._streams[1]
    assert st.state is StreamState.OPEN
    s.send_headers(1, md(a="b"))
    assert st.state is StreamState.RESPONDING
    s.receive(half_close(1))
    assert st.state is StreamState.HALF_CLOSED_RESPONDING
    s.close_stream(1, None)
    assert st.state is StreamState.CLOSING
    s.take_frames()
    assert st.state is StreamState.CLOSED and not s.has_stream(1)


def test_calling_stream_walks_open_half_closed_responding_closed() -> None:
    c = ready_client()
    sid = c.open_stream("/pkg.Service/Method")
    st = c._streams[sid]
    assert st.state is StreamState.OPEN and not st.announced
    c.half_close(sid)
    assert st.state is StreamState.HALF_CLOSED
    c.take_frames()
    assert st.announced
    c.receive(headers(sid))
    assert st.state is StreamState.HALF_CLOSED_RESPONDING
    assert not c.send_message(sid, b"late")  # refused: the requests are over
    c.cancel(sid)
    assert st.state is StreamState.CLOSED and not c.has_stream(sid)


def test_a_message_implies_the_headers_on_both_ends() -> None:
    s = serving_with_stream(1)
    s.send_message(1, b"x")
    assert s._streams[1].state is StreamState.RESPONDING
    c = ready_client()
    sid, _ = open_on_wire(c)
    c.receive(s.take_frames()[1])  # the message, without the headers before it
    assert c._streams[sid].state is StreamState.RESPONDING
