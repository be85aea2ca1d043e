"""TLS between the nodes of a cluster: nodes that serve TLS dial each other with TLS,
trusting `--cluster-ca`; a node that trusts another CA cannot reach the others, and
its callers hear which node it could not reach, not a hang."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from security.certs import make_certs

from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

from .fleet import Fleet, Node, needs_redis, no_traceback, routable

pytestmark = [needs_redis, pytest.mark.timeout(90)]


async def _echo(node: Node, ca: bytes, msg: str) -> str:
    credentials = grpc.ssl_channel_credentials(ca)
    async with grpc.aio.secure_channel(node.address, credentials) as channel:
        reply = await echo_pb2_grpc.EchoStub(channel).Echo(
            echo_pb2.EchoRequest(msg=msg), timeout=10
        )
    return str(reply.msg)


async def test_nodes_reach_each_other_over_tls_trusting_the_cluster_ca(
    fleet: Fleet, tmp_path: Path
) -> None:
    certs = make_certs(tmp_path / "certs")
    serving = ("--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key))
    n1, n2 = await fleet.nodes(2, *serving, "--cluster-ca", str(certs.ca))
    ca = certs.ca.read_bytes()
    backend = await fleet.backend()
    mark = n1.mark()
    await fleet.expose(backend, "secure", n2, extra=("--ca-cert", str(certs.ca)))
    await routable(n1, "secure", after=mark)

    # relayed by node 1 to node 2 over TLS, to node 2's tunnel
    assert await _echo(n1, ca, "over tls") == "over tls"

    # a node that trusts another CA for its peers cannot reach node 2
    n3 = await fleet.node(*serving, "--cluster-ca", str(certs.other_ca))
    await routable(n3, "secure")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _echo(n3, ca, "refused")
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"node {n2.id}" in (failed.value.details() or ""), failed.value.details()
    no_traceback(n1.proc, n2.proc, n3.proc)


async def test_nodes_that_require_client_certificates_present_their_own(
    fleet: Fleet, tmp_path: Path
) -> None:
    """With `--client-ca`, each node presents `--cluster-cert` to the others (a server
    certificate need not allow client authentication; this one does not)."""
    certs = make_certs(tmp_path / "certs")
    serving = ("--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key))
    n1, n2 = await fleet.nodes(
        2,
        *serving,
        "--client-ca",
        str(certs.ca),
        *("--cluster-cert", str(certs.client.cert), "--cluster-key", str(certs.client.key)),
    )
    client = ("--ca-cert", str(certs.ca), "--cert", str(certs.client.cert))
    backend = await fleet.backend()
    mark = n1.mark()
    await fleet.expose(backend, "mutual", n2, extra=(*client, "--key", str(certs.client.key)))
    await routable(n1, "mutual", after=mark)
    credentials = grpc.ssl_channel_credentials(
        certs.ca.read_bytes(), certs.client.key.read_bytes(), certs.client.cert.read_bytes()
    )
    async with grpc.aio.secure_channel(n1.address, credentials) as channel:
        reply = await echo_pb2_grpc.EchoStub(channel).Echo(
            echo_pb2.EchoRequest(msg="mutual"), timeout=10
        )
    assert reply.msg == "mutual"
    no_traceback(n1.proc, n2.proc)
