"""A cluster node's view of the other nodes' tunnels, applied to its gateway's directory.

Each node publishes one :class:`TunnelEntry` per tunnel it admitted (name, services, the
credential that owns it, which exposer instance and slot, when it was admitted); see
:mod:`~grpctunnel.gateway.cluster` for how entries travel. :class:`ClusterView` keeps
the entries of every peer node and makes each one a claim in this node's
:class:`~grpctunnel.gateway.directory.TunnelDirectory`, marked with its node: admission
here then sees the names, services and tunnel counts held anywhere in the cluster, and
a call for a service no tunnel here serves is routed to a :class:`RemoteTunnel`, whose
route relays it to the node that holds the tunnel (:mod:`~grpctunnel.gateway.cluster_link`).

Two nodes can admit conflicting tunnels at the same moment, each before it learnt of the
other's. Every node settles such a conflict the same way when it learns of it, so the
cluster agrees without asking anyone: between two credentials, the claim admitted first
keeps the name or service and the other tunnel is closed with PERMISSION_DENIED by its
node; between two instances of one exposer (same credential and name), the newer
instance takes over (the older one's tunnels close with ABORTED, "taken over ..."), and
of two tunnels of one instance and slot the later one replaces the earlier. An entry
that lost is kept aside, not routed to, until its node retracts it.

Nothing here does I/O but closing tunnels and links; it is driven by the cluster node.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import grpc

from grpctunnel import metadata as md
from grpctunnel.gateway.admin import TunnelEntry as AdminEntry
from grpctunnel.gateway.announce import (
    EPOCH_HEADER,
    INSTANCE_HEADER,
    NAME_HEADER,
    SERVICES_HEADER,
    SLOT_HEADER,
    TAKEN_OVER,
    announced_epoch,
)
from grpctunnel.gateway.directory import Claim, Owner
from grpctunnel.gateway.method_kinds import MethodKinds
from grpctunnel.gateway.proxy import Route
from grpctunnel.handler import TunnelRecord

if TYPE_CHECKING:
    from grpctunnel.gateway.cluster_gateway import ClusterGateway
    from grpctunnel.gateway.cluster_link import HopChannel, PeerLink

log = logging.getLogger("grpctunnel")

LOST_REMEMBERED = 60.0  # seconds a service lost with its node is named in errors


class BadEntry(ValueError):
    """An entry or node record read from the shared view is malformed."""


@dataclass(frozen=True)
class TunnelEntry:
    """One tunnel of one node, as the cluster shares it."""

    id: str  # "<node id>/<number>": unique in the cluster
    node: str
    kind: str  # "reverse" or "forward"
    name: str
    services: tuple[str, ...]
    credential: str | None
    group: str | None
    listed: tuple[str, ...] | None
    instance: str | None
    epoch: int | None
    slot: str | None
    since: float  # when its node admitted it, seconds since the Unix epoch

    def owner(self) -> Owner:
        listed = frozenset(self.listed) if self.listed is not None else None
        return Owner(self.credential, self.group, listed)

    def metadata(self) -> md.MetadataPairs:
        """The announce headers the tunnel opened with (as far as ownership needs)."""
        pairs: list[tuple[str, str | bytes]] = [
            (NAME_HEADER, self.name),
            (SERVICES_HEADER, ",".join(self.services)),
        ]
        if self.instance:
            pairs.append((INSTANCE_HEADER, self.instance))
        if self.epoch is not None:
            pairs.append((EPOCH_HEADER, str(self.epoch)))
        if self.slot is not None:
            pairs.append((SLOT_HEADER, self.slot))
        return tuple(pairs)

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "node": self.node,
                "kind": self.kind,
                "name": self.name,
                "services": list(self.services),
                "credential": self.credential,
                "group": self.group,
                "listed": list(self.listed) if self.listed is not None else None,
                "instance": self.instance,
                "epoch": self.epoch,
                "slot": self.slot,
                "since": self.since,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> TunnelEntry:
        try:
            data = json.loads(text)
            listed = data.get("listed")
            epoch = data.get("epoch")
            entry = cls(
                id=_str(data["id"]),
                node=_str(data["node"]),
                kind=_str(data["kind"]),
                name=_str(data.get("name") or ""),
                services=tuple(_str(s) for s in data.get("services") or ()),
                credential=_opt_str(data.get("credential")),
                group=_opt_str(data.get("group")),
                listed=tuple(_str(s) for s in listed) if listed is not None else None,
                instance=_opt_str(data.get("instance")),
                epoch=int(epoch) if epoch is not None else None,
                slot=_opt_str(data.get("slot")),
                since=float(data["since"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadEntry(f"malformed tunnel entry: {e!r}") from None
        if entry.kind not in ("reverse", "forward") or not entry.id.startswith(entry.node + "/"):
            raise BadEntry(f"malformed tunnel entry {entry.id!r}")
        return entry


@dataclass(frozen=True)
class NodeInfo:
    """A node as the cluster knows it: its id and where other nodes reach it."""

    id: str
    advertise: str
    started: float

    def to_json(self) -> str:
        return json.dumps(
            {"id": self.id, "advertise": self.advertise, "started": self.started},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> NodeInfo:
        try:
            data = json.loads(text)
            return cls(_str(data["id"]), _str(data["advertise"]), float(data["started"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadEntry(f"malformed node record: {e!r}") from None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {value!r}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


@dataclass(eq=False)
class RemoteTunnel:
    """A tunnel of another node, as this node routes to it: through the node."""

    name: str
    node: str
    route: Route
    kinds: MethodKinds


class RemoteHolder:
    """What holds a claim of another node in this node's directory: reads like a tunnel
    record to admission (metadata, peer, labels), and "closing" it sets it aside here
    (its node closes the tunnel itself when it learns why)."""

    def __init__(self, entry: TunnelEntry, on_close: Callable[[TunnelEntry, str], None]) -> None:
        self.entry = entry
        self.metadata = entry.metadata()
        self.peer = f"node {entry.node}"
        self.labels: dict[str, Any] = {}
        self._on_close = on_close

    def metadata_value(self, key: str) -> str | bytes | None:
        return md.first_value(self.metadata, key)

    def close(self, reason: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self._on_close(self.entry, reason)


@dataclass(eq=False)
class Peer:
    """Another node of the cluster and its tunnels, as last learnt."""

    info: NodeInfo
    link: PeerLink
    kinds: MethodKinds
    version: int = -1  # of the last change of its tunnels applied here
    entries: dict[str, TunnelEntry] = field(default_factory=dict)
    claims: dict[str, Claim[Any]] = field(default_factory=dict)  # entries applied
    aside: dict[str, str] = field(default_factory=dict)  # entries not applied, and why
    channels: dict[str, HopChannel] = field(default_factory=dict)  # by pinned name
    lost: int = 0  # routable tunnels it held when it was dropped
    listed: dict[str, AdminEntry] = field(default_factory=dict)  # in the admin listing

    def describe(self) -> str:
        return f"node {self.info.id} ({self.info.advertise})"


LinkFactory = Callable[[NodeInfo], "PeerLink"]


class ClusterView:
    """The tunnels of the other nodes, applied to ``gateway``'s directory; see the
    module documentation. ``make_link`` opens the link to a node that appears."""

    def __init__(self, gateway: ClusterGateway, node_id: str, make_link: LinkFactory) -> None:
        self.gateway = gateway
        self.node_id = node_id
        self._make_link = make_link
        self.peers: dict[str, Peer] = {}
        self._local: dict[Claim[Any], TunnelEntry] = {}
        self._counter = 0
        self._lost: dict[str, tuple[float, str]] = {}  # service -> (when, what was lost)
        # told of every change of this node's own tunnels: (entry, None) or (None, id)
        self.on_local_change: Callable[[TunnelEntry | None, str | None], None] | None = None
        if gateway.metrics is not None:
            gateway.metrics.node_seen(node_id)
        gateway.admin.node = node_id  # listings name the node that holds each tunnel

    # -- this node's own tunnels ------------------------------------------------------

    def local_entries(self) -> list[TunnelEntry]:
        return list(self._local.values())

    def local_added(self, claim: Claim[Any], record: TunnelRecord) -> None:
        """The gateway admitted (forward) or opened (reverse) a tunnel of its own."""
        if claim in self._local or claim.released:
            return
        self._counter += 1
        epoch = announced_epoch(record.metadata)
        instance = record.metadata_value(INSTANCE_HEADER)
        slot = record.metadata_value(SLOT_HEADER)
        owner = claim.owner
        entry = TunnelEntry(
            id=f"{self.node_id}/{self._counter}",
            node=self.node_id,
            kind=claim.kind,
            name=claim.name,
            services=claim.services,
            credential=owner.credential,
            group=owner.group,
            listed=tuple(sorted(owner.listed)) if owner.listed is not None else None,
            instance=instance if isinstance(instance, str) and instance else None,
            epoch=epoch,
            slot=slot if isinstance(slot, str) else None,
            since=claim.since,
        )
        self._local[claim] = entry
        if self.on_local_change is not None:
            self.on_local_change(entry, None)

    def local_removed(self, claim: Claim[Any]) -> None:
        entry = self._local.pop(claim, None)
        if entry is not None and self.on_local_change is not None:
            self.on_local_change(None, entry.id)

    # -- the other nodes --------------------------------------------------------------

    def node_seen(self, info: NodeInfo) -> Peer:
        """The peer of ``info``, added to the view if it is new."""
        peer = self.peers.get(info.id)
        if peer is None:
            link = self._make_link(info)
            kinds = MethodKinds(_channel_of(self, link))
            peer = self.peers[info.id] = Peer(info, link, kinds)
            if self.gateway.metrics is not None:
                self.gateway.metrics.node_seen(info.id)
        return peer

    def _kinds_channel(self, link: PeerLink) -> grpc.aio.Channel:
        from grpctunnel.gateway.cluster_link import HopChannel

        assert self.gateway.node_auth is not None
        return HopChannel(link, self.gateway.node_auth.hop_metadata())

    def replace(self, info: NodeInfo, version: int, entries: Iterable[TunnelEntry]) -> bool:
        """Applies a node's whole state (read at ``version``); False (and nothing
        changes) when a newer change of it was already applied."""
        peer = self.node_seen(info)
        if version < peer.version:
            return False
        given = {e.id: e for e in entries if e.node == info.id}
        for entry_id in [i for i in peer.entries if i not in given]:
            self._remove(peer, entry_id)
        for entry in given.values():
            if entry.id not in peer.entries or entry.id in peer.aside:
                self._put(peer, entry)
        peer.version = version
        self.gateway.view_changed()
        return True

    def put(self, node: str, version: int, entry: TunnelEntry) -> None:
        peer = self.peers[node]
        self._put(peer, entry)
        peer.version = version
        self.gateway.view_changed()

    def delete(self, node: str, version: int, entry_id: str) -> None:
        peer = self.peers[node]
        self._remove(peer, entry_id)
        peer.version = version
        self.gateway.view_changed()

    async def drop(self, node: str, why: str) -> Peer | None:
        """Forgets a node that left (or is presumed dead): its tunnels are no longer
        routable, and calls relayed to it now fail with UNAVAILABLE."""
        peer = self.peers.pop(node, None)
        if peer is None:
            return None
        if self.gateway.metrics is not None:
            self.gateway.metrics.node_gone(node)
        peer.lost = len(peer.claims)
        now = time.monotonic()
        for entry_id in list(peer.entries):
            entry = peer.entries[entry_id]
            if entry_id in peer.claims:
                for service in entry.services:
                    self._lost[service] = (now, f"{peer.describe()} that held it {why}")
            self._remove(peer, entry_id)
        peer.kinds.close()
        self.gateway.view_changed()
        await peer.link.close()
        return peer

    async def close(self) -> None:
        for node in list(self.peers):
            peer = self.peers.pop(node)
            for entry_id in list(peer.entries):
                self._remove(peer, entry_id)
            peer.kinds.close()
            await peer.link.close()

    def lost(self, service: str) -> str | None:
        """Why a service is not routable any more, when it went with a node lately."""
        found = self._lost.get(service)
        if found is None:
            return None
        when, what = found
        if time.monotonic() - when > LOST_REMEMBERED:
            del self._lost[service]
            return None
        return what

    # -- applying one entry -----------------------------------------------------------

    def _remove(self, peer: Peer, entry_id: str) -> None:
        peer.entries.pop(entry_id, None)
        peer.aside.pop(entry_id, None)
        claim = peer.claims.pop(entry_id, None)
        if claim is not None:
            self.gateway.directory.release(claim)
        self._unlist(peer, entry_id, "tunnel closed")

    def _unlist(self, peer: Peer, entry_id: str, reason: str) -> None:
        listed = peer.listed.pop(entry_id, None)
        if listed is not None:
            self.gateway.admin.closed(listed, reason)

    def _set_aside(self, entry: TunnelEntry, why: str) -> None:
        peer = self.peers.get(entry.node)
        if peer is None:
            return
        claim = peer.claims.pop(entry.id, None)
        if claim is not None:
            self.gateway.directory.release(claim)
        self._unlist(peer, entry.id, why)
        if entry.id not in peer.aside:
            log.info(
                "cluster: not routing to tunnel %r of %s: %s", entry.name, peer.describe(), why
            )
        peer.aside[entry.id] = why

    def _put(self, peer: Peer, entry: TunnelEntry) -> None:
        if entry.id in peer.claims:
            return
        peer.entries[entry.id] = entry
        was_aside = peer.aside.pop(entry.id, None)
        why = self._settle(entry)
        if why is not None:
            if was_aside is not None:
                peer.aside[entry.id] = why  # said already
            self._set_aside(entry, why)
            return
        directory = self.gateway.directory
        holder = RemoteHolder(entry, self._set_aside)
        claim = directory.admit(
            entry.owner(),
            entry.name,
            entry.services,
            kind=entry.kind,
            holder=holder,
            node=entry.node,
            since=entry.since,
        )
        holder.labels["claim"] = claim
        peer.claims[entry.id] = claim
        listed = AdminEntry(entry.kind, entry.name, entry.services, peer.describe(), node=entry.node)
        peer.listed[entry.id] = listed
        self.gateway.admin.opened(listed)
        if entry.kind == "reverse" and entry.services:
            directory.publish(claim, cast(Any, self._remote_tunnel(peer, entry)))
            log.debug(
                "cluster: routable here: tunnel %r of %s, exposing %s",
                entry.name,
                peer.describe(),
                ", ".join(entry.services),
            )
        if entry.name and entry.epoch is not None:
            self.gateway.remember_epoch(entry.credential, entry.name, entry.epoch)

    def _remote_tunnel(self, peer: Peer, entry: TunnelEntry) -> RemoteTunnel:
        from grpctunnel.gateway.cluster_link import HopChannel

        channel = peer.channels.get(entry.name)
        if channel is None:
            assert self.gateway.node_auth is not None
            hop = self.gateway.node_auth.hop_metadata()
            channel = peer.channels[entry.name] = HopChannel(peer.link, hop, entry.name)
        route = Route(channel, peer.describe(), peer.kinds, tunnel=entry.name, node=entry.node)
        return RemoteTunnel(entry.name, entry.node, route, peer.kinds)

    def _settle(self, entry: TunnelEntry) -> str | None:
        """Settles what ``entry`` (admitted by its node) conflicts with here: closes
        the tunnels of this node it supersedes and sets aside the remote claims it
        wins over; or says why ``entry`` itself loses (None: it is applied)."""
        directory = self.gateway.directory
        owner = entry.owner()
        if entry.kind == "reverse" and entry.name:
            for claim in directory.holding(entry.name):
                if claim.owner.credential != owner.credential or claim.released:
                    continue
                verdict = _instance_order(entry, claim)
                if verdict is None:
                    continue
                wins, code, reason = verdict
                if not wins:
                    return reason
                self._lose(claim, code, reason)
        found, _ = directory.conflicts(owner, entry.name, entry.services)
        mine = (entry.since, entry.node)
        older = [c for c in found if (c.since, c.node or self.node_id) < mine]
        if older:
            first = older[0]
            where = "this node" if first.node is None else f"node {first.node}"
            return (
                f"it conflicts with an older tunnel of {first.owner.describe()} on {where} "
                f"(name {first.name!r} or a service of it)"
            )
        for claim in found:
            self._lose(
                claim,
                grpc.StatusCode.PERMISSION_DENIED,
                f"service or tunnel name {'/'.join(entry.services) or entry.name} belongs to "
                f"another credential (it claimed it first, on node {entry.node})",
            )
        for service in entry.services:  # owned in a grace period (the losers' too): ended
            current = directory.owner_of(service)
            if current is not None and not owner.shares(current, service):
                directory.forget(service)
        return None

    def _lose(self, claim: Claim[Any], code: grpc.StatusCode, reason: str) -> None:
        """A claim here lost to another node's: closes this node's own tunnel, or
        sets aside another node's claim."""
        holder = claim.holder
        if isinstance(holder, RemoteHolder):
            self._set_aside(holder.entry, reason)
            return
        if isinstance(holder, TunnelRecord):
            log.info("cluster: closing a tunnel from %s: %s", holder.peer, reason)
            self.gateway.directory.release(claim)
            self.local_removed(claim)
            holder.close(reason, code)


