"""Per-tunnel limits of the serving side: concurrent streams."""

from __future__ import annotations

from grpctunnel.protocol import Code, ConnectionConfig, ServingConnection, StreamOpened

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
