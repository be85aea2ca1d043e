"""Refused tunnel attempts are logged rate-limited: the first of each reason in full, then
one summary line per interval with the counts, so that a flood of bad tunnels cannot fill
a disk. The limiter alone (a clock of our own), then both places that log refusals: the
handler's admission hooks, and the gateway's token check.

Before: one line per refused tunnel (the flood tests logged 150 lines, not 1 or 2)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from grpctunnel import PendingChannel, TunnelServiceHandlerOptions, rate_limited_log
from grpctunnel.gateway import GatewayServer, GatewaySettings
from grpctunnel.gateway.auth import TokenAuthority, bearer_metadata
from grpctunnel.rate_limited_log import RateLimitedLog
from grpctunnel.v1.tunnel_pb2_grpc import TunnelServiceStub

from .conftest import start_backend, wait

FLOOD = 150
SUMMARY = "refused {count} more tunnels in the last {seconds}s: {reasons}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture, name: str = "test.refusals") -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def test_first_of_each_reason_then_one_summary_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limiter = RateLimitedLog(logging.getLogger("test.refusals"), SUMMARY, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.refusals"):
        for i in range(1200):
            limiter.log("UNAUTHENTICATED: invalid token", "refused from %s: invalid token", i)
            if i % 35 == 0:
                limiter.log("PERMISSION_DENIED: no", "refused from %s: no", i)
        assert _lines(caplog) == ["refused from 0: invalid token", "refused from 0: no"]
        clock.now += 10
        limiter.log("UNAUTHENTICATED: invalid token", "refused from %s: invalid token", "x")
        # the one summary of the interval: the repeats of both reasons, most first
        assert _lines(caplog)[2:] == [
            "refused 1233 more tunnels in the last 10s: "
            "UNAUTHENTICATED: invalid token (1199), PERMISSION_DENIED: no (34)"
        ]
        clock.now += 10
        limiter.flush()  # what the timer does at the end of an interval
        assert _lines(caplog)[3:] == [
            "refused 1 more tunnels in the last 10s: UNAUTHENTICATED: invalid token (1)"
        ]
        clock.now += 30  # a reason quiet for a whole interval is new again
        limiter.log("UNAUTHENTICATED: invalid token", "refused from %s: invalid token", "y")
        assert _lines(caplog)[4:] == ["refused from y: invalid token"]


def test_many_reasons_are_bounded_too(caplog: pytest.LogCaptureFixture) -> None:
    """Reasons can carry what the peer sent (a name): however many there are, at most
    ``max_full`` full lines and ``max_reasons`` named reasons per interval."""
    clock = Clock()
    limiter = RateLimitedLog(
        logging.getLogger("test.refusals"), SUMMARY, clock=clock, max_full=3, max_reasons=2
    )
    with caplog.at_level(logging.INFO, logger="test.refusals"):
        for i in range(1000):
            limiter.log(f"PERMISSION_DENIED: name n{i}", "refused name n%d", i)
        assert _lines(caplog) == ["refused name n0", "refused name n1", "refused name n2"]
        clock.now += 10
        limiter.flush()
    assert _lines(caplog)[3:] == [
        "refused 997 more tunnels in the last 10s: PERMISSION_DENIED: name n3 (1), "
        "PERMISSION_DENIED: name n4 (1), other reasons (995)"
    ]


async def test_the_summary_comes_at_the_end_of_the_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a running event loop, a timer writes the summary when the interval ends,
    even if no refusal follows."""
    limiter = RateLimitedLog(logging.getLogger("test.refusals"), SUMMARY, interval=0.2)
    with caplog.at_level(logging.INFO, logger="test.refusals"):
        for _ in range(5):
            limiter.log("UNAUTHENTICATED: invalid token", "refused")
        assert limiter.pending == 4
        while limiter.pending:  # the timer's turn comes after 0.2 s
            await wait(asyncio.sleep(0.05))
    assert _lines(caplog)[1].startswith("refused 4 more tunnels in the last ")


@pytest.fixture
def shared_limiter(monkeypatch: pytest.MonkeyPatch) -> RateLimitedLog:
    """A fresh REFUSED_TUNNELS (the process-wide one keeps what other tests counted)."""
    limiter = RateLimitedLog(logging.getLogger("grpctunnel"), SUMMARY, interval=0.3)
    monkeypatch.setattr(rate_limited_log, "REFUSED_TUNNELS", limiter)
    return limiter


async def _flood(address: str, metadata: tuple[tuple[str, str], ...]) -> None:
    """FLOOD forward tunnels opened with ``metadata``, each refused."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = TunnelServiceStub(channel)  # type: ignore[no-untyped-call]
        for _ in range(FLOOD):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await wait(PendingChannel(stub).start(metadata=metadata, timeout=5))
            assert refused.value.code() in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            )


def _refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in _lines(caplog, "grpctunnel") if m.startswith("refused ")]


async def test_the_handler_logs_a_flood_of_refused_tunnels_in_two_lines(
    shared_limiter: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    def accept(kind: str, metadata: object, peer: str) -> tuple[grpc.StatusCode, str]:
        return grpc.StatusCode.PERMISSION_DENIED, "no tunnels today"

    backend = await start_backend(TunnelServiceHandlerOptions(accept_tunnel=accept))
    try:
        with caplog.at_level(logging.INFO, logger="grpctunnel"):
            await _flood(backend.target, ())
            while shared_limiter.pending:  # until the summary is written
                await wait(asyncio.sleep(0.05))
    finally:
        await backend.aclose()
    lines = _refusal_lines(caplog)
    assert len(lines) == 2, lines
    assert lines[0].startswith("refused forward tunnel from ")
    assert lines[0].endswith(": PERMISSION_DENIED: no tunnels today")
    assert lines[1].startswith(f"refused {FLOOD - 1} more tunnels in the last "), lines[1]
    assert lines[1].endswith(f"s: PERMISSION_DENIED: no tunnels today ({FLOOD - 1})"), lines[1]


async def test_the_gateway_logs_a_flood_of_bad_tokens_in_two_lines(
    shared_limiter: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    settings = GatewaySettings(authority=TokenAuthority.single("good"))
    async with GatewayServer(settings) as server:
        with caplog.at_level(logging.INFO, logger="grpctunnel"):
            await _flood(server.address, bearer_metadata("bad"))
            while shared_limiter.pending:
                await wait(asyncio.sleep(0.05))
    lines = _refusal_lines(caplog)
    assert len(lines) == 2, lines
    assert lines[0] == (
        "refused /grpctunnel.v1.TunnelService/OpenTunnel: UNAUTHENTICATED: invalid token"
    )
    assert lines[1].startswith(f"refused {FLOOD - 1} more tunnels in the last "), lines[1]
    assert lines[1].endswith(f": UNAUTHENTICATED: invalid token ({FLOOD - 1})"), lines[1]
