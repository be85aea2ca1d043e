"""Ownership holds across the nodes of a cluster (the rules of tests/security/
test_ownership.py): a service exposed on node 1 belongs to its credential on node 2 too, so
does a tunnel name, and a credential's tunnel limit counts its tunnels on every node. Calls
with a caller's token reach the owner through either node."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from support.launcher import run_cli

from .fleet import ECHO, Fleet, needs_redis, no_traceback, routable

pytestmark = [needs_redis, pytest.mark.timeout(90)]


def _tokens(path: Path) -> str:
    entries: list[dict[str, Any]] = [
        {"name": "billing", "token": "t-billing", "call": False},
        {"name": "device", "token": "t-device", "call": False},
        {"name": "limited", "token": "t-limited", "call": False, "max_tunnels": 1},
        {"name": "ops", "token": "t-ops", "expose": False},
    ]
    path.write_text(json.dumps({"tokens": entries}))
    return str(path)


async def test_names_services_and_limits_hold_across_nodes(fleet: Fleet, tmp_path: Path) -> None:
    tokens = _tokens(tmp_path / "tokens.json")
    n1, n2 = await fleet.nodes(2, "--token-file", tokens)
    backend, other = await asyncio.gather(fleet.backend(), fleet.backend())
    mark = n2.mark()
    owner = await fleet.expose(backend, "billing", n1, extra=("--token", "t-billing"))
    limited = await fleet.expose(
        other, "limited-1", n1, extra=("--token", "t-limited", "--service", "acme.v1.Limited")
    )
    await routable(n2, "billing", after=mark)
    await routable(n2, "limited-1", after=mark)

    # a second tunnel of a credential whose one tunnel is on node 1 (expose retries that)
    over_limit = await fleet.start(
        *("expose", other, "--to", n2.address, "--name", "limited-2"),
        *("--token", "t-limited", "--service", "acme.v1.Limited"),
    )
    impostor, name_thief = await asyncio.gather(
        # another credential announcing the service node 1's billing owns
        run_cli("expose", other, "--to", n2.address, "--name", "device-17", "--token", "t-device"),
        # another credential announcing the name billing holds on node 1
        run_cli(
            *("expose", other, "--to", n2.address, "--name", "billing"),
            *("--token", "t-device", "--service", "acme.v1.Device"),
        ),
    )
    assert impostor.returncode == 1, impostor
    assert f"PERMISSION_DENIED: service {ECHO} belongs to another credential" in impostor.stderr
    assert name_thief.returncode == 1, name_thief
    assert (
        "PERMISSION_DENIED: tunnel name 'billing' belongs to another credential"
        in name_thief.stderr
    )
    await over_limit.wait_for(r"refused tunnel 1: RESOURCE_EXHAUSTED: .* \(its limit is 1\)")

    # calls with a caller's token reach the owner through node 2, relayed to node 1
    relayed = owner.mark()
    results = await asyncio.gather(
        *(
            run_cli("call", "-s", n2.address, "Echo/Echo", f'{{"msg":"{i}"}}', "--token", "t-ops")
            for i in range(3)
        )
    )
    for i, result in enumerate(results):
        assert (result.returncode, result.stdout) == (0, f'{{"msg":"{i}"}}\n'), result
    await owner.wait_count(rf"/{ECHO}/Echo OK", 3, after=relayed)
    # and without a token, nothing (node 2 judges the caller; node 1 trusts node 2)
    refused = await run_cli("call", "-s", n2.address, "Echo/Echo", '{"msg":"x"}')
    assert refused.returncode == 64 + 16, refused  # UNAUTHENTICATED
    no_traceback(n1.proc, n2.proc, owner, limited)


async def test_a_node_that_joins_late_knows_the_grace_periods(fleet: Fleet, tmp_path: Path) -> None:
    """A service whose owner's last tunnel closed stays the owner's for the grace period
    on every node, a node that joined after the tunnel closed included: another
    credential cannot take it there, the owner can."""
    tokens = _tokens(tmp_path / "tokens.json")
    grace = ("--token-file", tokens, "--service-grace", "120")
    (n1,) = await fleet.nodes(1, *grace)
    backend, other = await asyncio.gather(fleet.backend(), fleet.backend())
    owner = await fleet.expose(backend, "billing", n1, extra=("--token", "t-billing"))
    await owner.kill()  # the grace period for Echo starts on node 1

    # node 2 joins after that, and has read the whole view once it sees a tunnel that
    # opened on node 1 before it joined
    await fleet.expose(
        other, "device-1", n1, extra=("--token", "t-device", "--service", "acme.v1.Device")
    )
    n2 = await fleet.node(*grace)
    await routable(n2, "device-1")

    impostor = await run_cli(
        "expose", other, "--to", n2.address, "--name", "device-2", "--token", "t-device"
    )
    assert impostor.returncode == 1, impostor
    assert f"PERMISSION_DENIED: service {ECHO} belongs to another credential" in impostor.stderr
    # the owner gets its service back on the new node
    await fleet.expose(backend, "billing", n2, extra=("--token", "t-billing"))
    no_traceback(n1.proc, n2.proc)


async def test_a_tunnel_limit_raced_on_two_nodes_is_settled(fleet: Fleet, tmp_path: Path) -> None:
    """Two nodes that each admit a tunnel of a credential with `max_tunnels: 1` before
    either has heard of the other's (Redis frozen meanwhile) settle it once they hear:
    the tunnel admitted first stays, the later one is closed by its node, and its
    exposer is refused from then on."""
    tokens = _tokens(tmp_path / "tokens.json")
    n1, n2 = await fleet.nodes(2, "--token-file", tokens)
    a, b = await asyncio.gather(fleet.backend(), fleet.backend())
    limited = ("--token", "t-limited", "--service", "acme.v1.Limited")
    assert fleet.redis is not None
    marks = n1.mark(), n2.mark()
    fleet.redis.signal(signal.SIGSTOP)  # the nodes hear nothing of each other
    try:
        first = await fleet.expose(a, "limited-1", n1, extra=limited)
        second = await fleet.expose(b, "limited-2", n2, extra=limited)
    finally:
        fleet.redis.signal(signal.SIGCONT)
    settled = r"closing a tunnel from .*: credential 'limited' has more than 1 tunnels open"
    await n2.proc.wait_for(settled, after=marks[1], timeout=20)
    await second.wait_for(r"RESOURCE_EXHAUSTED: .*\(its limit is 1\)", timeout=20)
    await routable(n2, "limited-1", after=marks[1], timeout=20)
    assert n1.proc.count(settled, after=marks[0]) == 0  # the first one stays
    assert first.count("lost|closed|RESOURCE_EXHAUSTED") == 0, first.output
    no_traceback(n1.proc, n2.proc, first)
