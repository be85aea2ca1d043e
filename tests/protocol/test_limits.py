"""Per-tunnel limits of the serving side: concurrent streams, and what a peer that does
not read can make us hold."""

from __future__ import annotations

import pytest

from grpctunnel.protocol import (
    Code,
    ConnectionConfig,
    ProtocolError,
    ServingConnection,
    StreamOpened,
    UsageError,
)

from .flood import flood
from .harness import half_close, kinds, new_stream


def test_streams_beyond_the_limit_are_refused_and_the_tunnel_goes_on() -> None:
    s = ServingConnection(ConnectionConfig(negotiated=False, max_concurrent_streams=2))
    s.start()
    assert isinstance(s.receive(new_stream(1))[0], StreamOpened)
    assert isinstance(s.receive(new_stream(2))[0], StreamOpened)
    assert s.receive(new_stream(3)) == []  # refused, not opened
    frames = s.take_frames()
    assert kinds(frames) == [(3, "response_headers"), (3, "close_stream")]
    assert frames[1].close_stream.status.code == Code.RESOURCE_EXHAUSTED
    assert "limit 2" in frames[1].close_stream.status.message
    assert s.receive(half_close(3)) == []  # trailing frames of the refused stream are dropped
    s.close_stream(1, None)
    s.take_frames()
    assert isinstance(s.receive(new_stream(4))[0], StreamOpened)  # room again


def test_no_limit_by_default() -> None:
    s = ServingConnection(ConnectionConfig(negotiated=False))
    for sid in range(1, 201):
        assert isinstance(s.receive(new_stream(sid))[0], StreamOpened)


# -- a peer that floods and never reads (issue 9) -------------------------------------------


def test_refused_streams_keep_no_state() -> None:
    """A stream refused for being one too many is answered from the control queue and
    forgotten: the table holds only the streams within the limit, however many the
    peer tries, and its id stays used."""
    s = ServingConnection(ConnectionConfig(negotiated=False, max_concurrent_streams=2))
    s.start()
    for sid in range(1, 1001):
        s.receive(new_stream(sid))
    assert s.active_streams == 2
    assert s.highest_stream_id == 1000
    frames = s.take_frames()
    assert len(frames) == 2 * 998
    assert kinds(frames[:2]) == [(3, "response_headers"), (3, "close_stream")]
    assert s.receive(half_close(1000)) == []  # a refused stream's late frames: dropped
    with pytest.raises(ProtocolError):
        s.receive(new_stream(999))  # new ids must still increase


def test_unsent_control_frames_past_the_bound_stop_input_until_taken() -> None:
    s = ServingConnection(
        ConnectionConfig(negotiated=False, max_concurrent_streams=0, max_unsent_control_frames=5)
    )
    s.start()
    sid = 0
    while not s.output_backlogged:
        sid += 1
        s.receive(new_stream(sid))
    assert sid == 3 and s.unsent_control_frames == 6  # two frames per refusal
    with pytest.raises(UsageError):
        s.receive(new_stream(sid + 1))  # the application must stop reading the peer
    assert len(s.take_frames()) == 6
    assert not s.output_backlogged
    assert s.receive(new_stream(sid + 1)) == []


def test_a_huge_malformed_method_name_is_not_echoed_whole() -> None:
    s = ServingConnection(ConnectionConfig(negotiated=False))
    s.receive(new_stream(1, "x" * 1_000_000))
    (_, close) = s.take_frames()
    message = close.close_stream.status.message
    assert close.close_stream.status.code == Code.INVALID_ARGUMENT
    assert "malformed method name" in message and "1000000 characters" in message
    assert len(message) < 400


def test_the_flood_of_issue_9_is_held_back() -> None:
    """The flood of the issue, on the core alone (tests/protocol/flood.py): new-stream
    frames past a limit of 10 from a peer that never reads our replies. Fed as the
    session feeds them (nothing while the output is backlogged), the connection holds
    the streams within the limit and a bounded number of unsent frames."""
    result = flood(frames=50_000, limit=10)
    assert result.streams_held == 10
    assert result.frames_taken_in < 5_000
    bound = ConnectionConfig(negotiated=True).max_unsent_control_frames
    assert bound <= result.unsent_frames <= bound + 2
    assert result.memory_bytes < 8 * 2**20
