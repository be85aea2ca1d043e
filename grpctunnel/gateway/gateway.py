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
A tunnel name belongs to the credential whose tunnels hold it; another credential
announcing it is refused with PERMISSION_DENIED.

Exposers send a per-process :data:`INSTANCE_HEADER` (and :data:`SLOT_HEADER`, which of
its tunnels this is). A reverse tunnel of a new instance under the same credential and
name takes over at once: the old instance's tunnels under that name are closed with
ABORTED ("taken over ..."), so a restarted exposer never waits for its stale session to
time out. A reconnection of the same instance replaces only its own tunnel of that
slot, so the tunnels of one ``expose --tunnels N`` coexist.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from grpctunnel import metadata as md
from grpctunnel.gateway.announce import (
    GATEWAY_ANSWERS,
    HEALTH,
    INSTANCE_HEADER,
    PIN_HEADER,
    SLOT_HEADER,
    TAKEN_OVER,
    TUNNEL_SERVICE,
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
from grpctunnel.gateway.method_kinds import MethodKinds
from grpctunnel.gateway.proxy import CallObserver, ProxyHandler, Route, RouteError
from grpctunnel.gateway.reflection import MergedReflection
from grpctunnel.gateway.reflection_client import REFLECTION_V1, REFLECTION_V1ALPHA
from grpctunnel.handler import ReverseTunnel, TunnelRecord, TunnelServiceHandler
from grpctunnel.options import TunnelServiceHandlerOptions
from grpctunnel.v1 import tunnel_pb2_grpc

log = logging.getLogger("grpctunnel")


class Gateway:
    """Routes calls for exposed services over the reverse tunnels that expose them.

    Attach it to a grpc.aio server with :meth:`attach`; it adds the tunnel service, the
    relaying handler, reflection and health there, and the same relaying, reflection
    and health to calls arriving through forward tunnels.

    With ``authority``, tunnels and calls need a token that grants them (see the module
    documentation); the gateway enforces this on everything it attaches, and
    :meth:`interceptors` gives the interceptor that extends it to any other service on
    the same server. ``accept_tunnel`` / ``authorize_call`` hooks already in
    ``options`` still run, before the gateway's own checks, and so do
    ``on_reverse_tunnel_open`` / ``on_reverse_tunnel_close``; the caller's ``options``
    object itself is left as it was. The affinity key of a tunnel is its name.
    """

    def __init__(
        self,
        options: TunnelServiceHandlerOptions | None = None,
        *,
        authority: TokenAuthority | None = None,
        observer: CallObserver | None = None,
        on_tunnel_open: Callable[[ReverseTunnel], Any] | None = None,
        on_tunnel_close: Callable[[ReverseTunnel], Any] | None = None,
    ) -> None:
        given = options or TunnelServiceHandlerOptions()
        self.authority = authority
        self._on_open = _both(given.on_reverse_tunnel_open, on_tunnel_open)
        self._on_close = _both(given.on_reverse_tunnel_close, on_tunnel_close)
        options = dataclasses.replace(
            given,
            on_reverse_tunnel_open=self._opened,
            on_reverse_tunnel_close=self._closed,
            affinity_key=tunnel_name,
            accept_tunnel=first_refusal(given.accept_tunnel, self._accept_tunnel),
            authorize_call=(
                first_refusal(given.authorize_call, self._authorize_call)
                if authority is not None
                else given.authorize_call
            ),
        )
        self.handler = TunnelServiceHandler(options)
        # what kind each exposed method is, learnt by reflection through the tunnels
        self.kinds = MethodKinds(self._kinds_channel)
        self.proxy = ProxyHandler(
            self._route, observer=observer, drop_headers=frozenset({PIN_HEADER}), kinds=self.kinds
        )
        self._channels: dict[tuple[str, str | None], grpc.aio.Channel] = {}
        self._reflection = MergedReflection(self)
        self.health = HealthServicer()
        self._register(self.handler)

    # -- wiring -------------------------------------------------------------------------

    def attach(self, server: grpc.aio.Server) -> None:
        """Serves the tunnel service, the gateway and reflection/health on ``server``."""
        tunnel_pb2_grpc.add_TunnelServiceServicer_to_server(self.handler.service(), server)  # type: ignore[no-untyped-call]
        self._register(server, direct=True)

    def interceptors(self) -> list[AuthInterceptor]:
        """Interceptors for ``grpc.aio.server(interceptors=...)``: with an authority,
        the one that checks the token of every call on the server, including services
        other than the gateway's; without, none."""
        if self.authority is None:
            return []
        return [AuthInterceptor(self.authority)]

    def _register(self, target: Any, direct: bool = False) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.health, target)
        handlers: tuple[Any, ...] = (self._reflection.generic_handler(), self.proxy)
        if direct and self.authority is not None:
            # calls straight to the server carry their own token; those inside a forward
            # tunnel are checked by authorize_call against the tunnel's
            handlers = tuple(GuardedHandler(self.authority, h) for h in handlers)
        target.add_generic_rpc_handlers(handlers)

    # -- who may do what ----------------------------------------------------------------

    def _authorize_call(self, tunnel_metadata: md.MetadataPairs, method: str) -> Refusal | None:
        assert self.authority is not None
        return decide(self.authority, method, tunnel_metadata)[1]

    def _owner(self, record: TunnelRecord) -> str | None:
        """The credential a tunnel was opened with (None without an authority)."""
        if "owner" not in record.labels:
            grant = (
                self.authority.authenticate(record.metadata) if self.authority is not None else None
            )
            record.labels["owner"] = grant.name if grant is not None else None
        owner: str | None = record.labels["owner"]
        return owner

    def _accept_tunnel(self, kind: str, metadata: md.MetadataPairs, peer: str) -> Refusal | None:
        grant: Grant | None = None
        if self.authority is not None:
            method = OPEN_REVERSE_TUNNEL if kind == "reverse" else OPEN_TUNNEL
            grant, refusal = decide(self.authority, method, metadata)
            if refusal is not None:
                return refusal
        owner = grant.name if grant is not None else None
        open_now = self.handler.open_tunnels()
        replaced: list[tuple[TunnelRecord, grpc.StatusCode, str]] = []
        if kind == "reverse":
            name = announced_name(metadata)
            if grant is not None:
                why = grant.may_expose_as(name, announced_services(metadata))
                if why is not None:
                    return grpc.StatusCode.PERMISSION_DENIED, why
            if name:
                same_name = [
                    r
                    for r in open_now
                    if r.kind == "reverse" and announced_name(r.metadata) == name
                ]
                if any(self._owner(r) != owner for r in same_name):
                    return (
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"tunnel name {name!r} belongs to another credential",
                    )
                replaced = _replaced_by(metadata, name, same_name)
        if grant is not None and grant.max_tunnels is not None:
            going = {id(r) for r, _, _ in replaced}
            held = sum(1 for r in open_now if id(r) not in going and self._owner(r) == owner)
            if held >= grant.max_tunnels:
                return (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"credential {owner!r} already has {held} tunnels open "
                    f"(its limit is {grant.max_tunnels})",
                )
        for record, code, reason in replaced:
            log.info("closing a tunnel from %s: %s (new one from %s)", record.peer, reason, peer)
            record.close(reason, code)
        return None

    def own_services(self) -> list[str]:
        return [TUNNEL_SERVICE, HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA]

    # -- tunnels ------------------------------------------------------------------------

    def tunnels(self) -> list[ReverseTunnel]:
        return self.handler.all_reverse_tunnels()

    def exposed(self) -> dict[str, list[str]]:
        """Service name -> names of the tunnels exposing it."""
        out: dict[str, list[str]] = {}
        for tunnel in self.tunnels():
            name = tunnel_name(tunnel)
            for service in tunnel_services(tunnel):
                names = out.setdefault(service, [])
                if name not in names:
                    names.append(name)
        return out

    def _opened(self, tunnel: ReverseTunnel) -> None:
        credential = ""
        if self.authority is not None:
            grant = self.authority.authenticate(tunnel.metadata)
            credential = f" (credential {grant.name!r})" if grant is not None else ""
        log.info(
            "tunnel opened: %s from %s exposing %s%s",
            tunnel_name(tunnel),
            tunnel.peer,
            ", ".join(tunnel_services(tunnel)) or "no services",
            credential,
        )
        if self._on_open is not None:
            self._on_open(tunnel)

    def _closed(self, tunnel: ReverseTunnel) -> None:
        log.info(
            "tunnel closed: %s from %s (%s)",
            tunnel_name(tunnel),
            tunnel.peer,
            tunnel.session.close_reason,
        )
        if self._on_close is not None:
            self._on_close(tunnel)

    # -- routing ------------------------------------------------------------------------

    def _route(self, method: str, pairs: md.MetadataPairs) -> Route | RouteError | None:
        service = method[1:].split("/", 1)[0]
        if service in GATEWAY_ANSWERS or service == TUNNEL_SERVICE:
            return None
        pin = md.first_value(pairs, PIN_HEADER)
        pin_name = pin if isinstance(pin, str) and pin else None
        candidates = [t for t in self.tunnels() if service in tunnel_services(t)]
        if pin_name is not None:
            candidates = [t for t in candidates if tunnel_name(t) == pin_name]
        if not candidates:
            return RouteError(
                grpc.StatusCode.UNAVAILABLE, self._no_route_details(service, pin_name)
            )
        return Route(self._channel_for(service, pin_name))

    def _no_route_details(self, service: str, pin: str | None) -> str:
        exposed = self.exposed()
        now = "; ".join(
            f"{s} (via {', '.join(sorted(names))})" for s, names in sorted(exposed.items())
        )
        where = f" through tunnel {pin!r}" if pin else ""
        return f"no tunnel exposes service {service}{where}; exposed now: {now or 'nothing'}"

    def _kinds_channel(self, service: str) -> grpc.aio.Channel | None:
        if not any(service in tunnel_services(t) for t in self.tunnels()):
            return None
        return self._channel_for(service, None)

    def _channel_for(self, service: str, pin: str | None) -> grpc.aio.Channel:
        key = (service, pin)
        channel = self._channels.get(key)
        if channel is None:

            def accepts(t: ReverseTunnel) -> bool:
                return service in tunnel_services(t) and (pin is None or tunnel_name(t) == pin)

            channel = self.handler.channel_for(accepts, f" for service {service}")
            self._channels[key] = channel
        return channel

    # -- shutting down ------------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Refuses new tunnels, lets relayed calls finish for up to ``grace`` seconds,
        then ends every tunnel (what is still in flight fails with UNAVAILABLE)."""
        self.handler.initiate_shutdown()
        await self.health.enter_graceful_shutdown()
        await self.proxy.wait_idle(grace)
        await self.handler.close()


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


__all__ = ["Gateway"]
