"""A gateway that is one node of a cluster (``grpctunnel serve --cluster``).

:class:`ClusterGateway` is a :class:`~grpctunnel.gateway.Gateway` whose directory also
holds the tunnels of the other nodes (applied by its :class:`~grpctunnel.gateway.
cluster_view.ClusterView`, fed by :class:`~grpctunnel.gateway.cluster.ClusterNode`):

* **Routing.** A call is routed to a tunnel of this node when one serves it, else to a
  node that holds one, through the forward tunnel kept to that node
  (:mod:`~grpctunnel.gateway.cluster_link`). The relayed call carries this node's hop
  proof; the receiving node routes such a call to its own tunnels only. A call whose hop
  header is not a valid proof is refused with PERMISSION_DENIED, whoever sent it.
* **Admission.** Names, services and tunnel counts held on any node count here as if
  held here (tests/security/test_ownership.py semantics, cluster-wide); a newer
  instance of an exposer that arrives here takes its name over from the tunnels of the
  older one on other nodes. A forward tunnel opened by another node with the cluster
  credential is admitted without a caller's token and counts against no one.
* **Reflection, listing, health** see the services of every node: reflection questions
  are asked of the node that holds the service (over the same hop), which answers them
  from its own tunnels.

A gateway without a cluster is the plain :class:`~grpctunnel.gateway.Gateway`, unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import grpc

from grpctunnel import metadata as md
from grpctunnel.admin.v1 import admin_pb2, admin_pb2_grpc
from grpctunnel.gateway.announce import (
    INSTANCE_HEADER,
    SLOT_HEADER,
    TAKEN_OVER,
    announced_epoch,
    announced_name,
)
from grpctunnel.gateway.auth import refusing_handler
from grpctunnel.gateway.cluster_auth import (
    CLUSTER_HEADERS,
    FORGED_HOP,
    FORGED_NODE,
    HOP_HEADER,
    NodeAuth,
    NodeOrTokenInterceptor,
)
from grpctunnel.gateway.cluster_view import ClusterView, LinkFactory, RemoteHolder
from grpctunnel.gateway.directory import Claim
from grpctunnel.gateway.gateway import Gateway
from grpctunnel.gateway.proxy import Route, RouteError
from grpctunnel.gateway.reflection import MergedReflection
from grpctunnel.handler import ReverseTunnel, TunnelRecord

log = logging.getLogger("grpctunnel")


class ClusterGateway(Gateway):
    """A :class:`~grpctunnel.gateway.Gateway` that is one node of a cluster; see the
    module documentation. ``node_auth`` is this node's id and the cluster token;
    ``make_link`` opens the forward tunnel to another node. The other arguments are
    :class:`~grpctunnel.gateway.Gateway`'s."""

    def __init__(self, *args: Any, node_auth: NodeAuth, make_link: LinkFactory, **kwargs: Any):
        self.node_auth: NodeAuth | None = node_auth
        self._local_only = False  # while routing a call another node relayed
        super().__init__(*args, **kwargs)
        # the hop's headers are never relayed on: not from a caller (its own are
        # added), and not to a backend
        self.proxy.drop_headers = self.proxy.drop_headers | CLUSTER_HEADERS
        self.view = ClusterView(self, node_auth.node_id, make_link)

    # -- wiring -------------------------------------------------------------------------

    def interceptors(self) -> list[Any]:
        if self.authority is None:
            return []
        assert self.node_auth is not None
        return [
            NodeOrTokenInterceptor(self.authority, self.node_auth, on_refusal=self._refused_call)
        ]

    def _register(self, target: Any, direct: bool = False) -> None:
        if not isinstance(self._reflection, _HopAwareReflection):
            self._reflection = _HopAwareReflection(self)
        super()._register(target, direct)

    # -- who may do what ----------------------------------------------------------------

    def _authorize_call(self, tunnel_metadata: md.MetadataPairs, method: str) -> Any:
        assert self.node_auth is not None
        if isinstance(self.node_auth.node_of(tunnel_metadata), str):
            return None  # another node's tunnel: that node judged its caller
        return super()._authorize_call(tunnel_metadata, method)

    def _admit(self, record: TunnelRecord) -> Any:
        assert self.node_auth is not None
        node = self.node_auth.node_of(record.metadata)
        if node is False:
            return grpc.StatusCode.PERMISSION_DENIED, FORGED_NODE
        if isinstance(node, str):
            if record.kind != "forward":
                return grpc.StatusCode.PERMISSION_DENIED, "a node opens only forward tunnels"
            record.labels["node"] = node
            # One node-to-node tunnel carries the calls of all the peer's callers for
            # this node's tunnels: each of those callers, had it dialled this node,
            # would have had no per-tunnel cap, so neither has their tunnel (the
            # receiving tunnels keep their own caps).
            record.options = dataclasses.replace(self.handler.options, max_concurrent_streams=None)
            return None
        if record.kind == "reverse":
            self._make_way(record)
        refusal = super()._admit(record)
        claim = record.labels.get("claim")
        if refusal is None and record.kind == "forward" and isinstance(claim, Claim):
            self.view.local_added(claim, record)
            record.add_end_callback(lambda _: self.view.local_removed(claim))
        return refusal

    def _make_way(self, record: TunnelRecord) -> None:
        """Before admission sees them: sets aside the other nodes' tunnels that a
        tunnel opening here takes over from (an older instance of its exposer, or its
        own stale self before a reconnection), so that they count neither against the
        credential's limit nor as holders of the name."""
        name = announced_name(record.metadata)
        if not name:
            return
        credential = None
        if self.authority is not None:
            grant = self.authority.authenticate(record.metadata)
            if grant is None:
                return
            credential = grant.name
        for claim in self.directory.holding(name):
            holder = claim.holder
            if isinstance(holder, RemoteHolder) and claim.owner.credential == credential:
                verdict = _replaces(record, holder)
                if verdict is not None:
                    holder.close(verdict)

    # -- tunnels ------------------------------------------------------------------------

    def _opened(self, tunnel: ReverseTunnel) -> None:
        super()._opened(tunnel)
        record = tunnel.record
        claim = record.labels.get("claim") if record is not None else None
        if record is not None and isinstance(claim, Claim) and claim.tunnel is not None:
            self.view.local_added(claim, record)

    def _closed(self, tunnel: ReverseTunnel) -> None:
        claim = tunnel.record.labels.get("claim") if tunnel.record is not None else None
        if isinstance(claim, Claim):
            self.view.local_removed(claim)
        super()._closed(tunnel)

    def remember_epoch(self, credential: str | None, name: str, epoch: int) -> None:
        """Another node admitted an instance of ``name`` started at ``epoch``: an older
        instance is fenced off here too."""
        key = (credential, name)
        if self._epochs.get(key, -1) < epoch:
            self._epochs[key] = epoch
            self._epochs.move_to_end(key)

    def view_changed(self) -> None:
        """The other nodes' tunnels changed: waiters and health look again."""
        seen = getattr(self.health, "seen", None)
        if callable(seen):
            seen(self.directory.exposed())
        changed = getattr(self.health, "changed", None)
        if callable(changed):
            changed()
        self._notify_changed()

    # -- closing tunnels ----------------------------------------------------------------

    async def close_tunnels(self, name: str, grace: float, this_node_only: bool = False) -> int:
        """Closes the tunnels named ``name`` on this node and, unless
        ``this_node_only``, asks each other node that holds some to close its own (over
        the node-to-node hop, for this node only: never further)."""
        closing = [super().close_tunnels(name, grace)]
        if not this_node_only:
            nodes = {
                claim.node
                for claim in self.directory.holding(name)
                if claim.node is not None and not claim.released
            }
            closing += [self._close_on(node, name, grace) for node in sorted(nodes)]
        return sum(await asyncio.gather(*closing))

    async def _close_on(self, node: str, name: str, grace: float) -> int:
        from grpctunnel.gateway.cluster_link import HopChannel

        peer = self.view.peers.get(node)
        if peer is None or self.node_auth is None:
            return 0
        stub = admin_pb2_grpc.AdminStub(HopChannel(peer.link, self.node_auth.hop_metadata()))  # type: ignore[no-untyped-call]
        request = admin_pb2.CloseTunnelRequest(name=name, grace_seconds=grace, this_node_only=True)
        try:
            reply = await stub.CloseTunnel(request, timeout=grace + peer.link.connect_timeout + 5)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: it closed already
                log.warning(
                    "could not close tunnel %s on %s: %s: %s",
                    name,
                    peer.describe(),
                    e.code().name,
                    e.details(),
                )
            return 0
        return int(reply.closed)

    # -- routing ------------------------------------------------------------------------

    def _route(self, method: str, pairs: md.MetadataPairs) -> Route | RouteError | None:
        hop = md.first_value(pairs, HOP_HEADER)
        if hop is None:
            return super()._route(method, pairs)
        assert self.node_auth is not None
        if self.node_auth.hop_of(hop) is None:
            log.info("refused %s: a forged %s header", method, HOP_HEADER)
            return RouteError(grpc.StatusCode.PERMISSION_DENIED, FORGED_HOP)
        # relayed by another node: to this node's own tunnels only, never on
        self.directory.local_only = True
        try:
            return super()._route(method, pairs)
        finally:
            self.directory.local_only = False

    def channel_for_service(self, service: str) -> grpc.aio.Channel | None:
        exposed: Any = self.directory.route(service, advance=False)
        return exposed.route.channel if exposed is not None else None

    def _no_route_details(self, service: str, pin: str | None) -> str:
        details = super()._no_route_details(service, pin)
        lost = self.view.lost(service)
        return f"{details}; {lost}" if lost else details


