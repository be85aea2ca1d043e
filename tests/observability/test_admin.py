"""Who is connected: the admin service of a real `serve` (ListTunnels, WatchTunnels,
CloseTunnel) and the `grpctunnel tunnels` command over it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from security.procs import Launcher, no_traceback, run_cli

from grpctunnel import PendingChannel, TunnelServiceStub
from grpctunnel.admin.v1 import admin_pb2
from grpctunnel.gateway.auth import bearer_metadata
from grpctunnel_demo.v1 import echo_pb2_grpc

from .stack import ECHO, admin_stub, echo_request, echo_stub

pytestmark = pytest.mark.timeout(90)


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_tunnels_json_lists_what_is_open(launcher: Launcher) -> None:
    backend = await launcher.backend()
    server = await launcher.server()
    await launcher.exposer(backend, server, "alpha")
    await launcher.exposer(backend, server, "beta", "--tunnels", "2")
    async with echo_stub(server[1]) as stub:
        for _ in range(4):
            await stub.Echo(echo_request("hello"), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Echo(echo_request("error:INTERNAL:no"), timeout=10)

    result = await run_cli("tunnels", "-s", server[1], "--json")
    assert result.returncode == 0, result
    listed = _lines(result.stdout)
    assert sorted(t["name"] for t in listed) == ["alpha", "beta", "beta"]
    for tunnel in listed:
        assert tunnel["direction"] == "reverse"
        assert tunnel["services"] == [ECHO]
        assert tunnel["peer"].startswith("ipv4:127.0.0.1:")
        assert tunnel["node"]
        assert tunnel["opened_at"].endswith("Z")
        assert tunnel["calls_in_flight"] == 0
        assert not tunnel["draining"]
    assert sum(t["calls_done"] for t in listed) == 5
    assert sum(t["errors"] for t in listed) == 1
    assert sum(t["request_bytes"] for t in listed) > 0
    assert len({t["id"] for t in listed}) == 3

    # piped, the same without --json; on a terminal it would be a table
    piped = await run_cli("tunnels", "-s", server[1])
    assert sorted(t["name"] for t in _lines(piped.stdout)) == ["alpha", "beta", "beta"]
    no_traceback(*launcher.procs)


async def test_tunnels_watch_sees_an_open_and_a_close(launcher: Launcher) -> None:
    backend = await launcher.backend()
    server = await launcher.server()
    await launcher.exposer(backend, server, "early")
    watch = await launcher.start("tunnels", "--watch", "-s", server[1])
    listed = json.loads((await watch.wait_for(r'^\{"event": "listed".*')).group(0))
    assert listed["name"] == "early"

    late = await launcher.exposer(backend, server, "late")
    opened = json.loads((await watch.wait_for(r'^\{"event": "opened".*"late".*')).group(0))
    assert opened["name"] == "late" and opened["services"] == [ECHO]
    await late.stop()
    closed = json.loads((await watch.wait_for(r'^\{"event": "closed".*"late".*')).group(0))
    assert closed["name"] == "late" and closed["id"] == opened["id"]
    assert closed["reason"]
    assert await watch.stop() == 0
    assert watch.count(r'"event"') == 3, watch.output  # nothing but the three events
    no_traceback(*launcher.procs)


async def test_close_tunnel_needs_the_admin_right(launcher: Launcher, token_file: Any) -> None:
    tokens = token_file(
        {"name": "agent", "token": "agent-t", "call": False},
        {"name": "caller", "token": "caller-t", "expose": False},
        {"name": "oncall", "token": "admin-t", "expose": False, "call": False, "admin": True},
    )
    backend = await launcher.backend()
    server = await launcher.server("--token-file", tokens)
    exposer = await launcher.exposer(backend, server, "guarded", GRPCTUNNEL_TOKEN="agent-t")

    async with admin_stub(server[1]) as admin:
        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            (bearer_metadata("caller-t"), grpc.StatusCode.PERMISSION_DENIED),
            (bearer_metadata("agent-t"), grpc.StatusCode.PERMISSION_DENIED),
        ):
            for call in (
                admin.ListTunnels(admin_pb2.ListTunnelsRequest(), metadata=metadata, timeout=10),
                admin.CloseTunnel(
                    admin_pb2.CloseTunnelRequest(name="guarded"), metadata=metadata, timeout=10
                ),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() == code

        refused_cli = await run_cli("tunnels", "-s", server[1], "--token", "caller-t")
        assert refused_cli.returncode == 64 + 7, refused_cli
        assert "PERMISSION_DENIED" in refused_cli.stderr and "admin" in refused_cli.stderr

        listed = await run_cli("tunnels", "-s", server[1], "--json", "--token", "admin-t")
        assert [t["name"] for t in _lines(listed.stdout)] == ["guarded"]

        mark, server_mark = exposer.mark(), server[0].mark()
        closed = await admin.CloseTunnel(
            admin_pb2.CloseTunnelRequest(name="guarded"),
            metadata=bearer_metadata("admin-t"),
            timeout=10,
        )
        assert closed.closed == 1
        await server[0].wait_for(
            r"tunnel closed: guarded .*closed by an administrator", after=server_mark
        )
        await exposer.wait_for(r"closed by an administrator", after=mark)
        await exposer.wait_for(r"tunnel 1 connected", after=mark)  # and it comes back

        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await admin.CloseTunnel(
                admin_pb2.CloseTunnelRequest(name="no-such"),
                metadata=bearer_metadata("admin-t"),
                timeout=10,
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    no_traceback(*launcher.procs)


async def test_close_tunnel_drains_before_it_disconnects(launcher: Launcher) -> None:
    backend = await launcher.backend()
    server = await launcher.server()
    await launcher.exposer(backend, server, "drained")
    async with echo_stub(server[1]) as stub, admin_stub(server[1]) as admin:
        chat = stub.Chat(timeout=30)
        await chat.write(echo_request("first"))
        assert (await chat.read()).msg == "first"

        closing = asyncio.ensure_future(
            admin.CloseTunnel(
                admin_pb2.CloseTunnelRequest(name="drained", grace_seconds=20), timeout=30
            )
        )
        # draining: listed as closing, and new calls are no longer routed to it
        await server[0].wait_for(r"closing tunnel drained")
        listed = await admin.ListTunnels(admin_pb2.ListTunnelsRequest(), timeout=10)
        assert [(t.draining, t.calls_in_flight) for t in listed.tunnels] == [(True, 1)]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Echo(echo_request("new"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not closing.done()

        # the call in flight goes on to its end, then the tunnel closes
        await chat.write(echo_request("second"))
        assert (await chat.read()).msg == "second"
        await chat.done_writing()
        assert await chat.code() == grpc.StatusCode.OK
        assert (await closing).closed == 1
    await server[0].wait_for(r"tunnel closed: drained .*closed by an administrator")


async def test_tunnels_close_drains_and_closes_a_name(launcher: Launcher) -> None:
    backend = await launcher.backend()
    server = await launcher.server()
    exposer = await launcher.exposer(backend, server, "doomed", "--tunnels", "2")
    mark = exposer.mark()
    closed = await run_cli("tunnels", "-s", server[1], "--close", "doomed", "--grace", "1")
    assert (closed.returncode, closed.stdout) == (0, "closed 2 tunnels named doomed\n"), closed
    await exposer.wait_for(r"closed by an administrator", after=mark)

    missing = await run_cli("tunnels", "-s", server[1], "--close", "no-such")
    assert missing.returncode == 64 + 5, missing  # NOT_FOUND
    assert missing.stderr == "ERROR: NOT_FOUND: no reverse tunnel named 'no-such' is open\n"
    no_traceback(*launcher.procs)


async def test_a_forward_tunnel_lists_the_calls_that_came_through_it(launcher: Launcher) -> None:
    backend = await launcher.backend()
    server = await launcher.server()
    await launcher.exposer(backend, server, "behind")
    async with grpc.aio.insecure_channel(server[1]) as raw:
        tunnel = await PendingChannel(TunnelServiceStub(raw)).start(timeout=10)
        try:
            stub = echo_pb2_grpc.EchoStub(tunnel)
            for _ in range(3):
                await stub.Echo(echo_request("through"), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Echo(echo_request("error:INTERNAL:no"), timeout=10)

            result = await run_cli("tunnels", "-s", server[1], "--json")
            listed = {t["direction"]: t for t in _lines(result.stdout)}
            forward, reverse = listed["forward"], listed["reverse"]
            assert (forward["calls_done"], forward["errors"]) == (4, 1), forward
            assert forward["request_bytes"] == reverse["request_bytes"] > 0
            assert forward["response_bytes"] == reverse["response_bytes"] > 0
            assert forward["calls_in_flight"] == 0
        finally:
            await tunnel.close()
    no_traceback(*launcher.procs)
