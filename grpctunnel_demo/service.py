"""The demo backend: the Echo servicer and a server that offers it with reflection and health.

`EchoServicer` implements `grpctunnel.demo.v1.Echo` (see proto/grpctunnel/demo/v1/echo.proto)
with a few test hooks:

* Request metadata whose key starts with ``echo-`` is sent back both as response headers and
  as trailers, by every method.
* A request whose ``msg`` is ``error:CODE_NAME:message`` (for example ``error:NOT_FOUND:nope``)
  ends the call with that status. ``error-details:CODE_NAME:message`` does the same and also
  attaches rich error details (a ``google.rpc.Status`` in ``grpc-status-details-bin`` holding a
  ``google.rpc.ErrorInfo``). In the streaming methods the hook fires when that message arrives.

`enable_reflection` registers server reflection under both ``grpc.reflection.v1`` and
``grpc.reflection.v1alpha``. grpcio-reflection only ships v1alpha; the two protocols are
identical on the wire except for the package name, so v1 is served by the same servicer, with
a renamed copy of the v1alpha descriptor so that reflection can describe itself.

`start_demo_backend` starts a grpc.aio server with Echo, reflection and health.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as reflection_v1alpha_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

__all__ = [
    "ECHO_SERVICE",
    "REFLECTION_V1ALPHA_SERVICE",
    "REFLECTION_V1_SERVICE",
    "EchoServicer",
    "enable_reflection",
    "start_demo_backend",
]

ECHO_SERVICE: ServiceDescriptor = echo_pb2.DESCRIPTOR.services_by_name["Echo"]
REFLECTION_V1ALPHA_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_HEALTH_SERVICE: ServiceDescriptor = health_pb2.DESCRIPTOR.services_by_name["Health"]

_ECHO_PREFIX = "echo-"
_ERROR_PREFIX = "error:"
_ERROR_DETAILS_PREFIX = "error-details:"
_DEFAULT_EXPAND_COUNT = 3


def _echo_metadata(
    context: grpc.aio.ServicerContext[Any, Any],
) -> tuple[tuple[str, str | bytes], ...]:
    """The request metadata entries that should be echoed back (keys starting with echo-)."""
    received = context.invocation_metadata() or ()
    return tuple((key, value) for key, value in received if key.startswith(_ECHO_PREFIX))


def _requested_error(msg: str) -> tuple[grpc.StatusCode, str, bool] | None:
    """Parse ``error:CODE:message`` / ``error-details:CODE:message``; None for a normal msg."""
    if msg.startswith(_ERROR_PREFIX):
        rest, with_details = msg[len(_ERROR_PREFIX) :], False
    elif msg.startswith(_ERROR_DETAILS_PREFIX):
        rest, with_details = msg[len(_ERROR_DETAILS_PREFIX) :], True
    else:
        return None
    name, _, message = rest.partition(":")
    try:
        code = grpc.StatusCode[name.strip().upper()]
    except KeyError:
        return (grpc.StatusCode.INVALID_ARGUMENT, f"unknown status code name {name!r}", False)
    if code is grpc.StatusCode.OK:
        return (grpc.StatusCode.INVALID_ARGUMENT, "cannot fail with status OK", False)
    return (code, message, with_details)


def _status_details(code: grpc.StatusCode, message: str) -> bytes:
    """A serialized google.rpc.Status with one ErrorInfo detail, for grpc-status-details-bin."""
    status = status_pb2.Status(code=code.value[0], message=message)
    info = error_details_pb2.ErrorInfo(
        reason="DEMO_ERROR", domain="grpctunnel.demo", metadata={"requested": code.name}
    )
    status.details.add().Pack(info)
    return bytes(status.SerializeToString())


class EchoServicer(echo_pb2_grpc.EchoServicer):
    """grpctunnel.demo.v1.Echo: echoes messages, metadata and requested errors."""

    async def _start(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        echoed = _echo_metadata(context)
        if echoed:
            await context.send_initial_metadata(echoed)
        context.set_trailing_metadata(echoed)

    async def _maybe_abort(self, msg: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        requested = _requested_error(msg)
        if requested is None:
            return
        code, message, with_details = requested
        trailers: list[tuple[str, str | bytes]] = list(_echo_metadata(context))
        if with_details:
            trailers.append(("grpc-status-details-bin", _status_details(code, message)))
        await context.abort(code, message, trailing_metadata=tuple(trailers))

    async def Echo(
        self,
        request: echo_pb2.EchoRequest,
        context: grpc.aio.ServicerContext[echo_pb2.EchoRequest, echo_pb2.EchoReply],
    ) -> echo_pb2.EchoReply:
        await self._start(context)
        await self._maybe_abort(request.msg, context)
        return echo_pb2.EchoReply(msg=request.msg, index=0)

    async def Expand(
        self,
        request: echo_pb2.ExpandRequest,
        context: grpc.aio.ServicerContext[echo_pb2.ExpandRequest, echo_pb2.EchoReply],
    ) -> AsyncIterator[echo_pb2.EchoReply]:
        await self._start(context)
        await self._maybe_abort(request.msg, context)
        if request.count < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "count must not be negative")
        count = request.count or _DEFAULT_EXPAND_COUNT
        for index in range(count):
            yield echo_pb2.EchoReply(msg=request.msg, index=index)

    async def Collect(
        self,
        request_iterator: AsyncIterator[echo_pb2.EchoRequest],
        context: grpc.aio.ServicerContext[echo_pb2.EchoRequest, echo_pb2.EchoReply],
    ) -> echo_pb2.EchoReply:
        await self._start(context)
        parts: list[str] = []
        async for request in request_iterator:
            await self._maybe_abort(request.msg, context)
            parts.append(request.msg)
        return echo_pb2.EchoReply(msg=" ".join(parts), index=0)

    async def Chat(
        self,
        request_iterator: AsyncIterator[echo_pb2.EchoRequest],
        context: grpc.aio.ServicerContext[echo_pb2.EchoRequest, echo_pb2.EchoReply],
    ) -> AsyncIterator[echo_pb2.EchoReply]:
        await self._start(context)
        index = 0
        async for request in request_iterator:
            await self._maybe_abort(request.msg, context)
            yield echo_pb2.EchoReply(msg=request.msg, index=index)
            index += 1


def _v1_reflection_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, rebuilt from the v1alpha descriptor."""
    old_package = reflection_v1alpha_pb2.DESCRIPTOR.package
    new_package = "grpc.reflection.v1"
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = new_package
    proto.ClearField("options")

    def rename(type_name: str) -> str:
        prefix = f".{old_package}."
        if type_name.startswith(prefix):
            return f".{new_package}.{type_name[len(prefix) :]}"
        return type_name

    def fix_message(message: descriptor_pb2.DescriptorProto) -> None:
        for field in message.field:
            if field.type_name:
                field.type_name = rename(field.type_name)
        for nested in message.nested_type:
            fix_message(nested)

    for message in proto.message_type:
        fix_message(message)
    for service in proto.service:
        for method in service.method:
            method.input_type = rename(method.input_type)
            method.output_type = rename(method.output_type)
    return proto


