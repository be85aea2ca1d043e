"""Server reflection over the gateway's own services and every exposed backend's.

A reflection client that asks the gateway sees everything reachable through it that it
may call: listing merges the gateway's own services with those the tunnels announce,
less the services the caller's credential may not call. A file or symbol is looked up
among the gateway's own descriptors first; then it is asked, in parallel and under one
short deadline, of one live tunnel of each exposed service that could define it (by
package), never of every tunnel in turn. Answers are remembered, a bounded number for a
bounded time, so that a backend that is down still resolves and the caller learns from
the call itself why it is unavailable. An answer that describes only services the caller
may not call is refused as if it did not exist.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from grpctunnel import metadata as md
from grpctunnel.gateway.reflection_client import REFLECTION_V1, REFLECTION_V1ALPHA, reflect
from grpctunnel.v1 import tunnel_pb2

log = logging.getLogger("grpctunnel")

DEFAULT_DEADLINE = 3.0  # seconds for the tunnels to answer one question, all together
DEFAULT_CACHE_ENTRIES = 1024
DEFAULT_CACHE_SECONDS = 600.0


class ReflectedServices(Protocol):
    """What merged reflection needs of the gateway."""

    def own_services(self) -> list[str]: ...

    def exposed(self) -> dict[str, list[str]]: ...

    def channel_for_service(self, service: str) -> grpc.aio.Channel | None:
        """A channel to one live tunnel serving ``service``, or None."""
        ...

    def may_call(self, metadata: md.MetadataPairs, service: str) -> bool:
        """Whether the credential in ``metadata`` may call ``service``."""
        ...


class AnswerCache:
    """Descriptor answers the tunnels gave, by question: at most ``entries`` of them,
    each for at most ``seconds``, least recently used dropped first."""

    def __init__(
        self,
        entries: int = DEFAULT_CACHE_ENTRIES,
        seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.entries = entries
        self.seconds = seconds
        self._clock = clock
        self._answers: OrderedDict[tuple[str, str], tuple[float, list[bytes]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: tuple[str, str]) -> list[bytes] | None:
        found = self._answers.get(key)
        if found is None:
            return None
        stored_at, files = found
        if self._clock() - stored_at >= self.seconds:
            del self._answers[key]
            return None
        self._answers.move_to_end(key)
        return files

    def put(self, key: tuple[str, str], files: list[bytes]) -> None:
        self._answers[key] = (self._clock(), files)
        self._answers.move_to_end(key)
        while len(self._answers) > self.entries:
            self._answers.popitem(last=False)


class MergedReflection:
    """Server reflection over the gateway's own services and every exposed backend's.

    v1 and v1alpha are the same messages in two packages, so one implementation with
    the v1alpha classes serves both.
    """

    def __init__(
        self,
        services: ReflectedServices,
        *,
        deadline: float = DEFAULT_DEADLINE,
        cache: AnswerCache | None = None,
    ) -> None:
        self._services = services
        self.deadline = deadline
        self._pool = descriptor_pool.DescriptorPool()
        self._added: set[str] = set()
        self.cache = cache or AnswerCache()
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
            caller = _credentials_of(context)
            async for request in requests:
                yield await self.answer(request, path, caller)

        return stream

    async def answer(self, request: Any, path: str, caller: md.MetadataPairs = ()) -> Any:
        """The response to one reflection request from a caller with ``caller``'s
        credentials."""
        response = reflection_pb2.ServerReflectionResponse(
            valid_host=request.host, original_request=request
        )
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            own = set(self._services.own_services())
            names = own | {
                s for s in self._services.exposed() if self._services.may_call(caller, s)
            }
            response.list_services_response.service.extend(
                reflection_pb2.ServiceResponse(name=n) for n in sorted(names)
            )
            return response
        local = self._local(request, kind)
        if local is not None:
            response.file_descriptor_response.file_descriptor_proto.extend(local)
            return response
        key = _learnable(request, kind)
        files: list[bytes] | None = None
        remote = await self._ask_tunnels(request, kind, path)
        if remote is not None and remote.WhichOneof("message_response") != "file_descriptor_response":
            files = None
            if key is None:  # another kind of question: the tunnel's answer as it is
                return remote
        elif remote is not None:
            files = list(remote.file_descriptor_response.file_descriptor_proto)
            if key is not None:
                self.cache.put(key, files)
        if files is None and key is not None:
            files = self.cache.get(key)
        if files is not None and self._visible(files, caller):
            response.file_descriptor_response.file_descriptor_proto.extend(files)
            return response
        response.error_response.error_code = grpc.StatusCode.NOT_FOUND.value[0]
        response.error_response.error_message = "not found"
        return response

    def _visible(self, files: list[bytes], caller: md.MetadataPairs) -> bool:
        """Whether the caller may see an answer: not when the file it asked about
        (the first) defines services and it may call none of them."""
        first = descriptor_pb2.FileDescriptorProto.FromString(files[0]) if files else None
        if first is None or not first.service:
            return True
        prefix = f"{first.package}." if first.package else ""
        return any(self._services.may_call(caller, prefix + s.name) for s in first.service)

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

    def _candidates(self, request: Any, kind: str | None) -> list[grpc.aio.Channel]:
        """One live tunnel per exposed service that may answer: for a symbol, the
        services of its package (or the service itself); otherwise every service."""
        symbol = request.file_containing_symbol if kind == "file_containing_symbol" else ""
        services = list(self._services.exposed())
        if symbol:
            services = [s for s in services if _may_define(s, symbol)]
        channels = []
        for service in services:
            channel = self._services.channel_for_service(service)
            if channel is not None:
                channels.append(channel)
        return channels

    async def _ask_tunnels(self, request: Any, kind: str | None, path: str) -> Any:
        """The first useful answer of the candidate tunnels, asked all at once; None
        when none answers within the deadline."""
        channels = self._candidates(request, kind)
        if not channels:
            return None
        asks = [asyncio.ensure_future(_reflect(c, request, path, self.deadline)) for c in channels]
        try:
            for next_done in asyncio.as_completed(asks, timeout=self.deadline):
                answer = await next_done
                if answer is not None and answer.WhichOneof("message_response") != "error_response":
                    return answer
        except asyncio.TimeoutError:
            log.debug("reflection through tunnels: no answer within %.1fs", self.deadline)
        finally:
            for ask in asks:
                ask.cancel()
            await asyncio.gather(*asks, return_exceptions=True)
        return None


def _may_define(service: str, symbol: str) -> bool:
    """Whether the backend of ``service`` may define ``symbol``: the service itself, one
    of its methods, or anything in its package."""
    if symbol == service or symbol.startswith(service + "."):
        return True
    package = service.rpartition(".")[0]
    return bool(package) and symbol.startswith(package + ".")


def _credentials_of(context: Any) -> md.MetadataPairs:
    """The metadata that carries the caller's credentials: the tunnel's, for a call
    made through a forward tunnel; the call's own otherwise."""
    getter = getattr(context, "tunnel_metadata", None)
    if callable(getter):
        return tuple(getter())
    return tuple(context.invocation_metadata() or ())


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


async def _reflect(channel: grpc.aio.Channel, request: Any, path: str, timeout: float) -> Any:
    """Asks one reflection question through a tunnel, by the version the caller used
    first; None when it cannot be answered there."""
    try:
        return await reflect(channel, request, first=path, timeout=timeout)
    except grpc.aio.AioRpcError as e:
        log.debug("reflection through tunnel failed: %s", e.details())
        return None


__all__ = ["AnswerCache", "FirstHandler", "MergedReflection", "ReflectedServices"]
