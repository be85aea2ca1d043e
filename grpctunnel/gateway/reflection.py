"""Server reflection over the gateway's own services and every exposed backend's.

A reflection client that asks the gateway sees everything reachable through it: listing
merges the gateway's own services with those the tunnels announce; a file or symbol is
looked up among the gateway's own descriptors first, then asked of the tunnels exposing
it, and what they answered is remembered so that a backend that is down still resolves.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from grpctunnel.gateway.announce import tunnel_services
from grpctunnel.gateway.reflection_client import REFLECTION_V1, REFLECTION_V1ALPHA, reflect
from grpctunnel.v1 import tunnel_pb2

if TYPE_CHECKING:
    from grpctunnel.gateway.gateway import Gateway

log = logging.getLogger("grpctunnel")


class MergedReflection:
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
        return FirstHandler(list(handlers.values()))

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


class FirstHandler(grpc.GenericRpcHandler):  # type: ignore[misc,type-arg]
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
    """Asks one reflection question through a tunnel, by the version the caller used
    first; None when it cannot be answered there."""
    try:
        return await reflect(channel, request, first=path)
    except grpc.aio.AioRpcError as e:
        log.debug("reflection through tunnel failed: %s", e.details())
        return None


__all__ = ["FirstHandler", "MergedReflection"]
