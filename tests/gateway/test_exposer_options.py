"""The exposer's connection to its backend reconnects on the exposer's own backoff."""

from __future__ import annotations

from grpctunnel.gateway.exposer import ExposeConfig


def test_the_backend_connection_reconnects_within_the_backoff_cap() -> None:
    """grpc's default reconnection backoff grows to 120 s: a backend down for half a
    minute came back to callers 15 s after it listened again (measured with
    --max-backoff 1). The backend connection is held to the exposer's cap."""
    config = ExposeConfig(backend="b:1", server="s:2", name="n", backoff_cap=1.0)
    options = dict(config.backend_channel_options())
    assert options["grpc.max_reconnect_backoff_ms"] == 1000
    assert options["grpc.initial_reconnect_backoff_ms"] == 500
    assert options["grpc.min_reconnect_backoff_ms"] == 500
