"""A serving gateway, assembled: the one place that builds what ``grpctunnel serve`` runs.

:class:`GatewayServer` creates the grpc.aio server with the gateway's options (message
limits, keepalive, no port sharing) and interceptors (tokens), attaches the
:class:`~grpctunnel.gateway.Gateway` (tunnel service, relaying, merged reflection,
health), binds the address with or without TLS, and shuts down gracefully: new tunnels
are refused, relayed calls get up to ``grace`` seconds, then the tunnels end. The
command, the demo and the tests all start gateways through it::

    async with GatewayServer(GatewaySettings(port=0)) as server:
        print("listening on", server.address)
        await server.wait_for_termination()
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import grpc

from grpctunnel import keepalive
from grpctunnel.defaults import DEFAULT_ESTABLISHMENT_TIMEOUT, DEFAULT_MAX_MESSAGE_LENGTH
from grpctunnel.gateway.auth import TokenAuthority
from grpctunnel.gateway.directory import DEFAULT_SERVICE_GRACE
from grpctunnel.gateway.gateway import Gateway
from grpctunnel.gateway.message_limit import MessageLimit
from grpctunnel.gateway.metrics import GatewayMetrics, MetricsServer, serve_metrics
from grpctunnel.gateway.proxy import CallObserver
from grpctunnel.options import TunnelServiceHandlerOptions, rpc_message_limit

if TYPE_CHECKING:  # Redis is imported only by a node of a cluster
    from grpctunnel.gateway.cluster import ClusterNode, ClusterSettings

log = logging.getLogger("grpctunnel")

DEFAULT_MAX_STREAMS_PER_TUNNEL = 1000


class BindError(OSError):
    """The gateway cannot listen on the address it was given."""


@dataclass
class GatewaySettings:
    """What a serving gateway is made of.

    ``port`` 0 picks a free one (see :attr:`GatewayServer.port`). ``credentials`` makes
    the port TLS; ``authority`` requires tokens of every tunnel and call.
    ``max_message_length`` bounds each relayed message (both directions, every hop of
    the server; ``limit_raised_by`` tells how to raise it, in the error of a response
    over it), ``max_streams_per_tunnel`` the calls one tunnel may have in progress.
    ``service_grace`` is how long a credential keeps a service after its last tunnel
    exposing it closed (see :mod:`grpctunnel.gateway.directory`). With ``cluster``, the
    gateway is one node of a cluster sharing one view through Redis (see
    :mod:`grpctunnel.gateway.cluster`; its ``advertise`` defaults to :attr:`address`).
    ``establishment_timeout`` is how long a reverse tunnel may take to send its settings
    (see ``TunnelOptions``); a forward tunnel whose serving side here was frozen longer
    than ``keepalive_timeout`` is dropped without starting the calls queued on it.
    ``backend_health`` False keeps the health service from watching each backend's own
    (see :class:`~grpctunnel.gateway.Gateway`).
    """

    host: str = "127.0.0.1"
    port: int = 0
    credentials: grpc.ServerCredentials | None = None
    authority: TokenAuthority | None = None
    max_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH
    limit_raised_by: str | None = None
    max_streams_per_tunnel: int | None = DEFAULT_MAX_STREAMS_PER_TUNNEL
    keepalive_interval: float = keepalive.DEFAULT_INTERVAL
    keepalive_timeout: float = keepalive.DEFAULT_TIMEOUT
    observer: CallObserver | None = None
    service_grace: float = DEFAULT_SERVICE_GRACE
    establishment_timeout: float | None = DEFAULT_ESTABLISHMENT_TIMEOUT
    backend_health: bool = True
    extra_server_options: list[tuple[str, int | str]] = field(default_factory=list)
    # Prometheus metrics at http://metrics_host:metrics_port/metrics (port 0: a free one;
    # None: none), from a registry of this server's own (see grpctunnel.gateway.metrics)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    cluster: ClusterSettings | None = None

    @property
    def address(self) -> str:
        """``host:port`` as grpc wants it (IPv6 hosts in brackets)."""
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"


class GatewayServer:
    """A grpc.aio server serving a :class:`Gateway`, from start to graceful stop."""

    def __init__(self, settings: GatewaySettings | None = None) -> None:
        self.settings = settings = settings or GatewaySettings()
        limit = settings.max_message_length
        self.metrics = GatewayMetrics() if settings.metrics_port is not None else None
        self.metrics_server: MetricsServer | None = None
        make_gateway: Callable[..., Gateway] = Gateway
        if settings.cluster is not None:
            from grpctunnel.gateway.cluster import cluster_gateway

            make_gateway = cluster_gateway(settings.cluster, settings)
        self.cluster: ClusterNode | None = None
        self.gateway = make_gateway(
            TunnelServiceHandlerOptions(
                max_receive_message_length=limit,
                max_send_message_length=limit,
                max_concurrent_streams=settings.max_streams_per_tunnel,
                establishment_timeout=settings.establishment_timeout,
                stale_after=keepalive.stale_after(settings.keepalive_timeout),
            ),
            authority=settings.authority,
            observer=settings.observer,
            service_grace=settings.service_grace,
            backend_health=settings.backend_health,
            metrics=self.metrics,
        )
        self.server = grpc.aio.server(
            interceptors=self.gateway.interceptors(),
            options=[
                ("grpc.so_reuseport", 0),
                # the tunnel RPCs' frames may be larger than `limit`; calls over it
                # fail in the relay, which holds each message to it
                ("grpc.max_receive_message_length", rpc_message_limit(limit)),
                ("grpc.max_send_message_length", rpc_message_limit(limit)),
                *keepalive.server_options(settings.keepalive_interval, settings.keepalive_timeout),
                *settings.extra_server_options,
            ],
        )
        self.gateway.proxy.limit = MessageLimit(
            limit,
            "serve",
            settings.limit_raised_by or f"the gateway's max_message_length ({limit} bytes)",
        )
        self.gateway.attach(self.server)
        self.port = 0
        self._stopped = False

    @property
    def address(self) -> str:
        """Where callers reach the gateway, ``host:port`` (once started)."""
        host = self.settings.host
        shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"{shown}:{self.port}"

    async def start(self) -> int:
        """Binds and starts serving; returns the port. Raises :class:`BindError` when
        the address cannot be listened on."""
        settings = self.settings
        try:
            if settings.credentials is not None:
                bound = self.server.add_secure_port(settings.address, settings.credentials)
            else:
                bound = self.server.add_insecure_port(settings.address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise BindError(
                f"cannot listen on {settings.host}:{settings.port}: the port is in use or "
                "the address is not this host's"
            )
        self.port = bound
        if self.metrics is not None and settings.metrics_port is not None:
            try:
                self.metrics_server = serve_metrics(
                    self.metrics.registry, settings.metrics_host, settings.metrics_port
                )
            except OSError as error:
                await self.server.stop(None)
                raise BindError(
                    f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
                    f"{error.strerror or error}"
                ) from None
        await self.server.start()
        if settings.cluster is not None:
            from grpctunnel.gateway.cluster import join_cluster

            if not settings.cluster.advertise:
                settings.cluster.advertise = self.address
            self.cluster = await join_cluster(self.gateway, settings.cluster)
        return bound

    async def stop(self, grace: float = 0.0) -> None:
        """Refuses new tunnels, lets relayed calls finish for up to ``grace`` seconds,
        then ends every tunnel (what is still in flight fails with UNAVAILABLE) and
        stops the server. Calling it again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if self.cluster is not None:  # the other nodes route nothing new here
            await self.cluster.leave()
        await self.gateway.shutdown(grace)
        if self.cluster is not None:
            await self.cluster.close()
        await self.server.stop(1.0 if grace else None)
        if self.metrics_server is not None:
            self.metrics_server.close()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()

    async def __aenter__(self) -> GatewayServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


__all__ = [
    "DEFAULT_MAX_MESSAGE_LENGTH",
    "DEFAULT_MAX_STREAMS_PER_TUNNEL",
    "BindError",
    "GatewayServer",
    "GatewaySettings",
]
