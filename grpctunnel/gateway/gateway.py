"""A tunnel server that is also a gateway to the services exposed through it.

Clients that expose a backend open reverse tunnels and announce, in the tunnel's open
metadata, a name (:data:`NAME_HEADER`) and the services behind it
(:data:`SERVICES_HEADER`). A call that reaches the gateway, directly or through a
forward tunnel, for a service the gateway does not host itself, is relayed over a
reverse tunnel that exposes that service: by full service name, balanced over every
such tunnel, or pinned to one tunnel by name with the :data:`PIN_HEADER` request header.

The gateway also answers server reflection (v1 and v1alpha) for its own services and
every exposed backend's, so reflection clients see all that is reachable through it,
and serves the standard health service.

Locking it down (the ``grpctunnel serve`` command does all of this)::

    authority = TokenAuthority.from_file("tokens.json")       # grpctunnel.gateway.auth
    gateway = Gateway(authority=authority)
    server = grpc.aio.server(
        interceptors=gateway.interceptors(),                    # your own services too
        options=keepalive.server_options(),                     # dead peers are found
    )
    gateway.attach(server)
    server.add_secure_port(address, grpc.ssl_server_credentials(...))

With an authority, every tunnel and call needs a token (``authorization: Bearer ...``)
whose :class:`~grpctunnel.gateway.auth.Grant` allows it: opening a reverse tunnel needs the
right to expose, under its announced name and services; opening a forward tunnel, or
calling directly, needs the right to call, and each call made inside a forward tunnel
is checked against the token the tunnel was opened with (the handler's
``authorize_call`` hook). A credential may hold at most ``Grant.max_tunnels`` tunnels.
A tunnel name belongs to the credential whose tunnels hold it, and a service to the
credential that exposed it first (see :mod:`grpctunnel.gateway.directory`); another
credential announcing either is refused with PERMISSION_DENIED.

Exposers send a per-process :data:`INSTANCE_HEADER`, the time that process started
(:data:`EPOCH_HEADER`) and :data:`SLOT_HEADER`, which of its tunnels this is. A reverse
tunnel of a newer instance under the same credential and name takes over at once: the
older instance's tunnels under that name are closed with ABORTED ("taken over ..."), so a
restarted exposer never waits for its stale session to time out. The order is a fence:
an older instance (by epoch, or one already taken over) that comes back, say after its
network was cut, is refused with ABORTED and never wins the name back. A reconnection
of the same instance replaces only its own tunnel of that slot, so the tunnels of one
``expose --tunnels N`` coexist.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from grpctunnel import metadata as md
from grpctunnel.admin.v1 import admin_pb2_grpc
from grpctunnel.gateway.admin import CLOSED_BY_ADMIN, AdminService, TunnelEntry
from grpctunnel.gateway.announce import (
    GATEWAY_ANSWERS,
    HEALTH,
    INSTANCE_HEADER,
    PIN_HEADER,
    SLOT_HEADER,
    TAKEN_OVER,
    TUNNEL_SERVICE,
    announced_epoch,
    announced_name,
    announced_services,
    tunnel_name,
    tunnel_services,
)
from grpctunnel.gateway.auth import (
    OPEN_REVERSE_TUNNEL,
    OPEN_TUNNEL,
    AuthInterceptor,
    Grant,
    GuardedHandler,
    Refusal,
    TokenAuthority,
    decide,
    first_refusal,
)
from grpctunnel.gateway.directory import (
    DEFAULT_SERVICE_GRACE,
    Claim,
    Owner,
    Refused,
    TunnelDirectory,
)
from grpctunnel.gateway.health import BackendHealth, GatewayHealth
from grpctunnel.gateway.method_kinds import MethodKinds
from grpctunnel.gateway.proxy import CallObserver, ProxyHandler, RelayStats, Route, RouteError
from grpctunnel.gateway.reflection import MergedReflection
from grpctunnel.gateway.reflection_client import REFLECTION_V1, REFLECTION_V1ALPHA
from grpctunnel.handler import ReverseTunnel, TunnelRecord, TunnelServiceHandler
from grpctunnel.options import TunnelServiceHandlerOptions
from grpctunnel.rpc import add_TunnelServiceServicer_to_server

if TYPE_CHECKING:
    from grpctunnel.gateway.metrics import GatewayMetrics

log = logging.getLogger("grpctunnel")


@dataclass(eq=False)
class ExposedTunnel:
    """A reverse tunnel as the gateway routes to it: its name, the route that relays a
    call into it, and the method kinds learnt of the backend behind it; what the admin
    service shows of it (``entry``), what its backend says of its health, and whether
    it is being closed (``draining``: no new call goes to it)."""

    tunnel: ReverseTunnel
    name: str
    kinds: MethodKinds
    route: Route
    entry: TunnelEntry | None = None
    health: BackendHealth | None = None
    draining: bool = False

    def serves(self, service: str) -> bool:
        """Whether a call for ``service`` may be routed here now."""
        return not self.draining and (self.health is None or self.health.serving(service))


class Gateway:
    """Routes calls for exposed services over the reverse tunnels that expose them.

    Attach it to a grpc.aio server with :meth:`attach` (or use
    :class:`~grpctunnel.gateway.GatewayServer`, which builds the whole server); it adds
    the tunnel service, the relaying handler, reflection and health there, and the same
    relaying, reflection and health to calls arriving through forward tunnels.

    With ``authority``, tunnels and calls need a token that grants them (see the module
    documentation); the gateway enforces this on everything it attaches, and
    :meth:`interceptors` gives the interceptor that extends it to any other service on
    the same server. ``accept_tunnel`` / ``authorize_call`` hooks already in
    ``options`` still run, before the gateway's own checks, and so do
    ``on_reverse_tunnel_open`` / ``on_reverse_tunnel_close``; the caller's ``options``
    object itself is left as it was. The affinity key of a tunnel is its name.
    ``service_grace`` is how long a credential keeps a service after its last tunnel
    exposing it closed. ``metrics``, if given, is told as tunnels open, close or are
    refused and as calls end (see :mod:`grpctunnel.gateway.metrics`). The admin
    service (:attr:`admin`) lists the tunnels under the name :attr:`admin.node <
    grpctunnel.gateway.admin.AdminService.node>` (the host's, unless set). With
    ``backend_health`` (the default), the health service follows each backend's own
    health (one Watch per announced service of each tunnel); without it, a service is
    SERVING while a live tunnel exposes it, and tunnels cost no health streams.
    """

    def __init__(
        self,
        options: TunnelServiceHandlerOptions | None = None,
        *,
        authority: TokenAuthority | None = None,
        observer: CallObserver | None = None,
        on_tunnel_open: Callable[[ReverseTunnel], Any] | None = None,
        on_tunnel_close: Callable[[ReverseTunnel], Any] | None = None,
        service_grace: float = DEFAULT_SERVICE_GRACE,
        metrics: GatewayMetrics | None = None,
        backend_health: bool = True,
    ) -> None:
        given = options or TunnelServiceHandlerOptions()
        self.backend_health = backend_health
        self.authority = authority
        self.metrics = metrics
        self._on_open = _both(given.on_reverse_tunnel_open, on_tunnel_open)
        self._on_close = _both(given.on_reverse_tunnel_close, on_tunnel_close)
        options = dataclasses.replace(
            given,
            on_reverse_tunnel_open=self._opened,
            on_reverse_tunnel_close=self._closed,
            affinity_key=tunnel_name,
            admit_tunnel=self._admission(first_refusal(given.admit_tunnel, self._admit)),
            on_tunnel_refused=self._tunnel_refused(given.on_tunnel_refused),
            authorize_call=(
                first_refusal(given.authorize_call, self._authorize_call)
                if authority is not None
                else given.authorize_call
            ),
        )
        self.handler = TunnelServiceHandler(options)
        self.directory: TunnelDirectory[ExposedTunnel] = TunnelDirectory(
            service_grace=service_grace
        )
        # the newest instance epoch seen per (credential, name): the fence
        self._epochs: OrderedDict[tuple[str | None, str], int] = OrderedDict()
        self.proxy = ProxyHandler(
            self._route,
            observer=observer,
            drop_headers=frozenset({PIN_HEADER}),
            tap=self._call_ended,
        )
        self._forward_stats: dict[object, RelayStats | None] = {}  # by serving session
        self.proxy.caller_stats = self._caller_stats
        if metrics is not None:
            metrics.bind(self.proxy.totals)
        self._reflection = MergedReflection(self)
        self.health = GatewayHealth(self._serving, self.may_call)
        self.admin = AdminService(self.close_tunnels, node=socket.gethostname())
        self._changed = asyncio.Event()  # set, and replaced, whenever a tunnel opens or closes
        self._register(self.handler)

    # -- wiring -------------------------------------------------------------------------

    def attach(self, server: grpc.aio.Server) -> None:
        """Serves the tunnel service, the gateway and reflection/health on ``server``."""
        add_TunnelServiceServicer_to_server(self.handler.service(), server)
        self._register(server, direct=True)

    def interceptors(self) -> list[AuthInterceptor]:
        """Interceptors for ``grpc.aio.server(interceptors=...)``: with an authority,
        the one that checks the token of every call on the server, including services
        other than the gateway's; without, none."""
        if self.authority is None:
            return []
        return [AuthInterceptor(self.authority, on_refusal=self._refused_call)]

    def _register(self, target: Any, direct: bool = False) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.health, target)
        admin_pb2_grpc.add_AdminServicer_to_server(self.admin, target)  # type: ignore[no-untyped-call]
        handlers: tuple[Any, ...] = (self._reflection.generic_handler(), self.proxy)
        if direct and self.authority is not None:
            # calls straight to the server carry their own token (judged once, by the
            # interceptor or by these guards); those inside a forward tunnel are checked
            # by authorize_call against the tunnel's
            handlers = tuple(GuardedHandler(self.authority, h) for h in handlers)
        target.add_generic_rpc_handlers(handlers)

    # -- who may do what ----------------------------------------------------------------

    def _authorize_call(self, tunnel_metadata: md.MetadataPairs, method: str) -> Refusal | None:
        assert self.authority is not None
        return decide(self.authority, method, tunnel_metadata)[1]

    def may_call(self, metadata: md.MetadataPairs, service: str) -> bool:
        """Whether the credential in ``metadata`` may call ``service`` (always, without
        tokens)."""
        if self.authority is None:
            return True
        grant = self.authority.authenticate(metadata)
        return grant is not None and grant.may_call_service(service)

    def _admit(self, record: TunnelRecord) -> Refusal | None:
        """Admits a tunnel as it opens, or says why not: its token's rights, the
        ownership of its name and services, the fence of its instance, and its
        credential's tunnel limit. An admitted tunnel holds a claim in the directory
        until it ends, and the tunnels it takes over are closed."""
        kind, metadata = record.kind, record.metadata
        grant: Grant | None = None
        if self.authority is not None:
            method = OPEN_REVERSE_TUNNEL if kind == "reverse" else OPEN_TUNNEL
            grant, refusal = decide(self.authority, method, metadata)
            if refusal is not None:
                return refusal
        owner = (
            Owner(grant.name, grant.group, grant.expose_services) if grant is not None else Owner()
        )
        name = ""
        services: tuple[str, ...] = ()
        replaced: list[tuple[TunnelRecord, grpc.StatusCode, str]] = []
        if kind == "reverse":
            name, services = announced_name(metadata), announced_services(metadata)
            if grant is not None:
                why = grant.may_expose_as(name, services)
                if why is not None:
                    return grpc.StatusCode.PERMISSION_DENIED, why
            if name:
                holders = [
                    c.holder
                    for c in self.directory.holding(name)
                    if isinstance(c.holder, TunnelRecord) and c.owner.credential == owner.credential
                ]
                stale = self._fenced_off(owner, name, metadata, holders)
                if stale is not None:
                    return grpc.StatusCode.ABORTED, stale
                replaced = _replaced_by(metadata, name, holders)
        going = [r.labels["claim"] for r, _, _ in replaced if "claim" in r.labels]
        try:
            self.directory.check(
                owner,
                name,
                services,
                max_tunnels=grant.max_tunnels if grant is not None else None,
                leaving=going,
            )
        except Refused as refused:
            code = (
                grpc.StatusCode.RESOURCE_EXHAUSTED
                if refused.exhausted
                else grpc.StatusCode.PERMISSION_DENIED
            )
            return code, refused.reason
        claim = self.directory.admit(owner, name, services, kind=kind, holder=record)
        record.labels["claim"] = claim
        record.labels["owner"] = owner
        record.add_end_callback(lambda _: self.directory.release(claim))
        for old, code, reason in replaced:
            log.info(
                "closing a tunnel from %s: %s (new one from %s)", old.peer, reason, record.peer
            )
            old.close(reason, code)
        return None

    def _fenced_off(
        self,
        owner: Owner,
        name: str,
        metadata: md.MetadataPairs,
        holders: list[TunnelRecord],
    ) -> str | None:
        """Why an instance announcing ``name`` is stale (a newer instance of the same
        credential holds or held the name), or None; remembers the newest epoch."""
        instance = md.first_value(metadata, INSTANCE_HEADER)
        epoch = announced_epoch(metadata)
        if not isinstance(instance, str) or not instance or epoch is None:
            return None  # an exposer that announces no order: as before, last one wins
        for holder in holders:
            theirs = announced_epoch(holder.metadata)
            if (
                holder.metadata_value(INSTANCE_HEADER) != instance
                and theirs is not None
                and theirs > epoch
            ):
                return (
                    f"tunnel name {name!r} {TAKEN_OVER} of the same credential; this one is stale"
                )
        key = (owner.credential, name)
        newest = self._epochs.get(key)
        if newest is not None and epoch < newest:
            return f"tunnel name {name!r} {TAKEN_OVER} of the same credential; this one is stale"
        self._epochs[key] = epoch
        self._epochs.move_to_end(key)
        while len(self._epochs) > _MAX_FENCES:
            self._epochs.popitem(last=False)
        return None

    def own_services(self) -> list[str]:
        return [TUNNEL_SERVICE, HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA]

    # -- observing admission (metrics, the admin service) -------------------------------

    def _admission(
        self, admit: Callable[[TunnelRecord], Refusal | None]
    ) -> Callable[[TunnelRecord], Refusal | None]:
        """``admit``, observed: forward tunnels are listed while open
        (a reverse tunnel is, once it is up: see :meth:`_opened`)."""

        def admission(record: TunnelRecord) -> Refusal | None:
            refusal = admit(record)
            if refusal is None and record.kind == "forward":
                self._forward_opened(record)
            return refusal

        return admission

    def _tunnel_refused(
        self, given: Callable[[str, grpc.StatusCode, str], None] | None
    ) -> Callable[[str, grpc.StatusCode, str], None]:
        """Counts each tunnel the handler refuses (then tells ``given``, if any)."""

        def refused(kind: str, code: grpc.StatusCode, details: str) -> None:
            if self.metrics is not None:
                self.metrics.tunnel_refused(code)
            if given is not None:
                given(kind, code, details)

        return refused

    def _refused_call(self, method: str, refusal: Refusal) -> None:
        """The interceptor refused a call: a tunnel refused for its token, if it was one."""
        if self.metrics is not None and method in (OPEN_TUNNEL, OPEN_REVERSE_TUNNEL):
            self.metrics.tunnel_refused(refusal[0])

    def _caller_stats(self, context: Any) -> RelayStats | None:
        """The counters of the forward tunnel a relayed call came in through (None for a
        call that came in as a plain gRPC call)."""
        session_of = getattr(context, "tunnel_session", None)
        if session_of is None:
            return None
        session = session_of()
        if session not in self._forward_stats:  # the first call of this tunnel: find it
            found = None
            for record in self.handler.open_tunnels():
                if record.session is session and record.kind == "forward":
                    found = record.labels.get("stats")
                    break
            self._forward_stats[session] = found if isinstance(found, RelayStats) else None
        return self._forward_stats[session]

    def _forward_opened(self, record: TunnelRecord) -> None:
        def active() -> int:
            return record.session.active_calls if record.session is not None else 0

        stats = RelayStats()  # the calls that came in through it and were relayed
        record.labels["stats"] = stats
        entry = TunnelEntry("forward", "", (), record.peer, stats=stats, active=active)
        self.admin.opened(entry)
        if self.metrics is not None:
            self.metrics.tunnel_opened("forward")

        def ended(record: TunnelRecord) -> None:
            reason = record.session.close_reason if record.session is not None else ""
            if not reason and record.pending_close is not None:
                reason = record.pending_close[1]
            self.admin.closed(entry, reason or "tunnel closed")
            if record.session is not None:
                self._forward_stats.pop(record.session, None)
            if self.metrics is not None:
                self.metrics.tunnel_closed("forward", reason or "tunnel closed")

        record.add_end_callback(ended)

    def _services_changed(self, services: tuple[str, ...]) -> None:
        """Tunnels exposing ``services`` opened or closed."""
        self.health.changed()
        if self.metrics is not None:
            for service in services:
                self.metrics.service_tunnels(service, len(self.directory.live(service)))

    # -- tunnels ------------------------------------------------------------------------

    def tunnels(self) -> list[ReverseTunnel]:
        return self.handler.all_reverse_tunnels()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Waits until ``condition()`` holds, checking it again each time a reverse
        tunnel opens or closes (bound it with a timeout of your own)."""
        while not condition():
            await self._changed.wait()

    def _notify_changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def exposed(self) -> dict[str, list[str]]:
        """Service name -> names of the live tunnels exposing it."""
        return self.directory.exposed()

    def _opened(self, tunnel: ReverseTunnel) -> None:
        labels = tunnel.record.labels if tunnel.record is not None else {}
        claim = labels.get("claim")
        name = tunnel_name(tunnel)
        services = tunnel_services(tunnel)
        stats = RelayStats()
        entry = TunnelEntry("reverse", name, services, tunnel.peer, stats=stats)
        labels["entry"] = entry
        if isinstance(claim, Claim):
            kinds = MethodKinds(lambda service: tunnel.channel)
            route = Route(tunnel.channel, None, kinds, stats=stats, tunnel=name)
            exposed = ExposedTunnel(tunnel, name, kinds, route, entry)
            if claim.services and self.backend_health:
                exposed.health = BackendHealth(tunnel.channel, claim.services, self.health.changed)
                exposed.health.start()
            self.directory.publish(claim, exposed)
        self.admin.opened(entry)
        self.health.seen(services)
        if self.metrics is not None:
            self.metrics.tunnel_opened("reverse")
        self._services_changed(services)
        self._notify_changed()
        # said last: whoever reads it finds the tunnel listed, counted and routable
        owner = labels.get("owner")
        credential = (
            f" ({owner.describe()})"
            if isinstance(owner, Owner) and owner.credential is not None
            else ""
        )
        log.info(
            "tunnel opened: %s from %s exposing %s%s",
            name,
            tunnel.peer,
            ", ".join(services) or "no services",
            credential,
            extra={
                "event": "tunnel_opened",
                "tunnel": name,
                "peer": tunnel.peer,
                "services": list(services),
            },
        )
        if self._on_open is not None:
            self._on_open(tunnel)

    def _closed(self, tunnel: ReverseTunnel) -> None:
        labels = tunnel.record.labels if tunnel.record is not None else {}
        claim = labels.get("claim")
        if isinstance(claim, Claim):
            if isinstance(claim.tunnel, ExposedTunnel):
                claim.tunnel.kinds.close()
                if claim.tunnel.health is not None:
                    claim.tunnel.health.close()
            self.directory.release(claim)
        name, reason = tunnel_name(tunnel), tunnel.session.close_reason
        log.info(
            "tunnel closed: %s from %s (%s)",
            name,
            tunnel.peer,
            reason,
            extra={"event": "tunnel_closed", "tunnel": name, "peer": tunnel.peer, "reason": reason},
        )
        entry = labels.get("entry")
        if isinstance(entry, TunnelEntry):
            self.admin.closed(entry, reason)
        if self.metrics is not None:
            self.metrics.tunnel_closed("reverse", reason)
        self._services_changed(tunnel_services(tunnel))
        self._notify_changed()
        if self._on_close is not None:
            self._on_close(tunnel)

    # -- routing ------------------------------------------------------------------------

    def _route(self, method: str, pairs: md.MetadataPairs) -> Route | RouteError | None:
        service = method[1:].split("/", 1)[0]
        if service in GATEWAY_ANSWERS or service == TUNNEL_SERVICE:
            return None
        pin = md.first_value(pairs, PIN_HEADER)
        pin_name = pin if isinstance(pin, str) and pin else None
        # a tunnel whose backend serves the service, else any not being closed
        exposed = self.directory.route(service, pin_name, lambda t: _serves(t, service))
        if exposed is None:
            exposed = self.directory.route(service, pin_name, _not_draining)
        if exposed is None:
            return RouteError(
                grpc.StatusCode.UNAVAILABLE, self._no_route_details(service, pin_name)
            )
        return exposed.route

    def _serving(self, service: str) -> bool:
        """Whether a live tunnel serves ``service`` now (see :mod:`.health`)."""
        return any(_serves(t, service) for t in self.directory.live(service))

    def _call_ended(
        self, method: str, route: Route | None, code: grpc.StatusCode, seconds: float
    ) -> None:
        """A call the gateway relayed (or failed for want of a tunnel) has ended."""
        if self.metrics is not None:
            kinds = route.kinds if route is not None else None
            self.metrics.call_ended(method, code, seconds, routed=route is not None, kinds=kinds)
            if route is not None and route.node is not None:
                self.metrics.call_relayed_to_node(code)
        if log.isEnabledFor(logging.DEBUG):
            tunnel = route.tunnel if route is not None else None
            log.debug(
                "call %s %s %.1f ms via %s",
                method,
                code.name,
                seconds * 1000,
                tunnel or "no tunnel",
                extra={
                    "event": "call",
                    "tunnel": tunnel,
                    "service": method[1:].split("/", 1)[0],
                    "method": method,
                    "code": code.name,
                    "duration": round(seconds, 6),
                },
            )

    def channel_for_service(self, service: str) -> grpc.aio.Channel | None:
        """A channel to one live tunnel serving ``service``, or None (for questions
        such as reflection: the turn of calls is left as it is)."""
        exposed = self.directory.route(service, advance=False)
        return exposed.tunnel.channel if exposed is not None else None

    def _no_route_details(self, service: str, pin: str | None) -> str:
        return no_route_details(service, pin, self.exposed())

    # -- closing tunnels -----------------------------------------------------------------

    async def close_tunnels(self, name: str, grace: float, this_node_only: bool = False) -> int:
        """Drains, then closes, the reverse tunnels named ``name``: no new call is routed
        to them, the calls in flight get up to ``grace`` seconds to finish, then the
        tunnels close (UNAVAILABLE, "closed by an administrator"). Returns how many
        there were. (A cluster node closes the other nodes' too, unless
        ``this_node_only``.)"""
        targets = [
            c.tunnel for c in self.directory.holding(name) if isinstance(c.tunnel, ExposedTunnel)
        ]
        if not targets:
            return 0
        for exposed in targets:
            exposed.draining = True
            if exposed.entry is not None:
                exposed.entry.draining = True
            if exposed.health is not None:
                exposed.health.close()
        self.health.changed()
        log.info(
            "closing tunnel %s (%d open) on request: calls in flight get up to %gs",
            name,
            len(targets),
            grace,
            extra={"event": "tunnel_closing", "tunnel": name},
        )
        await asyncio.gather(*(e.tunnel.session.wait_idle(grace) for e in targets))
        for exposed in targets:
            record = exposed.tunnel.record
            if record is not None:
                record.close(CLOSED_BY_ADMIN, grpc.StatusCode.UNAVAILABLE)
            else:
                exposed.tunnel.session.close(CLOSED_BY_ADMIN)
        return len(targets)

    # -- shutting down ------------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Refuses new tunnels, lets relayed calls finish for up to ``grace`` seconds,
        then ends every tunnel (what is still in flight fails with UNAVAILABLE)."""
        self.handler.initiate_shutdown()
        await self.health.enter_graceful_shutdown()
        await self.proxy.wait_idle(grace)
        await self.handler.close()


