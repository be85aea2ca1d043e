"""Faults of a cluster, against real processes: a node killed (its exposer moves to the next
node it was given, calls succeed again within the backoff bound), a node frozen (it drops
out of the view within the heartbeat bound, and comes back), and Redis killed and restarted
while calls flow (no call to a tunnel known before the outage fails because of it)."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import grpc
import pytest

from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

from .fleet import Fleet, Node, needs_redis, no_traceback, routable

pytestmark = [needs_redis, pytest.mark.timeout(90)]

TTL = 3.0  # the nodes' default --cluster-ttl
DROPPED_WITHIN = TTL + TTL / 3 + 2.0  # expiry, one heartbeat interval to notice, slack
LEFT = r"cluster: node {id} \(127\.0\.0\.1:\d+\) left: sent no heartbeat"


async def _echo(node: Node, msg: str, timeout: float = 5.0) -> str:
    async with node.channel() as channel:
        reply = await echo_pb2_grpc.EchoStub(channel).Echo(
            echo_pb2.EchoRequest(msg=msg), timeout=timeout
        )
    return str(reply.msg)


async def test_the_exposer_moves_when_its_node_is_killed(fleet: Fleet) -> None:
    n1, n2, n3 = await fleet.nodes(3)
    backend = await fleet.backend()
    marks = n1.mark(), n2.mark()
    exposer = await fleet.expose(backend, "mover", n3, n1)
    await routable(n1, "mover", after=marks[0])
    await routable(n2, "mover", after=marks[1])
    assert await _echo(n1, "before") == "before"

    moved, opened = exposer.mark(), n1.mark()
    killed_at = time.monotonic()
    await n3.proc.kill()
    await exposer.wait_for(rf"tunnel 1 connected to {re.escape(n1.address)}", after=moved)
    await routable(n1, "mover", after=opened)  # admitted by node 1, not only dialled
    assert await _echo(n1, "after") == "after"  # the tunnel is node 1's own now
    recovered = time.monotonic() - killed_at
    # the exposer's first retry goes to node 1, after at most --max-backoff 1
    assert recovered < 5.0, recovered
    # node 2 routes to the tunnel's new node at once, and drops node 3 within the bound
    assert await _echo(n2, "via node 2") == "via node 2"
    await n2.proc.wait_for(LEFT.format(id=n3.id), after=marks[1], timeout=DROPPED_WITHIN)
    assert time.monotonic() - killed_at < DROPPED_WITHIN + 1
    no_traceback(n1.proc, n2.proc, exposer)


async def test_a_frozen_node_drops_out_of_the_view_and_comes_back(fleet: Fleet) -> None:
    n1, n2, n3 = await fleet.nodes(3)
    backend = await fleet.backend()
    marks = n1.mark(), n2.mark()
    keepalive = ("--keepalive-interval", "1", "--keepalive-timeout", "1")
    exposer = await fleet.expose(backend, "thaw", n3, n1, extra=keepalive)
    await routable(n2, "thaw", after=marks[1])

    moved, learnt = exposer.mark(), n2.mark()
    frozen_at = time.monotonic()
    n3.proc.signal(signal.SIGSTOP)
    await n2.proc.wait_for(LEFT.format(id=n3.id), after=marks[1], timeout=DROPPED_WITHIN)
    dropped = time.monotonic() - frozen_at
    # its last heartbeat was at most ttl / 3 before it froze
    assert TTL - TTL / 3 - 0.2 < dropped < DROPPED_WITHIN, dropped
    # the exposer's keepalive finds the frozen node; it moves to node 1
    await exposer.wait_for(rf"tunnel 1 connected to {re.escape(n1.address)}", after=moved)
    await routable(n2, "thaw", after=learnt)  # node 2 has learnt where it went
    assert await _echo(n2, "moved") == "moved"

    back = n2.mark()
    n3.proc.signal(signal.SIGCONT)
    await n3.proc.wait_for(r"cluster: this node's heartbeat had expired .*: announcing it again")
    await n2.proc.wait_for(rf"cluster: node {n3.id} \(127\.0\.0\.1:\d+\) appeared", after=back)
    # node 3 learns that its stale tunnel was replaced, and every node routes to node 1's
    for node in (n1, n2, n3):
        assert await _echo(node, "thawed") == "thawed"
    no_traceback(n1.proc, n2.proc, n3.proc, exposer)


async def test_redis_restarting_while_calls_flow_fails_no_call(fleet: Fleet) -> None:
    n1, n2 = await fleet.nodes(2)
    backend = await fleet.backend()
    mark = n1.mark()
    exposer = await fleet.expose(backend, "steady", n2)
    await routable(n1, "steady", after=mark)

    done: list[str] = []
    failed: list[str] = []
    stop = asyncio.Event()

    async def caller(i: int) -> None:
        async with n1.channel() as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            for n in range(100_000):  # bounded; ends when told
                if stop.is_set():
                    return
                try:
                    reply = await stub.Echo(echo_pb2.EchoRequest(msg=f"{i}.{n}"), timeout=5)
                    done.append(reply.msg)
                except grpc.aio.AioRpcError as e:
                    failed.append(f"{e.code().name}: {e.details()}")

    callers = [asyncio.ensure_future(caller(i)) for i in range(4)]
    try:
        marks = n1.mark(), n2.mark()
        assert fleet.redis is not None
        await fleet.redis.kill()
        for node, at in zip((n1, n2), marks, strict=True):
            await node.proc.wait_for(r"cluster: degraded: Redis at .* cannot be reached", after=at)
        during = len(done)
        await _more_calls(done, during + 200)
        await fleet.start_redis()
        for node, at in zip((n1, n2), marks, strict=True):
            await node.proc.wait_for(r"cluster: recovered: Redis at .* reachable again", after=at)
        # the view is whole again: a tunnel opened now on node 1 is routable on node 2
        after = n2.mark()
        await fleet.expose(await fleet.backend(), "after-outage", n1)
        await routable(n2, "after-outage", after=after)
        await _more_calls(done, len(done) + 200)
    finally:
        stop.set()
        await asyncio.gather(*callers)
    assert not failed, failed[:5]
    assert len(done) > 400
    for node in (n1, n2):  # no node was dropped for the outage
        assert node.proc.count(r"cluster: node \w+ .* left") == 0, node.proc.output
    no_traceback(n1.proc, n2.proc, exposer)


async def _more_calls(done: list[str], count: int, timeout: float = 20.0) -> None:
    """Waits until ``count`` calls have succeeded (each call's reply is the event)."""
    deadline = time.monotonic() + timeout
    while len(done) < count:
        assert time.monotonic() < deadline, f"only {len(done)} calls of {count} succeeded"
        await asyncio.sleep(0.05)  # the callers append as their calls end
