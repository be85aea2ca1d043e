"""Publishing a local gRPC backend through reverse tunnels (``grpctunnel expose``).

:class:`Exposer` dials a tunnel server, opens reverse tunnels that announce a name and
the backend's services (given, else those of its schema files, else found by reflection
on the backend), and relays every call the server sends down them to the backend as raw
bytes. Given schema files (``ExposeConfig.schema``), it answers the reflection questions
that come down the tunnels itself, from them (`SchemaReflection`), so that a backend
without reflection is described through the server all the same. It keeps the tunnels up:
when one is lost it is reopened after a jittered, capped exponential backoff; when the
backend is down, callers get UNAVAILABLE naming it and the tunnels stay up.

Its connection to the server pings (``keepalive_interval`` / ``keepalive_timeout``), so a
server that vanished without a word (a frozen host, a pulled cable) is noticed and
redialled. ``metadata`` goes with every tunnel as it opens: the place for a token
(``grpctunnel.gateway.auth.bearer_metadata``); ``server_credentials`` makes the connection TLS.
Each exposer announces an instance id of its own, so that a restarted one takes over its
name at once from the stale tunnels of the one before (see ``grpctunnel.gateway``); an
exposer whose tunnels were taken over that way stops with :class:`ExposeError` rather
than fight the newer one for its name.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from grpctunnel import keepalive
from grpctunnel.client import ReverseTunnelServer
from grpctunnel.gateway.announce import GATEWAY_ANSWERS, announce_metadata
from grpctunnel.gateway.message_limit import MessageLimit
from grpctunnel.gateway.method_kinds import MethodKinds
from grpctunnel.gateway.metrics import ExposerMetrics
from grpctunnel.gateway.proxy import ProxyHandler, RelayStats, Route
from grpctunnel.gateway.reflection_client import reflect
from grpctunnel.gateway.schema_files import SchemaIndex
from grpctunnel.gateway.schema_reflection import SchemaReflection
from grpctunnel.metadata import MetadataPairs
from grpctunnel.options import DEFAULT_ESTABLISHMENT_TIMEOUT, TunnelClientOptions
from grpctunnel.rpc import TunnelServiceStub

log = logging.getLogger("grpctunnel.gateway.exposer")

# failures that retrying cannot mend
FATAL_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


# what only the server itself asks through a tunnel (callers' health and reflection calls
# are answered by the server): the backend's health, which it watches, and its schema
_HOUSEKEEPING = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
)


class ExposeError(Exception):
    """Exposing cannot go on (wrong credentials, not a tunnel server, nothing to expose)."""


@dataclass
class Backoff:
    """Jittered, capped exponential backoff: ``initial * 2**n`` up to ``cap`` seconds,
    each delay drawn uniformly from its upper half."""

    initial: float = 0.5
    cap: float = 10.0
    attempts: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * (2**self.attempts))
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0


@dataclass
class ExposeStats:
    """What the exposer has done, for status displays."""

    tunnels_up: int = 0
    calls_in_flight: int = 0
    calls_total: int = 0
    calls_failed: int = 0
    reconnects: int = 0
    state: str = "connecting"
    last_error: str = ""
    server: str = ""  # the server the latest tunnel connected to


@dataclass
class ExposeConfig:
    """What to expose, where, and how.

    ``server`` is the tunnel server, or several (a list, or names separated by commas)
    that are tried in turn: the nodes of one cluster, say (a DNS name with several
    addresses is one server to gRPC, which tries each address). ``metadata`` is sent
    with every tunnel as it opens (a bearer token, say);
    ``server_credentials`` / ``backend_credentials`` make those connections TLS;
    ``channel_options`` apply to both. The server connection also gets keepalive
    options (``keepalive_interval`` None turns them off). ``instance`` identifies this
    exposer to the server (one per process unless given) and ``epoch`` orders it among
    the instances of its name: when it started, a newer one wins. ``schema``, schema
    files' descriptors (every import included), describes the backend in its place:
    reflection through the tunnels is answered from it, and its services are announced
    unless ``services`` names them. ``max_message_length`` bounds
    each relayed message both ways (the backend connection's gRPC limits and the
    tunnel's); None for no limit; ``limit_raised_by`` tells how to raise it, in the
    error of a response over it (default: this field's name). ``establishment_timeout`` is the tunnels' (see
    ``TunnelOptions``); a tunnel whose process was frozen longer than the server may
    wait for a keepalive answer (``keepalive_timeout``) is dropped without starting the
    calls queued on it, since the server may have failed them already.
    """

    backend: str
    server: str | Sequence[str]
    name: str
    services: Sequence[str] = ()
    tunnels: int = 1
    backoff_initial: float = 0.5
    backoff_cap: float = 10.0
    connect_timeout: float = 10.0
    metadata: tuple[tuple[str, str], ...] = ()
    server_credentials: grpc.ChannelCredentials | None = None
    backend_credentials: grpc.ChannelCredentials | None = None
    channel_options: Sequence[tuple[str, Any]] = field(default_factory=tuple)
    keepalive_interval: float | None = keepalive.DEFAULT_INTERVAL
    keepalive_timeout: float = keepalive.DEFAULT_TIMEOUT
    instance: str = field(default_factory=lambda: uuid.uuid4().hex)
    epoch: int = field(default_factory=time.time_ns)
    max_message_length: int | None = 64 * 1024 * 1024
    establishment_timeout: float | None = DEFAULT_ESTABLISHMENT_TIMEOUT
    schema: descriptor_pb2.FileDescriptorSet | None = None
    limit_raised_by: str | None = None

    def message_limit(self) -> MessageLimit | None:
        """The bound on a response from the backend, as the relay names it when over."""
        if self.max_message_length is None:
            return None
        raised_by = self.limit_raised_by or (
            f"the exposer's max_message_length ({self.max_message_length} bytes)"
        )
        return MessageLimit(self.max_message_length, "expose", raised_by)

    def tunnel_options(self, metadata: MetadataPairs) -> TunnelClientOptions:
        """The options of each tunnel, opened with ``metadata``."""
        return TunnelClientOptions(
            metadata=metadata,
            max_receive_message_length=self.max_message_length,
            max_send_message_length=self.max_message_length,
            establishment_timeout=self.establishment_timeout,
            stale_after=keepalive.stale_after(self.keepalive_timeout),
        )

    @property
    def servers(self) -> list[str]:
        """The servers to try, in order."""
        given = [self.server] if isinstance(self.server, str) else list(self.server)
        found = [s.strip() for entry in given for s in entry.split(",") if s.strip()]
        return list(dict.fromkeys(found))

    def backend_channel_options(self) -> list[tuple[str, Any]]:
        """The backend connection's options: the message limits, and grpc's own
        reconnection backoff held to ours (its default grows to 120 s, so a backend that
        was down for a minute came back to callers only long after it listened)."""
        limit = -1 if self.max_message_length is None else self.max_message_length
        initial_ms = max(1, int(self.backoff_initial * 1000))
        return [
            *self.channel_options,
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.initial_reconnect_backoff_ms", initial_ms),
            ("grpc.min_reconnect_backoff_ms", initial_ms),
            ("grpc.max_reconnect_backoff_ms", max(initial_ms, int(self.backoff_cap * 1000))),
        ]

    def server_channel_options(self) -> list[tuple[str, Any]]:
        options = list(self.channel_options)
        if self.keepalive_interval is not None:
            options.extend(
                keepalive.channel_options(self.keepalive_interval, self.keepalive_timeout)
            )
        return options


def _channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, Any]]
) -> grpc.aio.Channel:
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options=list(options))
    return grpc.aio.insecure_channel(target, options=list(options))


async def list_backend_services(channel: grpc.aio.Channel, timeout: float = 10.0) -> list[str]:
    """The services a backend lists by server reflection (v1, else v1alpha). Raises the
    call's ``AioRpcError`` (UNIMPLEMENTED: no reflection) when it cannot list them."""
    response = await reflect(
        channel, reflection_pb2.ServerReflectionRequest(list_services=""), timeout=timeout
    )
    if response is None:  # answered with no reply at all: nothing listed
        return []
    return [s.name for s in response.list_services_response.service]


class Exposer:
    """Keeps ``config.tunnels`` reverse tunnels to ``config.server`` (the first of its
    servers that answers) open, relaying
    their calls to ``config.backend``. ``metrics``, if given, is bound to its counters
    and told as each call ends. The calls the server makes to learn the backend's
    health and schema are relayed too, but not counted among the exposer's calls."""

    def __init__(
        self,
        config: ExposeConfig,
        *,
        on_change: Callable[[ExposeStats], None] | None = None,
        metrics: ExposerMetrics | None = None,
    ) -> None:
        self.config = config
        self.stats = ExposeStats()
        self._on_change = on_change
        self._backend = _channel(
            config.backend, config.backend_credentials, config.backend_channel_options()
        )
        self.kinds = MethodKinds(lambda service: self._backend)
        self.backend_stats = RelayStats()
        route = Route(
            self._backend,
            f"backend {config.backend}",
            self.kinds,
            stats=self.backend_stats,
            tunnel=config.name,
        )
        self.proxy = ProxyHandler(lambda method, md: route, observer=self._observed)
        self._schema = SchemaIndex(config.schema) if config.schema is not None else None
        self.proxy.limit = config.message_limit()
        housekeeping = Route(self._backend, f"backend {config.backend}", self.kinds)
        self._housekeeping = ProxyHandler(
            lambda method, md: housekeeping if method.startswith(_HOUSEKEEPING) else None
        )
        self.metrics = metrics
        if metrics is not None:
            metrics.bind(self.stats, self.proxy.totals, self.backend_stats, config.tunnels)
        self._stopping = asyncio.Event()
        self._connected_once = False
        # which of the servers the tunnels go to: all of them to one, the next one in
        # turn once it fails
        self._server = 0
        self.services: list[str] = list(config.services)

    def _observed(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.stats.calls_total += 1
        if code != grpc.StatusCode.OK:
            self.stats.calls_failed += 1
        if self.metrics is not None:
            self.metrics.call_ended(code, seconds)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "call %s %s %.1f ms via %s",
                method,
                code.name,
                seconds * 1000,
                self.config.name,
                extra={
                    "event": "call",
                    "tunnel": self.config.name,
                    "service": method[1:].split("/", 1)[0],
                    "method": method,
                    "code": code.name,
                    "duration": round(seconds, 6),
                },
            )
        self._changed()

    def _changed(self) -> None:
        self.stats.calls_in_flight = self.proxy.in_flight
        if self._on_change is not None:
            self._on_change(self.stats)

    def _handlers(self) -> tuple[grpc.GenericRpcHandler[Any, Any], ...]:
        """What answers the calls of a tunnel: the schema files' reflection if given, the
        server's own questions to the backend, then every call to the backend."""
        relays = (self._housekeeping, self.proxy)
        return relays if self._schema is None else (SchemaReflection(self._schema), *relays)

    async def discover_services(self) -> list[str]:
        """The services to announce: those named in the config, else those of its
        schema files, else the backend's own by reflection (leaving out reflection and
        health, which the gateway answers itself)."""
        if self.config.services:
            return list(self.config.services)
        if self._schema is not None:
            defined = [s for s in self._schema.services() if s not in GATEWAY_ANSWERS]
            if not defined:
                raise ExposeError("the schema files define no services to expose")
            return defined
        try:
            found = await list_backend_services(self._backend, timeout=self.config.connect_timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise ExposeError(
                    f"backend {self.config.backend} does not offer server reflection; name its services with --service"
                ) from None
            raise
        services = [s for s in found if s not in GATEWAY_ANSWERS]
        if not services:
            raise ExposeError(
                f"backend {self.config.backend} lists no services to expose; name them with --service"
            )
        return services

    async def run(self) -> None:
        """Runs until :meth:`stop`; raises :class:`ExposeError` when it cannot go on."""
        keepers = [
            asyncio.ensure_future(self._keep_tunnel(i)) for i in range(max(1, self.config.tunnels))
        ]
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait([stop, *keepers], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            stop.cancel()
            for task in keepers:
                task.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            self.stats.state = "stopped"
            self.stats.tunnels_up = 0
            self._changed()
            await self._backend.close(None)

    def stop(self) -> None:
        self._stopping.set()

    def _server_now(self) -> tuple[int, str]:
        servers = self.config.servers
        turn = self._server % len(servers)
        return turn, servers[turn]

    def _server_failed(self, turn: int) -> None:
        """The server at ``turn`` failed a tunnel: the next attempts go to the next
        server (unless another tunnel moved on already)."""
        servers = self.config.servers
        if len(servers) > 1 and self._server % len(servers) == turn:
            self._server = turn + 1
            log.warning(
                "server %s failed: trying %s next",
                servers[turn],
                servers[self._server % len(servers)],
            )

    async def _keep_tunnel(self, index: int) -> None:
        config = self.config
        backoff = Backoff(config.backoff_initial, config.backoff_cap)
        if not config.servers:
            raise ExposeError("no tunnel server to connect to")
        while True:
            tunnel, server_channel = None, None
            turn, server = self._server_now()
            try:
                try:
                    services = await self.discover_services()
                except grpc.aio.AioRpcError as e:
                    if self.metrics is not None:
                        self.metrics.discovery_failed()
                    self._failed(
                        f"cannot reach backend {config.backend}: {e.code().name}: {e.details()}"
                    )
                    services = []
                if services:
                    self.services = services
                    server_channel = _channel(
                        server, config.server_credentials, config.server_channel_options()
                    )
                    announce = announce_metadata(
                        config.name,
                        services,
                        instance=config.instance,
                        slot=index,
                        epoch=config.epoch,
                    )
                    options = config.tunnel_options((*announce, *config.metadata))
                    stub = TunnelServiceStub(server_channel)
                    rts = ReverseTunnelServer(stub, options)
                    rts.add_generic_rpc_handlers(self._handlers())
                    tunnel = await rts.serve(timeout=config.connect_timeout, wait_for_ready=False)
                    self._up(index, services, server)
                    backoff.reset()
                    await tunnel.wait_closed()
                    error = tunnel.error
                    reason = error.details if error is not None else "server closed the tunnel"
                    self._down(f"tunnel {index + 1} lost: {reason}")
                    self._server_failed(turn)
                    if error is not None and error.code == grpc.StatusCode.ABORTED:
                        # the server fenced this instance off: a newer one has the name
                        raise ExposeError(
                            f"tunnel name {config.name!r} was taken over by another instance "
                            "using the same credential (a newer `expose` of the same name); "
                            f"this one stops ({reason})"
                        )
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.ABORTED:  # fenced off: a newer one has the name
                    raise ExposeError(
                        f"server {server} refused the tunnel: {e.details()}; "
                        "a newer `expose` of the same name and credential runs elsewhere, "
                        "so this one stops"
                    ) from None
                if e.code() in FATAL_CODES and not self._connected_once:
                    raise ExposeError(
                        f"server {server} refused the tunnel: {e.code().name}: {e.details()}"
                    ) from None
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    self._failed(f"cannot reach server {server}: {e.code().name}: {e.details()}")
                else:
                    self._failed(
                        f"server {server} refused tunnel {index + 1}: {e.code().name}: {e.details()}"
                    )
                self._server_failed(turn)
            finally:
                if tunnel is not None:
                    await tunnel.close()
                if server_channel is not None:
                    await server_channel.close(None)
            delay = backoff.next_delay()
            log.warning("reconnecting tunnel %d in %.1fs", index + 1, delay)
            self.stats.state = "reconnecting" if self.stats.tunnels_up == 0 else self.stats.state
            self.stats.reconnects += 1
            self._changed()
            await asyncio.sleep(delay)

    def _up(self, index: int, services: list[str], server: str) -> None:
        self._connected_once = True
        self.stats.tunnels_up += 1
        self.stats.state = "connected"
        self.stats.last_error = ""
        self.stats.server = server
        log.info(
            "tunnel %d connected to %s as %r, exposing %s (backend %s)",
            index + 1,
            server,
            self.config.name,
            ", ".join(services),
            self.config.backend,
            extra={
                "event": "tunnel_connected",
                "tunnel": self.config.name,
                "peer": server,
                "services": services,
            },
        )
        self._changed()

    def _down(self, why: str) -> None:
        self.stats.tunnels_up = max(0, self.stats.tunnels_up - 1)
        self.stats.last_error = why
        log.warning(
            "%s",
            why,
            extra={"event": "tunnel_lost", "tunnel": self.config.name, "reason": why},
        )
        self._changed()

    def _failed(self, why: str) -> None:
        self.stats.last_error = why
        log.warning("%s", why)
        self._changed()


__all__ = [
    "Backoff",
    "ExposeConfig",
    "ExposeError",
    "ExposeStats",
    "Exposer",
    "list_backend_services",
]
