"""Prometheus metrics of a gateway (``grpctunnel serve``) and of an exposer
(``grpctunnel expose``), each in a registry of its own, served over HTTP when asked.

:class:`GatewayMetrics` is told by the :class:`~grpctunnel.gateway.Gateway` as tunnels
open, close or are refused and as each relayed call ends; :class:`ExposerMetrics` reads
an :class:`~grpctunnel.gateway.exposer.Exposer`'s counters and is told as its calls end.
Neither uses prometheus_client's global registry, so tests and several gateways in one
process never collide; :func:`serve_metrics` serves one registry at ``/metrics``.

Label values stay bounded whatever callers send. Tunnel names are never labels. A call
is labelled by its service only if a tunnel exposed that service when the call was
routed, and by its method only if the backend's reflection lists the method or the
backend once answered it with OK (at most :data:`MAX_METHODS_PER_SERVICE` such names per
service); anything else is counted under :data:`UNKNOWN`. Reasons of tunnel events come
from small fixed sets (:data:`CLOSED_REASONS`, :data:`REFUSED_REASONS`).

Everything here is called on the event loop, except what the HTTP server's thread reads
while it renders a scrape: prometheus_client's own metrics (locked) and plain integers.
prometheus_client itself is imported only when metrics are made (it takes a while).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol, cast

import grpc

from grpctunnel.gateway.announce import TAKEN_OVER

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector

    from grpctunnel.gateway.method_kinds import MethodKinds
    from grpctunnel.gateway.proxy import RelayStats

log = logging.getLogger("grpctunnel")

UNKNOWN = "(unknown)"  # the service or method label of a call no tunnel exposes
OTHER = "(other)"  # the service label once MAX_SERVICES services have been labelled
MAX_SERVICES = 1000  # distinct service label values
MAX_METHODS_PER_SERVICE = 100  # method names learnt from OK answers (beyond reflection's)

DIRECTIONS = ("forward", "reverse")
OPENED = "opened"
CLOSED = "closed"
REFUSED = "refused"
ACCEPTED = "accepted"  # the reason of every "opened" event
# why a tunnel closed, as its close reason reads (the first that matches), else "other"
_CLOSE_MATCHES: tuple[tuple[str, str], ...] = (
    (TAKEN_OVER, "taken_over"),
    ("replaced by a reconnection", "replaced"),
    ("closed by an administrator", "admin"),
    ("shutting down", "shutdown"),
    ("protocol error", "protocol_error"),
    ("tunnel lost", "lost"),
    ("closed by peer", "peer"),
    ("tunnel closed", "disconnected"),
)
CLOSED_REASONS = frozenset({reason for _, reason in _CLOSE_MATCHES} | {"other"})
REFUSED_REASONS = frozenset(
    {
        "unauthenticated",
        "permission_denied",
        "resource_exhausted",
        "aborted",
        "unavailable",
        "other",
    }
)
# call durations: relayed calls run from milliseconds (unary) to hours (streams)
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    float("inf"),
)


def closed_reason(text: str) -> str:
    """The label value (one of :data:`CLOSED_REASONS`) of a tunnel's close reason."""
    for fragment, reason in _CLOSE_MATCHES:
        if fragment in text:
            return reason
    return "other"


def refused_reason(code: grpc.StatusCode) -> str:
    """The label value (one of :data:`REFUSED_REASONS`) of a refusal's status code."""
    name = code.name.lower()
    return name if name in REFUSED_REASONS else "other"


def split_method(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    service, _, name = method[1:].partition("/")
    return service, name


class _Totals(Protocol):
    """Where relayed bytes are counted (a :class:`~grpctunnel.gateway.proxy.RelayStats`)."""

    request_bytes: int
    response_bytes: int


class _BytesCollector:
    """``<prefix>_relayed_bytes_total{direction}``, read from relay counters at scrape
    time (the relays add plain integers, far cheaper than a metric per message)."""

    def __init__(self, name: str, sources: Callable[[], Iterable[_Totals]]) -> None:
        self._name = name
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            self._name,
            "Message bytes relayed, by direction (request: to the backend, response: back).",
            labels=["direction"],
        )
        sources = list(self._sources())
        family.add_metric(["request"], sum(s.request_bytes for s in sources))
        family.add_metric(["response"], sum(s.response_bytes for s in sources))
        yield family


class _CountersCollector:
    """Counters read from plain integers at scrape time: (name, help, label, value per
    label value)."""

    def __init__(self) -> None:
        self.counters: list[tuple[str, str, str, Callable[[], dict[str, float]]]] = []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        for name, text, label, read in self.counters:
            family = CounterMetricFamily(name, text, labels=[label] if label else None)
            for value, count in read().items():
                family.add_metric([value] if label else [], count)
            yield family