def _channel_of(view: ClusterView, link: PeerLink) -> Callable[[str], grpc.aio.Channel | None]:
    """Where the method kinds of a node's services are learnt: through its link."""

    def channel(service: str) -> grpc.aio.Channel | None:
        return view._kinds_channel(link)

    return channel


def _instance_order(
    entry: TunnelEntry, claim: Claim[Any]
) -> tuple[bool, grpc.StatusCode, str] | None:
    """How ``entry`` and ``claim`` (same credential, same name) stand: None when they
    coexist; else whether ``entry`` wins, and the status and reason the loser ends with."""
    holder: Any = claim.holder
    metadata = getattr(holder, "metadata", ())
    instance = md.first_value(metadata, INSTANCE_HEADER)
    if not entry.instance or not isinstance(instance, str) or not instance:
        return None
    name = entry.name
    if instance != entry.instance:
        theirs = announced_epoch(metadata)
        if entry.epoch is None or theirs is None or entry.epoch == theirs:
            return None
        taken = f"tunnel name {name!r} {TAKEN_OVER} of the same credential"
        if entry.epoch > theirs:
            return True, grpc.StatusCode.ABORTED, taken
        return False, grpc.StatusCode.ABORTED, f"{taken}; this one is stale"
    slot = md.first_value(metadata, SLOT_HEADER)
    if entry.slot is None or slot != entry.slot:
        return None
    reason = f"tunnel {name!r} replaced by a reconnection of the same exposer"
    return entry.since > claim.since, grpc.StatusCode.UNAVAILABLE, reason


__all__ = [
    "BadEntry",
    "ClusterView",
    "NodeInfo",
    "Peer",
    "RemoteHolder",
    "RemoteTunnel",
    "TunnelEntry",
]
