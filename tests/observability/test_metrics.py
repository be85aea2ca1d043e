"""Metrics of real `serve` and `expose` processes, scraped over HTTP before and after
known calls and tunnel events: they change by exactly what happened, and their label
values stay bounded whatever callers send."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from security.procs import Launcher, no_traceback

from grpctunnel import PendingChannel, TunnelServiceStub
from grpctunnel.admin.v1 import admin_pb2
from grpctunnel.gateway.auth import bearer_metadata
from grpctunnel.gateway.metrics import CLOSED_REASONS, UNKNOWN
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

from .stack import ECHO, admin_stub, echo_request, echo_stub, metrics_url, scrape, size

pytestmark = pytest.mark.timeout(90)

CALLS = "grpctunnel_calls_total"
EVENTS = "grpctunnel_tunnel_events_total"
OPEN = "grpctunnel_tunnels_open"
BYTES = "grpctunnel_relayed_bytes_total"
DURATIONS = "grpctunnel_call_duration_seconds_count"


async def test_metrics_change_by_exactly_what_happened(launcher: Launcher) -> None:
    backend = await launcher.backend()
    server = await launcher.server("--metrics-port", "0")
    url = await metrics_url(server[0])
    before = await scrape(url)
    assert before.get(OPEN, direction="reverse") == 0
    assert before.total(CALLS) == 0

    exposer = await launcher.exposer(backend, server, "metered")
    opened = await scrape(url)
    assert opened.get(OPEN, direction="reverse") == 1
    assert opened.get(EVENTS, event="opened", reason="accepted") == 1
    assert opened.get("grpctunnel_service_tunnels", service=ECHO) == 1

    sent = received = 0
    async with echo_stub(server[1]) as stub:
        for text in ("one", "two", "three"):
            reply = await stub.Echo(echo_request(text), timeout=10)
            sent += size(echo_request(text))
            received += size(reply)
        expand = echo_pb2.ExpandRequest(msg="x", count=4)
        replies = [r async for r in stub.Expand(expand, timeout=10)]
        sent += size(expand)
        received += sum(size(r) for r in replies)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Echo(echo_request("error:NOT_FOUND:gone"), timeout=10)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        sent += size(echo_request("error:NOT_FOUND:gone"))

    after = await scrape(url)
    assert after.get(CALLS, service=ECHO, method="Echo", code="OK") == 3
    assert after.get(CALLS, service=ECHO, method="Expand", code="OK") == 1
    assert after.get(CALLS, service=ECHO, method="Echo", code="NOT_FOUND") == 1
    assert after.total(CALLS) == 5
    assert after.get(DURATIONS, service=ECHO, method="Echo") == 4
    assert after.get(BYTES, direction="request") == sent
    assert after.get(BYTES, direction="response") == received
    assert after.get("grpctunnel_calls_in_flight") == 0

    mark = server[0].mark()
    await exposer.stop()
    await server[0].wait_for(r"tunnel closed: metered from", after=mark)
    closed = await scrape(url)
    assert closed.get(OPEN, direction="reverse") == 0
    assert closed.total(EVENTS, event="closed") == 1
    reasons = {s["reason"] for s in closed.series(EVENTS) if s["event"] == "closed"}
    assert reasons <= CLOSED_REASONS
    assert closed.get("grpctunnel_service_tunnels", service=ECHO) == 0
    assert closed.total(CALLS) == 5
    no_traceback(*launcher.procs)


async def test_label_values_stay_bounded_whatever_callers_send(launcher: Launcher) -> None:
    backend = await launcher.backend()
    server = await launcher.server("--metrics-port", "0")
    url = await metrics_url(server[0])
    await launcher.exposer(backend, server, "bounded-tunnel")
    made_up: set[str] = set()
    channel = grpc.aio.insecure_channel(server[1])
    try:
        for _ in range(20):
            method, service = f"Made{uuid.uuid4().hex}", f"made.up{uuid.uuid4().hex}.Svc"
            made_up |= {method, service}
            for path, code in (
                (f"/{ECHO}/{method}", grpc.StatusCode.UNIMPLEMENTED),
                (f"/{service}/Echo", grpc.StatusCode.UNAVAILABLE),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await channel.unary_unary(path)(b"", timeout=10)
                assert failed.value.code() == code
            # pinned to a tunnel that does not exist: no route either
            pin = f"no-such-tunnel-{uuid.uuid4().hex}"
            made_up.add(pin)
            with pytest.raises(grpc.aio.AioRpcError):
                await channel.unary_unary(f"/{ECHO}/Echo")(
                    b"", metadata=(("grpctunnel-tunnel", pin),), timeout=10
                )
        await channel.unary_unary(f"/{ECHO}/Echo")(b"", timeout=10)  # a real one, OK
    finally:
        await channel.close(None)

    samples = await scrape(url)
    assert samples.get(CALLS, service=ECHO, method=UNKNOWN, code="UNIMPLEMENTED") == 20
    assert samples.get(CALLS, service=UNKNOWN, method=UNKNOWN, code="UNAVAILABLE") == 40
    assert samples.get(CALLS, service=ECHO, method="Echo", code="OK") == 1
    values = samples.label_values()
    assert not any(word in value for value in values for word in made_up)
    assert "bounded-tunnel" not in values  # tunnel names are never labels
    assert len(samples.series(CALLS)) == 3


async def test_refused_tunnels_are_counted_by_reason(launcher: Launcher, token_file: Any) -> None:
    tokens = token_file(
        {"name": "agent", "token": "agent-t", "call": False},
        {"name": "other", "token": "other-t", "call": False},
        {"name": "caller", "token": "caller-t", "expose": False},
    )
    backend = await launcher.backend()
    server = await launcher.server("--token-file", tokens, "--metrics-port", "0")
    url = await metrics_url(server[0])
    await launcher.exposer(backend, server, "owned", GRPCTUNNEL_TOKEN="agent-t")
    for token, name in (("wrong-t", "a"), ("caller-t", "b"), ("other-t", "owned")):
        proc = await launcher.start(
            "expose", backend, "--to", server[1], "--name", name, GRPCTUNNEL_TOKEN=token
        )
        assert await proc.wait_exit() == 1
    samples = await scrape(url)
    assert samples.get(EVENTS, event="refused", reason="unauthenticated") == 1
    assert samples.get(EVENTS, event="refused", reason="permission_denied") == 2
    assert samples.get(EVENTS, event="opened", reason="accepted") == 1
    assert samples.get(OPEN, direction="reverse") == 1
    # a forward tunnel counts too, under its direction
    channel = grpc.aio.insecure_channel(server[1])
    try:
        tunnel = await PendingChannel(TunnelServiceStub(channel)).start(
            metadata=bearer_metadata("caller-t"), timeout=10
        )
        try:
            stub = echo_pb2_grpc.EchoStub(tunnel)  # type: ignore[no-untyped-call]
            assert (await stub.Echo(echo_request("through"), timeout=10)).msg == "through"
            samples = await scrape(url)
            assert samples.get(OPEN, direction="forward") == 1
            assert samples.get(EVENTS, event="opened", reason="accepted") == 2
        finally:
            await tunnel.close()
    finally:
        await channel.close(None)


async def test_expose_metrics(launcher: Launcher) -> None:
    backend = await launcher.backend()
    server = await launcher.server()
    exposer = await launcher.exposer(backend, server, "exp", "--metrics-port", "0")
    url = await metrics_url(exposer)
    samples = await scrape(url)
    assert samples.get("grpctunnel_expose_tunnels_up") == 1
    assert samples.get("grpctunnel_expose_tunnels_wanted") == 1
    async with echo_stub(server[1]) as stub:
        for text in ("a", "b"):
            await stub.Echo(echo_request(text), timeout=10)
    samples = await scrape(url)
    assert samples.get("grpctunnel_expose_calls_total", code="OK") == 2
    assert samples.get("grpctunnel_expose_call_duration_seconds_count") == 2
    assert samples.get("grpctunnel_expose_relayed_bytes_total", direction="request") == 2 * size(
        echo_request("a")
    )
    # the server's watch of the backend's health is relayed but not counted as a call
    assert samples.get("grpctunnel_expose_calls_in_flight") == 0
    assert samples.get("grpctunnel_expose_backend_errors_total", stage="call") == 0
    assert samples.get("grpctunnel_expose_reconnects_total") == 0

    # the server closes the tunnel: the exposer reconnects, once
    mark = exposer.mark()
    async with admin_stub(server[1]) as admin:
        await admin.CloseTunnel(admin_pb2.CloseTunnelRequest(name="exp"), timeout=10)
    await exposer.wait_for(r"tunnel 1 connected", after=mark)
    samples = await scrape(url)
    assert samples.get("grpctunnel_expose_reconnects_total") == 1
    assert samples.get("grpctunnel_expose_tunnels_up") == 1

    # the backend goes away: the call fails, and counts as a backend error
    await launcher.procs[0].stop()
    async with echo_stub(server[1]) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Echo(echo_request("c"), timeout=10)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "backend" in (failed.value.details() or "")
    samples = await scrape(url)
    assert samples.get("grpctunnel_expose_calls_total", code="UNAVAILABLE") == 1
    assert samples.get("grpctunnel_expose_backend_errors_total", stage="call") == 1