_MAX_FENCES = 65536  # (credential, name) pairs whose newest instance is remembered


def _not_draining(exposed: ExposedTunnel) -> bool:
    return not isinstance(exposed, ExposedTunnel) or not exposed.draining


def _serves(exposed: ExposedTunnel, service: str) -> bool:
    """Whether a call for ``service`` may go to ``exposed`` now (a tunnel of this node
    that is not being closed and whose backend serves it; any other kind of tunnel)."""
    return not isinstance(exposed, ExposedTunnel) or exposed.serves(service)


_LISTED_IN_ERRORS = 10  # services named in a "no tunnel exposes" error
_NAMES_IN_ERRORS = 3  # tunnel names given for each of them


def _capped(items: list[str], most: int, separator: str) -> str:
    """``items`` joined, the first ``most`` of them, then "and N more"."""
    shown = separator.join(items[:most])
    return f"{shown}{separator}and {len(items) - most} more" if len(items) > most else shown


def no_route_details(service: str, pin: str | None, exposed: dict[str, list[str]]) -> str:
    """The details of a call for ``service`` that no tunnel serves: one line, however
    many services and tunnels there are (the first few named, then how many more)."""
    listed = [
        f"{name} (via {_capped(sorted(set(tunnels)), _NAMES_IN_ERRORS, ', ')})"
        for name, tunnels in sorted(exposed.items())
    ]
    now = _capped(listed, _LISTED_IN_ERRORS, "; ")
    where = f" through tunnel {pin!r}" if pin else ""
    return f"no tunnel exposes service {service}{where}; exposed now: {now or 'nothing'}"