def _add_file(pool: descriptor_pool.DescriptorPool, file: FileDescriptor, added: set[str]) -> None:
    """Copy `file` and its dependencies (dependencies first) into `pool`."""
    if file.name in added:
        return
    for dependency in file.dependencies:
        _add_file(pool, dependency, added)
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    pool.Add(proto)
    added.add(file.name)


def enable_reflection(server: grpc.aio.Server, services: Iterable[ServiceDescriptor | str]) -> None:
    """Serve reflection (v1 and v1alpha) for `services` on `server`.

    Service descriptors are described in full; a service given only by name is listed but
    can only be described if its file is in the default descriptor pool. The reflection
    services themselves are always listed and described.
    """
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    names: list[str] = []
    for service in services:
        if isinstance(service, str):
            names.append(service)
            try:
                service = descriptor_pool.Default().FindServiceByName(service)
            except KeyError:
                continue
        else:
            names.append(service.full_name)
        _add_file(pool, service.file, added)
    _add_file(pool, reflection_v1alpha_pb2.DESCRIPTOR, added)
    pool.Add(_v1_reflection_file())
    names += [REFLECTION_V1_SERVICE, REFLECTION_V1ALPHA_SERVICE]

    servicer = ReflectionServicer(sorted(set(names)), pool=pool)
    reflection_v1alpha_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_handler = grpc.method_handlers_generic_handler(
        REFLECTION_V1_SERVICE,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_v1alpha_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_v1alpha_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1_handler,))


async def start_demo_backend(host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.aio.Server, int]:
    """Start a server with Echo, reflection and health on host:port; return it and its port.

    Port 0 picks a free port. The caller stops the server (``await server.stop(grace)``).
    """
    # No SO_REUSEPORT: a second backend on a port in use must fail, not share it silently.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)  # type: ignore[no-untyped-call]

    # grpc_health publishes this class as `health.aio.HealthServicer`, which mypy cannot see.
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    enable_reflection(server, [ECHO_SERVICE, _HEALTH_SERVICE])

    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in ("", ECHO_SERVICE.full_name):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound
