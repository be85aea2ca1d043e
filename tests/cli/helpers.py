"""Helpers for the CLI tests: running the real `grpctunnel` executable, and test-only servers."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from grpc_reflection.v1alpha import reflection
from support.launcher import Result
from support.processes import clean_env
from support.servers import start_on_loopback

from grpctunnel_demo.service import ECHO_SERVICE, EchoServicer, enable_reflection
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

GRPCTUNNEL = Path(sys.executable).parent / "grpctunnel"
CLI_TIMEOUT = 30.0


def cli_env(server: str | None = None, **extra: str) -> dict[str, str]:
    env = clean_env()
    if server is not None:
        env["GRPCTUNNEL_SERVER"] = server
    env.update(extra)
    return env


async def run_cli(
    *args: str,
    server: str | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
    timeout: float = CLI_TIMEOUT,
    env: dict[str, str] | None = None,
) -> Result:
    """Run the installed `grpctunnel` console script and collect its output (``env``:
    variables to set on top of the test's)."""
    process = await asyncio.create_subprocess_exec(
        str(GRPCTUNNEL),
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(server, **(env or {})),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(
            process.communicate(stdin.encode() if stdin is not None else None), timeout
        )
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"grpctunnel {' '.join(args)} did not finish in {timeout}s") from None
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


# --- test-only servers ----------------------------------------------------------------------


def _other_file() -> descriptor_pb2.FileDescriptorProto:
    """other/v1/other.proto: a second `Echo` service and a message with every field shape."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="other/v1/other.proto",
        package="other.v1",
        syntax="proto3",
        dependency=[echo_pb2.DESCRIPTOR.name],
    )
    f = descriptor_pb2.FieldDescriptorProto
    thing = proto.message_type.add(name="Thing")
    entry = thing.nested_type.add(name="TagsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL)
    kind = thing.enum_type.add(name="Kind")
    kind.value.add(name="KIND_UNSPECIFIED", number=0)
    kind.value.add(name="BIG", number=1)
    thing.oneof_decl.add(name="choice")
    thing.oneof_decl.add(name="_note")
    thing.field.add(
        name="tags",
        number=1,
        type=f.TYPE_MESSAGE,
        label=f.LABEL_REPEATED,
        type_name=".other.v1.Thing.TagsEntry",
        json_name="tags",
    )
    thing.field.add(
        name="name", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL, oneof_index=0
    )
    thing.field.add(name="id", number=3, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL, oneof_index=0)
    thing.field.add(
        name="note",
        number=4,
        type=f.TYPE_STRING,
        label=f.LABEL_OPTIONAL,
        oneof_index=1,
        proto3_optional=True,
    )
    thing.field.add(
        name="kinds",
        number=5,
        type=f.TYPE_ENUM,
        label=f.LABEL_REPEATED,
        type_name=".other.v1.Thing.Kind",
    )
    thing.field.add(
        name="long_name", number=6, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL, json_name="longName"
    )
    service = proto.service.add(name="Echo")
    service.method.add(
        name="Echo",
        input_type=".grpctunnel.demo.v1.EchoRequest",
        output_type=".grpctunnel.demo.v1.EchoReply",
    )
    service.method.add(name="Inspect", input_type=".other.v1.Thing", output_type=".other.v1.Thing")
    return proto


def other_service() -> ServiceDescriptor:
    """The descriptor of other.v1.Echo, in a pool of its own."""
    pool = descriptor_pool.DescriptorPool()
    echo_file = descriptor_pb2.FileDescriptorProto()
    echo_pb2.DESCRIPTOR.CopyToProto(echo_file)
    pool.Add(echo_file)
    pool.Add(_other_file())
    return pool.FindServiceByName("other.v1.Echo")


async def _other_echo(
    request: echo_pb2.EchoRequest, context: grpc.aio.ServicerContext[object, object]
) -> echo_pb2.EchoReply:
    return echo_pb2.EchoReply(msg=f"other:{request.msg}")


async def _inspect(request: bytes, context: grpc.aio.ServicerContext[object, object]) -> bytes:
    return request  # the Thing, byte for byte


async def _start(server: grpc.aio.Server) -> tuple[grpc.aio.Server, str]:
    return server, await start_on_loopback(server)


async def start_two_echo_server() -> tuple[grpc.aio.Server, str]:
    """Echo plus other.v1.Echo (so the short name Echo is ambiguous), with reflection."""
    server = grpc.aio.server()
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)
    other = other_service()
    handler = grpc.method_handlers_generic_handler(
        other.full_name,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                _other_echo,
                request_deserializer=echo_pb2.EchoRequest.FromString,
                response_serializer=echo_pb2.EchoReply.SerializeToString,
            ),
            "Inspect": grpc.unary_unary_rpc_method_handler(_inspect),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    enable_reflection(server, [ECHO_SERVICE, other])
    return await _start(server)


async def start_echo_server(*, reflection_versions: Sequence[str]) -> tuple[grpc.aio.Server, str]:
    """Echo with reflection only in the given versions ("v1alpha", or none at all)."""
    server = grpc.aio.server()
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)
    if "v1" in reflection_versions:
        raise ValueError("use the demo backend for v1 reflection")
    if "v1alpha" in reflection_versions:
        reflection.enable_server_reflection([ECHO_SERVICE.full_name], server)
    return await _start(server)
