"""A backend without reflection, exposed with its schema files (`expose --proto` /
`--protoset`), is listed, described and called through a real `serve` by callers that
have no schema; and a service that nothing describes does not break a walk of the
server's reflection (what grpcurl `describe` does) nor `describe` with no symbol.

`serve` and `expose` are real processes (tests/support/launcher.py); the backends are
real grpc.aio servers without reflection.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2
from support.launcher import Launcher, assert_failure, no_traceback

from grpctunnel.gateway.reflection_client import V1, V1ALPHA, ask
from grpctunnel_cli.reflection import DescriptorSource
from grpctunnel_demo.v1 import echo_pb2

from .helpers import Result, run_cli
from .kv_backend import KV_PROTO, KV_SERVICE, PROTOS

pytestmark = pytest.mark.timeout(90)

ECHO = "grpctunnel.demo.v1.Echo"
RANGE_FOO = '{"key": "Zm9v"}'


def assert_foo(result: Result) -> None:
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["kvs"][0] == {
        "key": "Zm9v",
        "value": "YmFy",
        "modTime": "2023-11-14T22:13:20Z",
    }


async def reflection_walk(address: str) -> dict[str, list[str]]:
    """What grpcurl `describe` does: list the services, then ask for the file of each;
    the files each answer holds, by service (an error answer fails the walk)."""
    async with grpc.aio.insecure_channel(address) as channel:
        listed = await ask(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
        assert listed is not None
        found: dict[str, list[str]] = {}
        for service in listed[1].list_services_response.service:
            answer = await ask(
                channel,
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=service.name),
            )
            assert answer is not None
            response = answer[1]
            assert not response.HasField("error_response"), (service.name, response)
            found[service.name] = [
                descriptor_pb2.FileDescriptorProto.FromString(blob).name
                for blob in response.file_descriptor_response.file_descriptor_proto
            ]
        return found


async def test_expose_with_proto_files_describes_a_backend_without_reflection(
    launcher: Launcher, kv_backend: str, tmp_path: Path
) -> None:
    server = await launcher.server()
    exposer = await launcher.exposer(
        kv_backend, server, "kv", "--proto", KV_PROTO, "-I", str(PROTOS),
        GRPCTUNNEL_CACHE_DIR=str(tmp_path),
    )  # fmt: skip
    assert f"exposing {KV_SERVICE}" in exposer.output
    address = server[1]

    listed = await run_cli("list", server=address)
    assert KV_SERVICE in listed.lines, listed
    methods = await run_cli("list", "KV", server=address)
    assert methods.lines == [f"{KV_SERVICE}.Range", f"{KV_SERVICE}.Watch", f"{KV_SERVICE}.Ping"]
    described = await run_cli("describe", "KV", server=address)
    assert "returns ( stream .kvtest.v1.WatchResponse );" in described.stdout, described
    message = await run_cli("describe", "kvtest.v1.KeyValue", server=address)
    assert ".google.protobuf.Timestamp mod_time = 3;" in message.stdout, message

    assert_foo(await run_cli("call", "KV/Range", RANGE_FOO, server=address))
    watched = await run_cli("call", "KV/Watch", '{"key": "Zm9v", "count": 2}', server=address)
    assert [json.loads(line)["seq"] for line in watched.lines] == [1, 2], watched
    missing = await run_cli("call", "KV/Range", '{"key": "eA=="}', server=address)
    assert missing.returncode == 64 + 5, missing

    walk = await reflection_walk(address)
    assert walk[KV_SERVICE][0] == KV_PROTO
    assert set(walk[KV_SERVICE]) >= {"kv/v1/types.proto", "google/protobuf/timestamp.proto"}

    # both reflection versions, asked of the server, are answered from the files
    async with grpc.aio.insecure_channel(address) as channel:
        for path in (V1, V1ALPHA):
            answer = await ask(
                channel,
                reflection_pb2.ServerReflectionRequest(file_by_filename="kv/v1/types.proto"),
                paths=(path,),
            )
            assert answer is not None and answer[0] == path
            files = answer[1].file_descriptor_response.file_descriptor_proto
            assert descriptor_pb2.FileDescriptorProto.FromString(files[0]).name == (
                "kv/v1/types.proto"
            )
    no_traceback(*launcher.procs)


async def test_expose_with_a_protoset_and_named_services(
    launcher: Launcher, kv_backend: str, kv_protoset: Path
) -> None:
    server = await launcher.server()
    exposer = await launcher.exposer(
        kv_backend, server, "kv", "--protoset", str(kv_protoset), "--service", KV_SERVICE
    )
    assert f"exposing {KV_SERVICE}" in exposer.output
    assert_foo(await run_cli("call", f"{KV_SERVICE}/Range", RANGE_FOO, server=server[1]))
    source = DescriptorSource(grpc.aio.insecure_channel(server[1]))
    assert (await source.resolve_method("KV/Watch")).server_streaming


async def test_expose_with_bad_schema_files_fails_at_once(
    launcher: Launcher, kv_backend: str, tmp_path: Path
) -> None:
    server = await launcher.server()
    bad = tmp_path / "bad.proto"
    bad.write_text('syntax = "proto3";\nmessage {\n')
    broken = await run_cli(
        "expose", kv_backend, "--to", server[1], "--proto", str(bad),
        env={"GRPCTUNNEL_CACHE_DIR": str(tmp_path)},
    )  # fmt: skip
    assert_failure(broken, 1, "cannot compile bad.proto", "bad.proto:2:")

    no_services = tmp_path / "types_only.pb"
    no_services.write_bytes(
        descriptor_pb2.FileDescriptorSet(
            file=[_file_of(echo_pb2.DESCRIPTOR, services=False)]
        ).SerializeToString()
    )
    empty = await run_cli("expose", kv_backend, "--to", server[1], "--protoset", str(no_services))
    assert_failure(empty, 1, "the schema files define no services to expose")


def _file_of(descriptor: object, *, services: bool = True) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(proto)  # type: ignore[attr-defined]
    if not services:
        del proto.service[:]
    return proto


async def test_a_service_nothing_describes_does_not_break_describe(
    launcher: Launcher, kv_backend: str, no_reflection_backend: str, tmp_path: Path
) -> None:
    server = await launcher.server()
    address = server[1]
    await launcher.exposer(kv_backend, server, "kv", "--proto", KV_PROTO, "-I", str(PROTOS))
    await launcher.exposer(no_reflection_backend, server, "echo", "--service", ECHO)

    # a reflection client walking the list gets an answer for every service
    walk = await reflection_walk(address)
    assert walk[ECHO] == [f"grpctunnel/undescribed/{ECHO}.proto"]
    assert walk[KV_SERVICE][0] == KV_PROTO

    everything = await run_cli("describe", server=address)
    assert everything.returncode == 0, everything
    assert f"{KV_SERVICE} is a service:" in everything.stdout
    assert ECHO not in everything.stdout
    assert everything.stderr.startswith("WARNING: 1 of the services could not be described:")
    assert f"cannot describe service '{ECHO}': no backend serving it describes it" in (
        everything.stderr
    )
    assert "Traceback" not in everything.stderr

    one = await run_cli("describe", "Echo", server=address)
    assert_failure(one, 1, f"cannot describe service '{ECHO}'", "`expose --proto`")
    called = await run_cli("call", "Echo/Echo", '{"msg": "hi"}', server=address)
    assert_failure(called, 1, f"cannot describe service '{ECHO}'")

    # the caller brings the schema: the call goes through
    echo_set = tmp_path / "echo.pb"
    echo_set.write_bytes(
        descriptor_pb2.FileDescriptorSet(file=[_file_of(echo_pb2.DESCRIPTOR)]).SerializeToString()
    )
    reply = await run_cli(
        "call", "--protoset", str(echo_set), "Echo/Echo", '{"msg": "hi"}', server=address
    )
    assert reply.returncode == 0, reply
    assert json.loads(reply.stdout)["msg"] == "hi"
    no_traceback(*launcher.procs)
