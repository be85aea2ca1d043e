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
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection_pb2

from grpctunnel import metadata as md
from grpctunnel.handler import ReverseTunnel, TunnelServiceHandler
from grpctunnel.options import TunnelServiceHandlerOptions
from grpctunnel.proxy import CallObserver, ProxyHandler, Route, RouteError
from grpctunnel.v1 import tunnel_pb2, tunnel_pb2_grpc

log = logging.getLogger("grpctunnel")

NAME_HEADER = "grpctunnel-name"
SERVICES_HEADER = "grpctunnel-services"
PIN_HEADER = "grpctunnel-tunnel"

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
HEALTH = "grpc.health.v1.Health"
TUNNEL_SERVICE = "grpctunnel.v1.TunnelService"
# services a backend may have that the gateway answers for itself
GATEWAY_ANSWERS = frozenset({REFLECTION_V1, REFLECTION_V1ALPHA, HEALTH})


def tunnel_name(tunnel: ReverseTunnel) -> str:
    name = tunnel.metadata_value(NAME_HEADER)
    return name if isinstance(name, str) and name else f"tunnel-{tunnel.id}"


def tunnel_services(tunnel: ReverseTunnel) -> tuple[str, ...]:
    value = tunnel.metadata_value(SERVICES_HEADER)
    if not isinstance(value, str):
        return ()
    return tuple(s for s in (part.strip() for part in value.split(",")) if s)


def announce_metadata(name: str, services: Iterable[str]) -> md.MetadataPairs:
    """The tunnel open metadata an exposer sends."""
    return ((NAME_HEADER, name), (SERVICES_HEADER, ",".join(services)))