class _LocalServices:
    """The gateway as reflection sees it for a question another node relayed: this
    node's own tunnels only, and no caller to judge (the asking node judged its own)."""

    def __init__(self, gateway: ClusterGateway) -> None:
        self._gateway = gateway

    def own_services(self) -> list[str]:
        return self._gateway.own_services()

    def exposed(self) -> dict[str, list[str]]:
        return self._gateway.directory.exposed(local_only=True)

    def channel_for_service(self, service: str) -> grpc.aio.Channel | None:
        exposed: Any = self._gateway.directory.route(service, local_only=True, advance=False)
        return exposed.route.channel if exposed is not None else None

    def may_call(self, metadata: md.MetadataPairs, service: str) -> bool:
        return True


class _HopAwareReflection(MergedReflection):
    """Merged reflection for callers; for a question relayed by another node (a valid
    hop proof), reflection over this node's own tunnels; a forged hop is refused."""

    def __init__(self, gateway: ClusterGateway) -> None:
        super().__init__(gateway)
        self._auth = gateway.node_auth
        self._relayed = MergedReflection(_LocalServices(gateway))

    def generic_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return _ByHop(super().generic_handler(), self._relayed.generic_handler(), self._auth)


class _ByHop(grpc.GenericRpcHandler):  # type: ignore[misc,type-arg]
    def __init__(self, caller: Any, relayed: Any, auth: NodeAuth | None) -> None:
        self._caller = caller
        self._relayed = relayed
        self._auth = auth

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        hop = md.first_value(handler_call_details.invocation_metadata, HOP_HEADER)
        if hop is None:
            return self._caller.service(handler_call_details)
        found = self._relayed.service(handler_call_details)
        if found is None or (self._auth is not None and self._auth.hop_of(hop) is not None):
            return found
        return refusing_handler((grpc.StatusCode.PERMISSION_DENIED, FORGED_HOP))


def _replaces(record: TunnelRecord, holder: RemoteHolder) -> str | None:
    """Why a tunnel opening with ``record`` replaces another node's tunnel of the same
    credential and name (an older instance, or the same instance and slot), or None."""
    instance = record.metadata_value(INSTANCE_HEADER)
    entry = holder.entry
    if not isinstance(instance, str) or not instance or not entry.instance:
        return None
    if instance != entry.instance:
        epoch = announced_epoch(record.metadata)
        if epoch is not None and entry.epoch is not None and epoch > entry.epoch:
            return f"tunnel name {entry.name!r} {TAKEN_OVER} of the same credential"
        return None
    if entry.slot is not None and record.metadata_value(SLOT_HEADER) == entry.slot:
        return f"tunnel {entry.name!r} replaced by a reconnection of the same exposer"
    return None


__all__ = ["ClusterGateway"]
