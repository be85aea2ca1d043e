"""How a node applies the other nodes' tunnels (no Redis, no processes): its own tunnels
come first, another node's only when none of its own serves a call, and never for a call
another node relayed; conflicts between claims two nodes admitted at once are settled the
same way on every node (the older claim of a name or service wins; a newer instance of an
exposer takes over; a reconnection replaces its stale self); stale snapshots are ignored;
entries travel as JSON."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from grpctunnel.gateway.announce import announce_metadata
from grpctunnel.gateway.cluster_auth import NodeAuth
from grpctunnel.gateway.cluster_gateway import ClusterGateway
from grpctunnel.gateway.cluster_link import PeerLink
from grpctunnel.gateway.cluster_view import BadEntry, NodeInfo, TunnelEntry
from grpctunnel.gateway.directory import Owner
from grpctunnel.handler import TunnelRecord

SVC = "acme.v1.Ledger"
PEER = NodeInfo("peer", "127.0.0.1:1", 0.0)


def _gateway() -> ClusterGateway:
    auth = NodeAuth("secret", "here")
    return ClusterGateway(
        node_auth=auth, make_link=lambda info: PeerLink(info.id, info.advertise, auth)
    )


def _entry(n: int, *, since: float, credential: str = "billing", **given: Any) -> TunnelEntry:
    fields: dict[str, Any] = {
        "id": f"peer/{n}",
        "node": "peer",
        "kind": "reverse",
        "name": "ledger",
        "services": (SVC,),
        "credential": credential,
        "group": None,
        "listed": None,
        "instance": None,
        "epoch": None,
        "slot": None,
        "since": since,
    }
    fields.update(given)
    return TunnelEntry(**fields)


def _local(
    gateway: ClusterGateway, *, credential: str = "billing", since: float = 100.0, **announce: Any
) -> tuple[TunnelRecord, Any]:
    """A tunnel of this node, admitted and routable (its "tunnel" a plain marker)."""
    metadata = announce_metadata("ledger", [SVC], **announce)
    record = TunnelRecord("reverse", metadata, "ipv4:127.0.0.1:9")
    claim = gateway.directory.admit(Owner(credential), "ledger", [SVC], holder=record, since=since)
    record.labels["claim"] = claim
    gateway.directory.publish(claim, "local-tunnel")  # type: ignore[arg-type]
    return record, claim


async def test_own_tunnels_first_and_none_of_another_nodes_for_a_relayed_call() -> None:
    gateway = _gateway()
    gateway.view.replace(PEER, 1, [_entry(1, since=50.0)])
    remote: Any = gateway.directory.route(SVC)
    assert remote is not None and remote.node == "peer"
    assert remote.route.name == "node peer (127.0.0.1:1)"
    gateway.directory.local_only = True
    assert gateway.directory.route(SVC) is None  # a call another node relayed
    gateway.directory.local_only = False

    _, claim = _local(gateway, since=60.0)
    assert {gateway.directory.route(SVC) for _ in range(4)} == {"local-tunnel"}
    assert gateway.directory.route(SVC, "ledger") == "local-tunnel"
    gateway.directory.release(claim)
    assert gateway.directory.route(SVC) is remote
    assert gateway.directory.exposed() == {SVC: ["ledger"]}
    assert gateway.directory.exposed(local_only=True) == {}
    await gateway.view.close()


@pytest.mark.parametrize("remote_older", [True, False])
async def test_of_two_credentials_the_older_claim_wins(remote_older: bool) -> None:
    gateway = _gateway()
    record, _ = _local(gateway, credential="billing", since=100.0)
    entry = _entry(1, since=50.0 if remote_older else 150.0, credential="device", name="dev")
    gateway.view.replace(PEER, 1, [entry])
    routed: Any = gateway.directory.route(SVC)
    if remote_older:  # this node's tunnel loses its service and is closed
        assert record.pending_close is not None
        assert record.pending_close[0] == grpc.StatusCode.PERMISSION_DENIED
        assert "belongs to another credential" in record.pending_close[1]
        assert routed.node == "peer"
        assert gateway.directory.owner_of(SVC) == Owner("device")
    else:  # the other node's claim is set aside, and its node closes it
        assert record.pending_close is None
        assert routed == "local-tunnel"
        assert "entry" not in str(gateway.view.peers["peer"].claims)
        assert "peer/1" in gateway.view.peers["peer"].aside
    await gateway.view.close()


async def test_a_newer_instance_on_another_node_takes_the_name_over() -> None:
    gateway = _gateway()
    record, _ = _local(gateway, instance="old", slot=0, epoch=1)
    gateway.view.replace(PEER, 1, [_entry(1, since=200.0, instance="new", epoch=2, slot="0")])
    assert record.pending_close is not None
    assert record.pending_close[0] == grpc.StatusCode.ABORTED
    assert "taken over by a newer instance" in record.pending_close[1]
    # the older instance is fenced off here too, should it come back
    assert gateway._epochs[("billing", "ledger")] == 2
    await gateway.view.close()

    gateway = _gateway()
    record, _ = _local(gateway, instance="new", slot=0, epoch=2)
    gateway.view.replace(PEER, 1, [_entry(1, since=200.0, instance="old", epoch=1, slot="0")])
    assert record.pending_close is None
    assert "peer/1" in gateway.view.peers["peer"].aside
    await gateway.view.close()


async def test_a_reconnection_elsewhere_replaces_its_stale_self() -> None:
    gateway = _gateway()
    record, _ = _local(gateway, instance="same", slot=0, epoch=1, since=100.0)
    gateway.view.replace(PEER, 1, [_entry(1, since=150.0, instance="same", epoch=1, slot="0")])
    assert record.pending_close is not None
    assert record.pending_close[0] == grpc.StatusCode.UNAVAILABLE
    assert "replaced by a reconnection" in record.pending_close[1]
    await gateway.view.close()


async def test_stale_snapshots_and_messages_change_nothing() -> None:
    gateway = _gateway()
    assert gateway.view.replace(PEER, 5, [_entry(1, since=1.0)])
    assert not gateway.view.replace(PEER, 4, [])  # older than what was applied
    assert gateway.directory.serves(SVC)
    gateway.view.delete("peer", 6, "peer/1")
    assert not gateway.directory.serves(SVC)
    gateway.view.put("peer", 7, _entry(2, since=2.0))
    assert gateway.directory.serves(SVC)
    assert gateway.directory.tunnels_of("billing") == 1  # another node's count here too
    dropped = await gateway.view.drop("peer", "sent no heartbeat for 3s")
    assert dropped is not None and not gateway.directory.serves(SVC)
    assert "node peer (127.0.0.1:1) that held it sent no heartbeat" in (
        gateway.view.lost(SVC) or ""
    )
    await gateway.view.close()


def test_entries_travel_as_json_and_malformed_ones_are_refused() -> None:
    entry = _entry(3, since=1.5, instance="i", epoch=7, slot="2", listed=("a", "b"), group="g")
    assert TunnelEntry.from_json(entry.to_json()) == entry
    for bad in ("{}", "[1]", '{"id": 1}', entry.to_json().replace('"peer/3"', '"other/3"')):
        with pytest.raises(BadEntry):
            TunnelEntry.from_json(bad)


def test_node_proofs() -> None:
    here, there = NodeAuth("secret", "here"), NodeAuth("secret", "there")
    impostor = NodeAuth("guess", "there")
    assert here.node_of(there.tunnel_metadata()) == "there"
    assert here.node_of(impostor.tunnel_metadata()) is False
    assert here.node_of(()) is True  # a caller's tunnel: judged as such
    assert here.hop_of(there.hop_value) == "there"
    assert here.hop_of(impostor.hop_value) is None
    assert here.hop_of(there.node_value) is None  # a proof for another purpose
    assert here.hop_of("there") is None