def _both(
    first: Callable[[ReverseTunnel], Any] | None, second: Callable[[ReverseTunnel], Any] | None
) -> Callable[[ReverseTunnel], Any] | None:
    """A tunnel callback that calls ``first`` then ``second`` (either may be None)."""
    if first is None or second is None:
        return first or second

    def both(tunnel: ReverseTunnel) -> Any:
        first(tunnel)
        return second(tunnel)

    return both


def _replaced_by(
    metadata: md.MetadataPairs, name: str, same_name: list[TunnelRecord]
) -> list[tuple[TunnelRecord, grpc.StatusCode, str]]:
    """The tunnels (of the same credential, under ``name``) that a new tunnel opened
    with ``metadata`` replaces, with the status each is closed with: every tunnel of
    another instance of the exposer, and the one of the same instance and slot (the
    stale side of a reconnection). Tunnels announcing no instance are left alone."""
    instance = md.first_value(metadata, INSTANCE_HEADER)
    if not isinstance(instance, str) or not instance:
        return []
    slot = md.first_value(metadata, SLOT_HEADER)
    out: list[tuple[TunnelRecord, grpc.StatusCode, str]] = []
    for record in same_name:
        theirs = record.metadata_value(INSTANCE_HEADER)
        if not isinstance(theirs, str) or not theirs:
            continue
        if theirs != instance:
            out.append(
                (
                    record,
                    grpc.StatusCode.ABORTED,
                    f"tunnel name {name!r} {TAKEN_OVER} of the same credential",
                )
            )
        elif slot is not None and record.metadata_value(SLOT_HEADER) == slot:
            out.append(
                (
                    record,
                    grpc.StatusCode.UNAVAILABLE,
                    f"tunnel {name!r} replaced by a reconnection of the same exposer",
                )
            )
    return out


__all__ = ["Gateway", "no_route_details"]
