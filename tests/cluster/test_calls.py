"""Any node reaches any tunnel: three `serve --cluster` nodes sharing a real Redis, a backend
exposed on node 3, and a caller on node 1 that cannot tell: every call kind, pinned and
not, with metadata, deadlines, cancellation and rich status intact; `list`, `describe` and
health on node 2 see the backend too; a late joiner learns the whole view; and a caller
cannot forge the node-to-node hop."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.launcher import run_cli

from grpctunnel import TunnelClientOptions, TunnelServiceStub
from grpctunnel.client import PendingChannel
from grpctunnel.gateway.announce import PIN_HEADER
from grpctunnel.gateway.cluster_auth import HOP_HEADER, NODE_HEADER
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

from .fleet import ECHO, Fleet, Node, needs_redis, no_traceback, routable

pytestmark = [needs_redis, pytest.mark.timeout(90)]

DETAILS_KEY = "grpc-status-details-bin"


async def _every_kind(stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
    """Echo, Expand, Collect and Chat through ``stub``, with ``metadata`` echoed back."""
    call = stub.Echo(echo_pb2.EchoRequest(msg="hi"), metadata=metadata, timeout=10)
    assert (await call).msg == "hi"
    assert ("echo-who", "caller") in tuple(await call.initial_metadata())
    assert ("echo-who", "caller") in tuple(await call.trailing_metadata())

    expand = stub.Expand(echo_pb2.ExpandRequest(msg="x", count=3), metadata=metadata, timeout=10)
    assert [r.msg async for r in expand] == ["x", "x", "x"]

    async def words() -> Any:
        for word in ("a", "b", "c"):
            yield echo_pb2.EchoRequest(msg=word)

    collect = stub.Collect(words(), metadata=metadata, timeout=10)
    assert (await collect).msg == "a b c"

    chat = stub.Chat(metadata=metadata, timeout=10)
    for word in ("one", "two"):
        await chat.write(echo_pb2.EchoRequest(msg=word))
        assert (await chat.read()).msg == word
    await chat.done_writing()
    assert await chat.code() == grpc.StatusCode.OK


async def test_a_caller_on_one_node_reaches_a_backend_on_another(fleet: Fleet) -> None:
    n1, n2, n3 = await fleet.nodes(3)
    backend = await fleet.backend()
    marks = n1.mark(), n2.mark()
    exposer = await fleet.expose(backend, "b3", n3)
    await routable(n1, "b3", after=marks[0])
    await routable(n2, "b3", after=marks[1])

    relayed = exposer.mark()
    async with n1.channel() as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        await _every_kind(stub, (("echo-who", "caller"),))
        await _every_kind(stub, (("echo-who", "caller"), (PIN_HEADER, "b3")))

        # a status with rich details, end to end
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Echo(echo_pb2.EchoRequest(msg="error-details:NOT_FOUND:nope"), timeout=10)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert failed.value.details() == "nope"
        assert any(k == DETAILS_KEY for k, _ in failed.value.trailing_metadata() or ())

        # the caller's deadline holds across both hops
        chat = stub.Chat(timeout=0.5)
        await chat.write(echo_pb2.EchoRequest(msg="slow"))
        assert (await chat.read()).msg == "slow"
        assert await chat.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        # cancelling reaches the backend's side of the relay
        chat = stub.Chat(timeout=10)
        await chat.write(echo_pb2.EchoRequest(msg="bye"))
        assert (await chat.read()).msg == "bye"
        chat.cancel()
        await exposer.wait_for(rf"/{ECHO}/Chat CANCELLED", after=relayed)

        # a pin to a name no node holds
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Echo(
                echo_pb2.EchoRequest(msg="hi"), metadata=((PIN_HEADER, "nope"),), timeout=10
            )
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "through tunnel 'nope'" in (failed.value.details() or "")

    # every call went through node 3's tunnel: the exposer relayed each
    assert exposer.count(rf"/{ECHO}/Echo OK", after=relayed) == 2
    assert exposer.count(rf"/{ECHO}/Chat OK", after=relayed) == 2

    # node 2 lists, describes and reports the health of what node 3 holds
    listed, described = await asyncio.gather(
        run_cli("list", "-s", n2.address), run_cli("describe", "-s", n2.address, ECHO)
    )
    assert listed.returncode == 0 and ECHO in listed.stdout.split(), listed
    assert described.returncode == 0 and "rpc Chat" in described.stdout, described
    async with n2.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=ECHO), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    no_traceback(n1.proc, n2.proc, n3.proc, exposer)


async def test_a_node_that_joins_late_learns_the_whole_view(fleet: Fleet) -> None:
    n1 = await fleet.node()
    backend = await fleet.backend()
    await fleet.expose(backend, "early", n1)
    late = await fleet.node()
    assert "1 other nodes, 1 of their tunnels" in late.proc.output, late.proc.output
    async with late.channel() as channel:
        reply = await echo_pb2_grpc.EchoStub(channel).Echo(
            echo_pb2.EchoRequest(msg="late"), timeout=10
        )
    assert reply.msg == "late"
    await n1.proc.wait_for(rf"cluster: node {late.id} \(127\.0\.0\.1:\d+\) appeared")


async def test_a_caller_cannot_forge_the_hop(fleet: Fleet) -> None:
    """The hop header, and the node credential of a tunnel, are honoured only with a
    valid proof of the cluster token: a caller forging either is refused, directly or
    inside a forward tunnel of its own."""
    n1, n2 = await fleet.nodes(2)
    backend = await fleet.backend()
    mark = n1.mark()
    await fleet.expose(backend, "b2", n2)
    await routable(n1, "b2", after=mark)
    forged = ((HOP_HEADER, f"{n2.id}:{'0' * 64}"),)
    async with n1.channel() as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for metadata in (forged, ((HOP_HEADER, "just-a-name"),)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Echo(echo_pb2.EchoRequest(msg="x"), metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert HOP_HEADER in (refused.value.details() or "")

        # inside a caller's forward tunnel: the same
        tunnel = await PendingChannel(TunnelServiceStub(channel)).start(timeout=10)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await echo_pb2_grpc.EchoStub(tunnel).Echo(
                    echo_pb2.EchoRequest(msg="x"), metadata=forged, timeout=10
                )
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            reply = await echo_pb2_grpc.EchoStub(tunnel).Echo(
                echo_pb2.EchoRequest(msg="fine"), timeout=10
            )
            assert reply.msg == "fine"
        finally:
            await tunnel.close()

        # a tunnel claiming to be a node's, without the proof
        impostor = PendingChannel(
            TunnelServiceStub(channel),
            TunnelClientOptions(metadata=((NODE_HEADER, f"{n2.id}:{'1' * 64}"),)),
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await impostor.start(timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await _reflection_is_refused_too(n1, forged)


async def _reflection_is_refused_too(node: Node, forged: tuple[tuple[str, str], ...]) -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    from grpctunnel.gateway.reflection_client import reflect

    async with node.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reflect(
                channel,
                reflection_pb2.ServerReflectionRequest(list_services=""),
                metadata=forged,
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_metrics_count_the_nodes_and_the_calls_relayed_to_them(fleet: Fleet) -> None:
    """serve --metrics-port in a cluster: the nodes it sees, and the calls it relayed to
    the node holding the tunnel, change by exactly what happened."""
    from observability.stack import METRICS_AT, scrape

    n1 = await fleet.node("--metrics-port", "0")
    n2 = await fleet.node()
    backend = await fleet.backend()
    mark = n1.mark()
    await fleet.expose(backend, "far", n2)
    await routable(n1, "far", after=mark)
    url = (await n1.proc.wait_for(METRICS_AT)).group(1)
    before = await scrape(url)
    assert before.get("grpctunnel_cluster_nodes") == 2
    async with n1.channel() as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for i in range(3):
            reply = await stub.Echo(echo_pb2.EchoRequest(msg=f"m{i}"), timeout=10)
            assert reply.msg == f"m{i}"
    after = await scrape(url)
    relayed = after.total("grpctunnel_cluster_relayed_calls_total", code="OK") - before.total(
        "grpctunnel_cluster_relayed_calls_total", code="OK"
    )
    assert relayed == 3


async def test_the_tunnel_listing_is_cluster_wide(fleet: Fleet) -> None:
    """`grpctunnel tunnels` against any node lists every node's tunnels, each with the
    node that holds it; a tunnel that closes leaves every listing."""
    import json

    n1, n2 = await fleet.nodes(2)
    backend = await fleet.backend()
    mark = n1.mark()
    exposer = await fleet.expose(backend, "listed", n2)
    await routable(n1, "listed", after=mark)

    async def listing(node: Node) -> list[dict[str, Any]]:
        result = await run_cli("tunnels", "--json", "-s", node.address)
        assert result.returncode == 0, result
        return [json.loads(line) for line in result.stdout.splitlines()]

    for node in (n1, n2):
        found = [t for t in await listing(node) if t["name"] == "listed"]
        assert [t["node"] for t in found] == [n2.id], found
        assert found[0]["services"] == [ECHO]
    await exposer.kill()
    for _ in range(50):  # bounded (each listing is a process); the view learns within 1 s
        if not [t for t in await listing(n1) if t["name"] == "listed"]:
            break
    else:
        raise AssertionError("the closed tunnel stayed in node 1's listing")


async def test_the_node_hop_is_not_capped_by_the_per_tunnel_limit(fleet: Fleet) -> None:
    """`--max-streams-per-tunnel` caps one exposer's or device's forward tunnel; the one
    tunnel between two nodes carries the calls of all of a node's callers, so it is not
    held to that cap: six calls in progress at once through node 1 to node 2's backend,
    with a cap of two per tunnel, all succeed."""
    n1, n2 = await fleet.nodes(2, "--max-streams-per-tunnel", "2")
    backend = await fleet.backend()
    mark = n1.mark()
    await fleet.expose(backend, "capped", n2)
    await routable(n1, "capped", after=mark)

    async with n1.channel() as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        chats = [stub.Chat(timeout=20) for _ in range(6)]
        # every chat is in progress at once: each has answered its first message
        for i, chat in enumerate(chats):
            await chat.write(echo_pb2.EchoRequest(msg=f"open {i}"))
            assert (await chat.read()).msg == f"open {i}"
        for chat in chats:
            await chat.done_writing()
        assert [await chat.code() for chat in chats] == [grpc.StatusCode.OK] * 6

    # the cap still holds for a forward tunnel a client opens
    async with n1.channel() as raw:
        tunnel = await PendingChannel(TunnelServiceStub(raw)).start(timeout=10)
        try:
            stub = echo_pb2_grpc.EchoStub(tunnel)
            held = [stub.Chat(timeout=20) for _ in range(3)]
            outcomes: list[object] = []
            for i, chat in enumerate(held):
                try:
                    await chat.write(echo_pb2.EchoRequest(msg=f"f{i}"))
                    outcomes.append((await chat.read()).msg)
                except grpc.aio.AioRpcError as e:
                    outcomes.append(e.code())
            assert outcomes == ["f0", "f1", grpc.StatusCode.RESOURCE_EXHAUSTED]
            for chat in held:
                chat.cancel()
        finally:
            await tunnel.close()


async def test_closing_a_tunnel_by_name_reaches_the_node_that_holds_it(fleet: Fleet) -> None:
    """`tunnels --close NAME` against any node closes the tunnels of that name on every
    node: node 1 asks node 2, which holds them, over the hop."""
    n1, n2 = await fleet.nodes(2)
    backend = await fleet.backend()
    mark = n1.mark()
    exposer = await fleet.expose(backend, "far", n2)
    await routable(n1, "far", after=mark)
    closing, held = exposer.mark(), n2.mark()
    closed = await run_cli("tunnels", "-s", n1.address, "--close", "far", "--grace", "1")
    assert (closed.returncode, closed.stdout) == (0, "closed 1 tunnel named far\n"), closed
    await exposer.wait_for(r"closed by an administrator", after=closing)
    await n2.proc.wait_for(r"closing tunnel far \(1 open\) on request", after=held)
    no_traceback(n1.proc, n2.proc, exposer)


async def test_a_node_counts_the_tunnels_its_tokens_refuse(fleet: Fleet) -> None:
    """With tokens, a node's interceptor refuses a tunnel without one, and its metrics
    count the refusal, as a single serve's do."""
    from observability.stack import METRICS_AT, scrape

    n1 = await fleet.node("--metrics-port", "0", "--token", "node-secret")
    url = (await n1.proc.wait_for(METRICS_AT)).group(1)
    backend = await fleet.backend()
    refused = await run_cli("expose", backend, "--to", n1.address, "--name", "nobody")
    assert refused.returncode == 1, refused
    assert "UNAUTHENTICATED" in refused.stderr, refused.stderr
    after = await scrape(url)
    assert (
        after.get("grpctunnel_tunnel_events_total", event="refused", reason="unauthenticated") == 1
    )
