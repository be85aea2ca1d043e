"""Who gets in, against real processes: `serve` with tokens, `expose` and `call` with and
without the right ones; rights to expose and to call; tunnel names owned by credentials;
a credential's tunnel limit."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpctunnel import PendingChannel, ReverseTunnelServer, TunnelServiceStub

from .procs import Launcher, assert_failure, no_traceback, run_cli

pytestmark = pytest.mark.timeout(60)

ECHO = "grpctunnel.demo.v1.Echo"
UNAUTHENTICATED = 64 + 16
PERMISSION_DENIED = 64 + 7


async def test_missing_and_wrong_tokens(launcher: Launcher, tmp_path: Path) -> None:
    backend = await launcher.backend()
    server = await launcher.server("--token", "s3cret")
    proc, address = server

    for extra, words in (((), "missing credentials"), (("--token", "nope"), "invalid token")):
        refused = await run_cli("expose", backend, "--to", address, "--name", "a", *extra)
        assert_failure(
            refused, 1, f"server {address} refused the tunnel: UNAUTHENTICATED: {words}", "hint: "
        )
    await proc.wait_for(r"refused /grpctunnel.v1.TunnelService/OpenReverseTunnel: UNAUTHENTICATED")
    # the token may come from the environment
    await launcher.exposer(backend, server, "a", GRPCTUNNEL_TOKEN="s3cret")

    call = ("call", "-s", address, "Echo/Echo", '{"msg": "x"}')
    missing = await run_cli(*call)
    assert_failure(
        missing,
        UNAUTHENTICATED,
        "ERROR: UNAUTHENTICATED: missing credentials",
        "hint: the server requires a token: pass --token",
    )
    wrong = await run_cli(*call, "--token", "nope")
    assert_failure(wrong, UNAUTHENTICATED, "ERROR: UNAUTHENTICATED: invalid token")
    for args in (("list", "-s", address), ("describe", "-s", address, ECHO)):
        assert_failure(await run_cli(*args), UNAUTHENTICATED, "UNAUTHENTICATED")

    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    for extra, env in (
        (("--token", "s3cret"), {}),
        (("--token-file", str(token_file)), {}),
        ((), {"GRPCTUNNEL_TOKEN": "s3cret"}),
    ):
        ok = await run_cli(*call, *extra, **env)
        assert (ok.returncode, ok.stdout, ok.stderr) == (0, '{"msg":"x"}\n', ""), ok

    # the token is never shown, not even with -v
    shown = await run_cli(*call, "--token", "s3cret", "-v")
    assert "s3cret" not in shown.stderr and "authorization: Bearer (redacted)" in shown.stderr

    # straight at the tunnel service: no tunnel without a token; health stays open
    channel = grpc.aio.insecure_channel(address)
    try:
        stub = TunnelServiceStub(channel)
        for opening in (
            PendingChannel(stub).start(timeout=10),
            ReverseTunnelServer(stub).serve(timeout=10),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await opening
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close()
    no_traceback(proc)


async def test_rights_to_expose_and_to_call(launcher: Launcher, token_file: Any) -> None:
    tokens = token_file(
        {
            "name": "agent",
            "token": "agent-t",
            "call": False,
            "expose_names": ["agent-1"],
            "expose_services": [ECHO],
        },
        {"name": "caller", "token": "caller-t", "expose": False, "call": [ECHO]},
        {"name": "narrow", "token": "narrow-t", "expose": False, "call": ["some.v1.Other"]},
    )
    backend = await launcher.backend()
    server = await launcher.server("--token-file", tokens)
    address = server[1]

    async def expose(name: str, token: str, *extra: str) -> Any:
        return await run_cli(
            "expose", backend, "--to", address, "--name", name, "--token", token, *extra
        )

    assert_failure(
        await expose("agent-1", "caller-t"),
        1,
        "PERMISSION_DENIED: credential 'caller' may not expose services",
    )
    assert_failure(
        await expose("agent-2", "agent-t"),
        1,
        "PERMISSION_DENIED: credential 'agent' may not expose under the name 'agent-2'",
    )
    assert_failure(
        await expose("agent-1", "agent-t", "--service", ECHO, "--service", "other.v1.Secret"),
        1,
        "PERMISSION_DENIED: credential 'agent' may not expose other.v1.Secret",
    )
    await launcher.exposer(backend, server, "agent-1", "--token", "agent-t")

    call = ("call", "-s", address, "Echo/Echo", '{"msg": "x"}', "--token")
    # an agent that may expose cannot call, not even what it exposes itself
    assert_failure(
        await run_cli(*call, "agent-t"),
        PERMISSION_DENIED,
        "PERMISSION_DENIED: credential 'agent' may not make calls",
    )
    ok = await run_cli(*call, "caller-t")
    assert (ok.returncode, ok.stdout) == (0, '{"msg":"x"}\n'), ok
    # rights per service: reflection shows a credential only what it may call, so the
    # name does not even resolve; called by its full name without reflection, the call
    # itself is refused (tests/security/test_gateway_rights.py)
    assert_failure(await run_cli(*call, "narrow-t"), 1, "unknown service 'Echo'")
    listed = await run_cli("list", "-s", address, "--token", "narrow-t")
    assert listed.returncode == 0 and ECHO not in listed.stdout, listed
    no_traceback(server[0])


async def test_a_tunnel_name_belongs_to_its_credential(launcher: Launcher, token_file: Any) -> None:
    tokens = token_file(
        {"name": "one", "token": "t1", "call": False},
        {"name": "two", "token": "t2", "call": False},
        {"name": "ops", "token": "t-ops", "expose": False},
    )
    backend = await launcher.backend()
    server = await launcher.server("--token-file", tokens)
    proc, address = server
    await launcher.exposer(backend, server, "shared", "--token", "t1")

    mark = proc.mark()
    taken = await run_cli("expose", backend, "--to", address, "--name", "shared", "--token", "t2")
    assert_failure(
        taken, 1, "PERMISSION_DENIED: tunnel name 'shared' belongs to another credential"
    )
    assert proc.count(r"tunnel closed: shared", after=mark) == 0
    # the other credential is welcome under a name of its own, with a service of its own
    # (the service behind "shared" belongs to "one")
    await launcher.exposer(backend, server, "theirs", "--token", "t2", "--service", "two.v1.Own")
    pinned = await run_cli(
        "call",
        "-s",
        address,
        "Echo/Echo",
        '{"msg": "p"}',
        "-H",
        "grpctunnel-tunnel: shared",
        "--token",
        "t-ops",
    )
    assert (pinned.returncode, pinned.stdout) == (0, '{"msg":"p"}\n'), pinned


async def test_same_credential_takes_over_its_stale_tunnels(
    launcher: Launcher, token_file: Any
) -> None:
    tokens = token_file(
        {"name": "one", "token": "t1", "call": False},
        {"name": "ops", "token": "t-ops", "expose": False},
    )
    backend = await launcher.backend()
    server = await launcher.server("--token-file", tokens)
    proc, address = server
    mark = proc.mark()
    old = await launcher.exposer(backend, server, "a", "--token", "t1", "--tunnels", "2")
    await proc.wait_count(r"tunnel opened: a from", 2, after=mark)

    # frozen: to the server, its tunnels still look alive (keepalive has not run out yet)
    old.signal(signal.SIGSTOP)
    mark = proc.mark()
    started = time.monotonic()
    new = await launcher.exposer(backend, server, "a", "--token", "t1", "--tunnels", "2")
    await proc.wait_count(r"tunnel opened: a from", 2, after=mark)
    await proc.wait_count(r"tunnel closed: a from .*taken over by a newer instance", 2, after=mark)
    taken_over_in = time.monotonic() - started
    assert taken_over_in < 10, taken_over_in  # at once, not after a keepalive timeout
    # the two tunnels of the new exposer coexist: neither replaced the other
    assert proc.count(r"tunnel closed: a from", after=mark) == 2, proc.output

    # every call reaches the new exposer (one routed to the frozen one would time out)
    results = await asyncio.gather(
        *(
            run_cli(
                "call",
                "-s",
                address,
                "Echo/Echo",
                f'{{"msg": "{i}"}}',
                "--timeout",
                "5",
                "--token",
                "t-ops",
            )
            for i in range(6)
        )
    )
    for i, result in enumerate(results):
        assert (result.returncode, result.stdout) == (0, f'{{"msg":"{i}"}}\n'), result

    # thawed, the old exposer learns it was replaced and stops rather than fight for the name
    old.signal(signal.SIGCONT)
    assert await old.wait_exit() == 1, old.output
    assert "was taken over by another instance using the same credential" in old.output
    assert new.running
    assert proc.count(r"tunnel closed: a from", after=mark) == 2, proc.output
    no_traceback(proc, new)


async def test_tunnels_per_credential(launcher: Launcher, token_file: Any) -> None:
    tokens = token_file({"name": "agent", "token": "t1", "call": False, "max_tunnels": 2})
    backend = await launcher.backend()
    server = await launcher.server("--token-file", tokens)
    proc, address = server

    three = await launcher.start(
        "expose", backend, "--to", address, "--name", "a", "--tunnels", "3",
        "--max-backoff", "1", "--token", "t1",
    )  # fmt: skip
    await proc.wait_count(r"tunnel opened: a from", 2)
    limit = r"RESOURCE_EXHAUSTED: credential 'agent' already has 2 tunnels open \(its limit is 2\)"
    await three.wait_for(rf"refused tunnel \d: {limit}")
    await proc.wait_for(rf"refused reverse tunnel from .*{limit}")
    # another process of the same credential is held to the same limit
    other = await launcher.start(
        "expose", backend, "--to", address, "--name", "b", "--max-backoff", "1", "--token", "t1"
    )
    await other.wait_for(rf"refused tunnel 1: {limit}")
    assert proc.count(r"tunnel opened:") == 2, proc.output
    assert three.running and other.running  # they keep trying: the limit may free up
    no_traceback(proc, three, other)