class _Labeller:
    """Bounded (service, method) label values of calls; see the module documentation."""

    def __init__(self) -> None:
        self._answered: dict[str, set[str]] = {}  # service -> methods once answered OK
        self._services: set[str] = set()

    def service(self, service: str) -> str:
        """The label value of ``service``, a service some tunnel exposed."""
        if service not in self._services:
            if len(self._services) >= MAX_SERVICES:
                return OTHER
            self._services.add(service)
        return service

    def labels(
        self, method: str, code: grpc.StatusCode, *, routed: bool, kinds: MethodKinds | None
    ) -> tuple[str, str]:
        if not routed:
            return UNKNOWN, UNKNOWN
        service, name = split_method(method)
        if self.service(service) == OTHER:
            return OTHER, UNKNOWN
        answered = self._answered.setdefault(service, set())
        if name in answered or (kinds is not None and kinds.get(method) is not None):
            return service, name
        if code == grpc.StatusCode.OK and len(answered) < MAX_METHODS_PER_SERVICE:
            answered.add(name)
            return service, name
        return service, UNKNOWN


class GatewayMetrics:
    """The metrics of one gateway, in :attr:`registry` (a registry of its own).

    The gateway calls the hooks below as things happen; :meth:`node_seen`,
    :meth:`node_gone` and :meth:`call_relayed_to_node` are for a cluster of gateways to
    call (nothing calls them in a gateway on its own).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = registry if registry is not None else CollectorRegistry()
        self._tunnels_open = Gauge(
            "grpctunnel_tunnels_open",
            "Tunnels open now, by direction (reverse: opened by an exposer).",
            ["direction"],
            registry=registry,
        )
        self._events = Counter(
            "grpctunnel_tunnel_events",
            "Tunnels opened, closed and refused, by event and reason.",
            ["event", "reason"],
            registry=registry,
        )
        self._calls = Counter(
            "grpctunnel_calls",
            "Calls relayed to exposed services (directly or through forward tunnels), "
            "by service, method and final status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self._durations = Histogram(
            "grpctunnel_call_duration_seconds",
            "How long relayed calls took, by service and method.",
            ["service", "method"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._in_flight = Gauge(
            "grpctunnel_calls_in_flight",
            "Relayed calls in progress now.",
            registry=registry,
        )
        self._service_tunnels = Gauge(
            "grpctunnel_service_tunnels",
            "Live tunnels exposing each service ever exposed here (0: none now).",
            ["service"],
            registry=registry,
        )
        self._nodes = Gauge(
            "grpctunnel_cluster_nodes",
            "Gateway nodes of the cluster seen alive, this one included (0: no cluster).",
            registry=registry,
        )
        self._to_nodes = Counter(
            "grpctunnel_cluster_relayed_calls",
            "Calls relayed to another node of the cluster, by final status code.",
            ["code"],
            registry=registry,
        )
        self._totals: list[_Totals] = []
        registry.register(_BytesCollector("grpctunnel_relayed_bytes", lambda: tuple(self._totals)))
        self._labeller = _Labeller()
        self._nodes_alive: set[str] = set()
        for direction in DIRECTIONS:
            self._tunnels_open.labels(direction)
        self._events.labels(OPENED, ACCEPTED)
        self._in_flight_of: Callable[[], int] = lambda: 0
        self._in_flight.set_function(lambda: self._in_flight_of())

    # -- what the gateway calls -------------------------------------------------------

    def bind(self, totals: RelayStats) -> None:
        """Reads the calls in flight and the bytes relayed from ``totals`` (the
        gateway's relay counters)."""
        self._totals.append(totals)
        self._in_flight_of = lambda: totals.in_flight

    def tunnel_opened(self, direction: str) -> None:
        self._tunnels_open.labels(direction).inc()
        self._events.labels(OPENED, ACCEPTED).inc()

    def tunnel_closed(self, direction: str, reason: str) -> None:
        """A tunnel that was counted open has closed; ``reason`` as the gateway logged
        it (normalised to one of :data:`CLOSED_REASONS`)."""
        self._tunnels_open.labels(direction).dec()
        self._events.labels(CLOSED, closed_reason(reason)).inc()

    def tunnel_refused(self, code: grpc.StatusCode) -> None:
        self._events.labels(REFUSED, refused_reason(code)).inc()

    def service_tunnels(self, service: str, count: int) -> None:
        """``service`` is exposed by ``count`` live tunnels now."""
        label = self._labeller.service(service)
        if label != OTHER:
            self._service_tunnels.labels(label).set(count)

    def call_ended(
        self,
        method: str,
        code: grpc.StatusCode,
        seconds: float,
        *,
        routed: bool,
        kinds: MethodKinds | None = None,
    ) -> None:
        """A call the gateway answered has ended. ``routed``: it was relayed to a
        tunnel exposing its service (else it failed for want of one); ``kinds``: the
        method kinds learnt of that tunnel's backend."""
        service, name = self._labeller.labels(method, code, routed=routed, kinds=kinds)
        self._calls.labels(service, name, code.name).inc()
        self._durations.labels(service, name).observe(seconds)

    # -- for a cluster ------------------------------------------------------------------

    def node_seen(self, node: str) -> None:
        """The cluster saw ``node`` alive (call it for this node too)."""
        self._nodes_alive.add(node)
        self._nodes.set(len(self._nodes_alive))

    def node_gone(self, node: str) -> None:
        """The cluster lost sight of ``node``."""
        self._nodes_alive.discard(node)
        self._nodes.set(len(self._nodes_alive))

    def call_relayed_to_node(self, code: grpc.StatusCode) -> None:
        """A call was relayed to another node of the cluster and ended with ``code``."""
        self._to_nodes.labels(code.name).inc()


class _ExposerCounters(Protocol):
    """What :class:`ExposerMetrics` reads of an exposer's stats (an ExposeStats)."""

    tunnels_up: int
    reconnects: int


class ExposerMetrics:
    """The metrics of one exposer, in :attr:`registry` (a registry of its own): its
    tunnels up and wanted, reconnections, calls relayed by code and how long they
    took, calls in flight, bytes relayed, and backend errors."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = registry if registry is not None else CollectorRegistry()
        self._calls = Counter(
            "grpctunnel_expose_calls",
            "Calls relayed to the backend, by final status code.",
            ["code"],
            registry=registry,
        )
        self._durations = Histogram(
            "grpctunnel_expose_call_duration_seconds",
            "How long calls relayed to the backend took.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._tunnels_up = Gauge(
            "grpctunnel_expose_tunnels_up", "Tunnels to the server up now.", registry=registry
        )
        self._tunnels_wanted = Gauge(
            "grpctunnel_expose_tunnels_wanted",
            "Tunnels the exposer keeps open when it can (--tunnels).",
            registry=registry,
        )
        self._in_flight = Gauge(
            "grpctunnel_expose_calls_in_flight",
            "Calls relayed to the backend in progress now.",
            registry=registry,
        )
        self._sources: list[_Totals] = []
        registry.register(
            cast(
                "Collector",
                _BytesCollector("grpctunnel_expose_relayed_bytes", lambda: tuple(self._sources)),
            )
        )
        self._counters = _CountersCollector()
        registry.register(cast("Collector", self._counters))
        self._discovery_failures = 0

    def bind(
        self, stats: _ExposerCounters, totals: RelayStats, backend: RelayStats, tunnels: int
    ) -> None:
        """Reads the exposer's ``stats``, its relay ``totals``, the counters of its
        ``backend`` route, and the number of ``tunnels`` it keeps."""
        self._sources.append(totals)
        self._tunnels_up.set_function(lambda: stats.tunnels_up)
        self._tunnels_wanted.set(tunnels)
        self._in_flight.set_function(lambda: totals.in_flight)
        self._counters.counters.extend(
            [
                (
                    "grpctunnel_expose_reconnects",
                    "Times a tunnel was lost or could not be opened, and was tried again.",
                    "",
                    lambda: {"": stats.reconnects},
                ),
                (
                    "grpctunnel_expose_backend_errors",
                    "Failures to reach the backend: calls it could not take (stage=call), "
                    "attempts to list its services (stage=discovery).",
                    "stage",
                    lambda: {
                        "call": backend.unreachable,
                        "discovery": self._discovery_failures,
                    },
                ),
            ]
        )

    def call_ended(self, code: grpc.StatusCode, seconds: float) -> None:
        self._calls.labels(code.name).inc()
        self._durations.observe(seconds)

    def discovery_failed(self) -> None:
        """Listing the backend's services failed (it could not be reached)."""
        self._discovery_failures += 1


class MetricsServer:
    """An HTTP server of one registry's metrics at ``/metrics``, in a thread of its own;
    :meth:`close` stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def serve_metrics(
    registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0
) -> MetricsServer:
    """Serves ``registry`` at ``http://HOST:PORT/metrics`` (port 0: a free one). Raises
    OSError when the address cannot be listened on."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host.strip("[]"), registry=registry)
    return MetricsServer(server, thread, host.strip("[]"))


__all__ = [
    "CLOSED_REASONS",
    "MAX_METHODS_PER_SERVICE",
    "MAX_SERVICES",
    "OTHER",
    "REFUSED_REASONS",
    "UNKNOWN",
    "ExposerMetrics",
    "GatewayMetrics",
    "MetricsServer",
    "closed_reason",
    "refused_reason",
    "serve_metrics",
]