class Gateway:
    """Routes calls for exposed services over the reverse tunnels that expose them.

    Attach it to a grpc.aio server with :meth:`attach`; it adds the tunnel service, the
    relaying handler, reflection and health there, and the same relaying, reflection
    and health to calls arriving through forward tunnels.
    """

    def __init__(
        self,
        options: TunnelServiceHandlerOptions | None = None,
        *,
        observer: CallObserver | None = None,
        on_tunnel_open: Callable[[ReverseTunnel], Any] | None = None,
        on_tunnel_close: Callable[[ReverseTunnel], Any] | None = None,
    ) -> None:
        options = options or TunnelServiceHandlerOptions()
        self._on_open = on_tunnel_open
        self._on_close = on_tunnel_close
        options.on_reverse_tunnel_open = self._opened
        options.on_reverse_tunnel_close = self._closed
        options.affinity_key = tunnel_name
        self.handler = TunnelServiceHandler(options)
        self.proxy = ProxyHandler(
            self._route, observer=observer, drop_headers=frozenset({PIN_HEADER})
        )
        self._channels: dict[tuple[str, str | None], grpc.aio.Channel] = {}
        self._reflection = _MergedReflection(self)
        self.health = HealthServicer()
        self._register(self.handler)

    # -- wiring -------------------------------------------------------------------------

    def attach(self, server: grpc.aio.Server) -> None:
        """Serves the tunnel service, the gateway and reflection/health on ``server``."""
        tunnel_pb2_grpc.add_TunnelServiceServicer_to_server(self.handler.service(), server)  # type: ignore[no-untyped-call]
        self._register(server)

    def _register(self, target: Any) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.health, target)
        target.add_generic_rpc_handlers((self._reflection.generic_handler(), self.proxy))

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
        log.info(
            "tunnel opened: %s from %s exposing %s",
            tunnel_name(tunnel),
            tunnel.peer,
            ", ".join(tunnel_services(tunnel)) or "no services",
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
        self.handler._closing = True
        await self.health.enter_graceful_shutdown()
        await self.proxy.wait_idle(grace)
        await self.handler.close()


class _MergedReflection:
    """Server reflection over the gateway's own services and every exposed backend's.

    v1 and v1alpha are the same messages in two packages, so one implementation with
    the v1alpha classes serves both. Listing merges; a file or symbol is looked up
    among the gateway's own descriptors first, then asked of the tunnels exposing it.
    """

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._pool = descriptor_pool.DescriptorPool()
        self._added: set[str] = set()
        # Descriptor answers the tunnels gave, replayed when no tunnel can answer (its
        # backend is down, or nothing exposes the service now), so that callers can still
        # resolve the method and learn from the call why it is unavailable.
        self._learned: dict[tuple[str, str], list[bytes]] = {}
        for module in (tunnel_pb2, health_pb2, reflection_pb2):
            self._add(module.DESCRIPTOR)

    def _add(self, file: Any) -> None:
        if file.name in self._added:
            return
        for dependency in file.dependencies:
            self._add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        self._pool.Add(proto)
        self._added.add(file.name)

    def generic_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        handlers = {}
        for service in (REFLECTION_V1, REFLECTION_V1ALPHA):
            path = f"/{service}/ServerReflectionInfo"
            handlers[service] = grpc.method_handlers_generic_handler(
                service,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        self._stream_for(path),
                        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            )
        return _Either(list(handlers.values()))

    def _stream_for(self, path: str) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def stream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for request in requests:
                yield await self._answer(request, path)

        return stream

    async def _answer(self, request: Any, path: str) -> Any:
        response = reflection_pb2.ServerReflectionResponse(
            valid_host=request.host, original_request=request
        )
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            names = set(self._gateway.own_services()) | set(self._gateway.exposed())
            response.list_services_response.service.extend(
                reflection_pb2.ServiceResponse(name=n) for n in sorted(names)
            )
            return response
        local = self._local(request, kind)
        if local is not None:
            response.file_descriptor_response.file_descriptor_proto.extend(local)
            return response
        remote = await self._ask_tunnels(request, kind, path)
        key = _learnable(request, kind)
        if remote is not None:
            if key is not None and remote.HasField("file_descriptor_response"):
                self._learned[key] = list(remote.file_descriptor_response.file_descriptor_proto)
            return remote
        if key is not None and key in self._learned:
            response.file_descriptor_response.file_descriptor_proto.extend(self._learned[key])
            return response
        response.error_response.error_code = grpc.StatusCode.NOT_FOUND.value[0]
        response.error_response.error_message = "not found"
        return response

    def _local(self, request: Any, kind: str | None) -> list[bytes] | None:
        pool = self._pool
        try:
            if kind == "file_by_filename":
                file = pool.FindFileByName(request.file_by_filename)
            elif kind == "file_containing_symbol":
                file = pool.FindFileContainingSymbol(request.file_containing_symbol)
            else:
                return None
        except KeyError:
            return None
        out: list[bytes] = []
        seen: set[str] = set()

        def walk(f: Any) -> None:
            if f.name in seen:
                return
            seen.add(f.name)
            proto = descriptor_pb2.FileDescriptorProto()
            f.CopyToProto(proto)
            out.append(proto.SerializeToString())
            for dependency in f.dependencies:
                walk(dependency)

        walk(file)
        return out

    async def _ask_tunnels(self, request: Any, kind: str | None, path: str) -> Any:
        symbol = request.file_containing_symbol if kind == "file_containing_symbol" else ""
        tunnels = self._gateway.tunnels()
        # tunnels whose services own the symbol first, then the rest
        tunnels.sort(key=lambda t: not any(symbol.startswith(s) for s in tunnel_services(t)))
        for tunnel in tunnels:
            answer = await _reflect(tunnel.channel, request, path)
            if answer is not None and answer.WhichOneof("message_response") != "error_response":
                return answer
        return None


def _learnable(request: Any, kind: str | None) -> tuple[str, str] | None:
    """The key under which a descriptor answer to ``request`` is remembered, if any."""
    if kind == "file_by_filename":
        return (kind, request.file_by_filename)
    if kind == "file_containing_symbol":
        return (kind, request.file_containing_symbol)
    return None


class _Either(grpc.GenericRpcHandler):  # type: ignore[misc,type-arg]
    """The first of several generic handlers that knows the method."""

    def __init__(self, handlers: list[Any]) -> None:
        self._handlers = handlers

    def service(self, handler_call_details: Any) -> Any:
        for handler in self._handlers:
            found = handler.service(handler_call_details)
            if found is not None:
                return found
        return None


async def _reflect(channel: grpc.aio.Channel, request: Any, path: str) -> Any:
    """Asks one reflection question of a backend, by the path the caller used and then
    the other version's."""
    other = (
        f"/{REFLECTION_V1ALPHA}/ServerReflectionInfo"
        if REFLECTION_V1 in path
        else f"/{REFLECTION_V1}/ServerReflectionInfo"
    )
    for attempt in (path, other):
        multicallable: Any = channel.stream_stream(
            attempt,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        call = multicallable(timeout=10.0)
        try:
            await call.write(request)
            await call.done_writing()
            answer = await call.read()
            call.cancel()
            if answer is not grpc.aio.EOF:  # type: ignore[attr-defined]
                return answer
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                log.debug("reflection through tunnel failed: %s", e.details())
                return None
    return None


__all__ = [
    "NAME_HEADER",
    "PIN_HEADER",
    "SERVICES_HEADER",
    "Gateway",
    "announce_metadata",
    "tunnel_name",
    "tunnel_services",
]
