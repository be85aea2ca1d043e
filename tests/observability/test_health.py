"""Health per service at a real `serve`: Check, Watch and List answered from the tunnels
that expose each service, and from what the backends behind them say of their own
health (watched through the tunnels)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from security.procs import Launcher, no_traceback

from grpctunnel.gateway.auth import bearer_metadata

from .stack import ECHO, WHO, WhoBackend, who

pytestmark = pytest.mark.timeout(90)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


async def _check(stub: health_pb2_grpc.HealthStub, service: str) -> int | grpc.StatusCode:
    try:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return int(response.status)


async def _next(watch: Any) -> int:
    """The next status a Watch call sends."""
    response = await watch.read()
    assert response is not grpc.aio.EOF, "the watch ended"
    return int(response.status)


async def test_check_watch_and_list_follow_the_tunnels(launcher: Launcher) -> None:
    backend = await launcher.backend()
    server = await launcher.server()
    channel = grpc.aio.insecure_channel(server[1])
    stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    try:
        assert await _check(stub, "") == SERVING  # the gateway itself
        assert await _check(stub, ECHO) == grpc.StatusCode.NOT_FOUND  # never seen
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=ECHO), timeout=60)
        assert await _next(watch) == SERVICE_UNKNOWN

        exposer = await launcher.exposer(backend, server, "healthy")
        assert await _next(watch) == SERVING
        assert await _check(stub, ECHO) == SERVING
        listed = await stub.List(health_pb2.HealthListRequest(), timeout=10)
        assert {k: v.status for k, v in listed.statuses.items()} == {"": SERVING, ECHO: SERVING}

        await exposer.stop()
        assert await _next(watch) == NOT_SERVING  # known, but nothing exposes it now
        assert await _check(stub, ECHO) == NOT_SERVING
        assert await _check(stub, "made.up.Service") == grpc.StatusCode.NOT_FOUND
        watch.cancel()
    finally:
        await channel.close(None)
    no_traceback(*launcher.procs)


async def test_a_backend_that_stops_serving(launcher: Launcher) -> None:
    a, b = await WhoBackend("A").start(), await WhoBackend("B").start()
    try:
        server = await launcher.server()
        for backend, name in ((a, "ta"), (b, "tb")):
            await launcher.exposer(backend.address, server, name, "--service", WHO)
        channel = grpc.aio.insecure_channel(server[1])
        stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        try:
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=WHO), timeout=60)
            assert await _next(watch) == SERVING
            assert {await who(channel) for _ in range(4)} == {"A", "B"}  # in turn

            # both backends say NOT_SERVING: so does the gateway
            await a.set(NOT_SERVING)
            await b.set(NOT_SERVING)
            assert await _next(watch) == NOT_SERVING
            assert await _check(stub, WHO) == NOT_SERVING
            # B serves again: the gateway serves, and routes only to B while A does not
            await b.set(SERVING)
            assert await _next(watch) == SERVING
            assert [await who(channel) for _ in range(6)] == ["B"] * 6
            # the backend behind B goes away: A is all there is, and it does not serve
            await b.stop()
            assert await _next(watch) == NOT_SERVING
            await a.set(SERVING)
            assert await _next(watch) == SERVING
            assert [await who(channel) for _ in range(4)] == ["A"] * 4
            watch.cancel()
        finally:
            await channel.close(None)
    finally:
        await a.stop()
        await b.stop()
    no_traceback(*launcher.procs)


async def test_list_shows_only_what_the_caller_may_call(
    launcher: Launcher, token_file: Any
) -> None:
    tokens = token_file(
        {"name": "agent", "token": "agent-t", "call": False},
        {"name": "narrow", "token": "narrow-t", "expose": False, "call": ["other.v1.Svc"]},
        {"name": "wide", "token": "wide-t", "expose": False},
    )
    backend = await launcher.backend()
    server = await launcher.server("--token-file", tokens)
    await launcher.exposer(backend, server, "listed", GRPCTUNNEL_TOKEN="agent-t")
    channel = grpc.aio.insecure_channel(server[1])
    stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    try:
        assert await _check(stub, ECHO) == SERVING  # health is public: probes need no token
        for metadata, shown in (
            ((), {""}),
            (bearer_metadata("narrow-t"), {""}),
            (bearer_metadata("wide-t"), {"", ECHO}),
        ):
            listed = await stub.List(health_pb2.HealthListRequest(), metadata=metadata, timeout=10)
            assert set(listed.statuses) == shown
    finally:
        await channel.close(None)
