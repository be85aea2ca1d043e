"""Reflection answered without a backend's own: from schema files (the exposer's
`SchemaReflection`), and the stand-in serve's merged reflection gives for a listed
service that no tunnel describes."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2

from grpctunnel import metadata as md
from grpctunnel.gateway.reflection import (
    UNDESCRIBED_PREFIX,
    MergedReflection,
    undescribed_reason,
)
from grpctunnel.gateway.reflection_client import V1
from grpctunnel.gateway.schema_files import SchemaIndex
from grpctunnel.gateway.schema_reflection import SchemaReflection
from grpctunnel_demo.v1 import echo_pb2

ECHO = "grpctunnel.demo.v1.Echo"
Request = reflection_pb2.ServerReflectionRequest


class Exposed:
    """A gateway exposing ``services`` through no live tunnel; ``allowed`` may call them."""

    def __init__(self, *services: str, allowed: str = "ok") -> None:
        self.services = list(services)
        self.allowed = allowed

    def own_services(self) -> list[str]:
        return []

    def exposed(self) -> dict[str, list[str]]:
        return {s: ["t"] for s in self.services}

    def channel_for_service(self, service: str) -> grpc.aio.Channel | None:
        return None

    def may_call(self, metadata: md.MetadataPairs, service: str) -> bool:
        return (("who", self.allowed),) == tuple(metadata)


def _files(
    response: reflection_pb2.ServerReflectionResponse,
) -> list[descriptor_pb2.FileDescriptorProto]:
    return [
        descriptor_pb2.FileDescriptorProto.FromString(blob)
        for blob in response.file_descriptor_response.file_descriptor_proto
    ]


async def test_a_listed_service_no_tunnel_describes_gets_a_stand_in() -> None:
    merged = MergedReflection(Exposed("etcdserverpb.Auth"), deadline=0.5)
    caller = (("who", "ok"),)
    answer = await merged.answer(Request(file_containing_symbol="etcdserverpb.Auth"), V1, caller)
    (stand_in,) = _files(answer)
    assert stand_in.name == f"{UNDESCRIBED_PREFIX}etcdserverpb.Auth.proto"
    assert [s.name for s in stand_in.service] == ["Auth"]
    assert "expose --proto" in (undescribed_reason(stand_in) or "")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(stand_in)  # a client can load it
    assert len(merged.cache) == 0, "a stand-in is never remembered"

    by_name = await merged.answer(Request(file_by_filename=stand_in.name), V1, caller)
    assert _files(by_name) == [stand_in]

    # a method of it, a caller that may not call it, a service not exposed: not found
    for request, who in (
        (Request(file_containing_symbol="etcdserverpb.Auth.Authenticate"), caller),
        (Request(file_containing_symbol="etcdserverpb.Auth"), (("who", "other"),)),
        (Request(file_containing_symbol="etcdserverpb.KV"), caller),
    ):
        refused = await merged.answer(request, V1, who)
        assert refused.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0], request


async def test_serve_describes_reflection_v1_itself() -> None:
    merged = MergedReflection(Exposed())
    answer = await merged.answer(
        Request(file_containing_symbol="grpc.reflection.v1.ServerReflection"), V1
    )
    (file,) = _files(answer)
    assert file.name == "grpc/reflection/v1/reflection.proto"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    method = pool.FindMethodByName("grpc.reflection.v1.ServerReflection.ServerReflectionInfo")
    assert method.input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"
    assert undescribed_reason(file) is None


def test_schema_reflection_answers_from_the_files() -> None:
    echo = descriptor_pb2.FileDescriptorProto()
    echo_pb2.DESCRIPTOR.CopyToProto(echo)
    reflection = SchemaReflection(SchemaIndex(descriptor_pb2.FileDescriptorSet(file=[echo])))

    listed = reflection.answer(Request(list_services=""))
    assert [s.name for s in listed.list_services_response.service] == [ECHO]
    for request in (
        Request(file_containing_symbol=ECHO),
        Request(file_containing_symbol=f"{ECHO}.Echo"),
        Request(file_containing_symbol="grpctunnel.demo.v1.EchoRequest"),
        Request(file_by_filename=echo.name),
    ):
        assert _files(reflection.answer(request)) == [echo], request
        assert reflection.answer(request).original_request == request

    for request in (
        Request(file_containing_symbol="nope.Nothing"),
        Request(file_containing_symbol=f"{ECHO}.Nope"),
        Request(file_by_filename="nope.proto"),
        Request(all_extension_numbers_of_type="grpctunnel.demo.v1.EchoRequest"),
    ):
        found = reflection.answer(request)
        assert found.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0], request
