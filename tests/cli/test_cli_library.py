"""The CLI library against in-process servers: reflection, resolution and invocation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool

from grpctunnel_cli.errors import InputError, ReflectionError, ResolutionError
from grpctunnel_cli.invoke import (
    CallEvent,
    CallStatus,
    ResponseHeaders,
    ResponseMessage,
    invoke,
    json_values,
    request_messages,
)
from grpctunnel_cli.reflection import DescriptorSource
from grpctunnel_demo.v1 import echo_pb2


async def _events(
    address: str,
    method: str,
    requests: Sequence[dict[str, object]],
    *,
    metadata: Sequence[tuple[str, str]] = (),
) -> list[CallEvent]:
    async with grpc.aio.insecure_channel(address) as channel:
        source = DescriptorSource(channel)
        resolved = await source.resolve_method(method)

        async def values() -> AsyncIterator[object]:
            for value in requests:
                yield value

        messages = request_messages(values(), resolved.input_type, pool=source.pool)
        calling = invoke(channel, resolved, messages, metadata=metadata)
        return [event async for event in calling]


def _replies(events: list[CallEvent]) -> list[tuple[str, int]]:
    found = []
    for event in events:
        if isinstance(event, ResponseMessage):
            message: Any = event.message  # a dynamic EchoReply
            found.append((message.msg, message.index))
    return found


# --- reflection -----------------------------------------------------------------------------


async def test_lists_services_with_v1(backend: str) -> None:
    async with grpc.aio.insecure_channel(backend) as channel:
        source = DescriptorSource(channel)
        assert await source.list_services() == [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "grpctunnel.demo.v1.Echo",
        ]
        assert source.reflection_version == "v1"


async def test_falls_back_to_v1alpha(v1alpha_backend: str) -> None:
    async with grpc.aio.insecure_channel(v1alpha_backend) as channel:
        source = DescriptorSource(channel)
        assert "grpctunnel.demo.v1.Echo" in await source.list_services()
        assert source.reflection_version == "v1alpha"
        method = await source.resolve_method("Echo/Expand")
        assert method.full_name == "grpctunnel.demo.v1.Echo.Expand"


async def test_no_reflection_is_a_clear_error(no_reflection_backend: str) -> None:
    async with grpc.aio.insecure_channel(no_reflection_backend) as channel:
        with pytest.raises(ReflectionError, match="does not offer reflection"):
            await DescriptorSource(channel).list_services()


async def test_descriptors_go_to_a_private_pool(backend: str) -> None:
    async with grpc.aio.insecure_channel(backend) as channel:
        source = DescriptorSource(channel)
        method = await source.resolve_method("grpc.health.v1.Health/Check")
        assert method.input_type.file.pool is source.pool
        assert source.pool is not descriptor_pool.Default()
        assert method.input_type.full_name == "grpc.health.v1.HealthCheckRequest"


@pytest.mark.parametrize(
    "spec",
    [
        "grpctunnel.demo.v1.Echo/Chat",
        "grpctunnel.demo.v1.Echo.Chat",
        ".grpctunnel.demo.v1.Echo/Chat",
        "Echo/Chat",
        "Echo.Chat",
        "v1.Echo/Chat",
        "demo.v1.Echo.Chat",
    ],
)
async def test_resolves_method_forms(backend: str, spec: str) -> None:
    async with grpc.aio.insecure_channel(backend) as channel:
        method = await DescriptorSource(channel).resolve_method(spec)
        assert method.full_name == "grpctunnel.demo.v1.Echo.Chat"
        assert method.client_streaming and method.server_streaming


async def test_ambiguous_method(two_echo_backend: str) -> None:
    async with grpc.aio.insecure_channel(two_echo_backend) as channel:
        source = DescriptorSource(channel)
        with pytest.raises(ResolutionError, match="ambiguous service 'Echo'") as caught:
            await source.resolve_method("Echo/Echo")
        assert caught.value.candidates == ("grpctunnel.demo.v1.Echo", "other.v1.Echo")
        method = await source.resolve_method("other.v1.Echo/Inspect")
        assert method.input_type.full_name == "other.v1.Thing"


async def test_unknown_method_lists_the_methods(backend: str) -> None:
    async with grpc.aio.insecure_channel(backend) as channel:
        with pytest.raises(ResolutionError, match="has no method 'Nope'") as caught:
            await DescriptorSource(channel).resolve_method("Echo/Nope")
        assert "grpctunnel.demo.v1.Echo/Expand" in caught.value.candidates


async def test_service_given_as_method(backend: str) -> None:
    async with grpc.aio.insecure_channel(backend) as channel:
        with pytest.raises(ResolutionError, match="is a service"):
            await DescriptorSource(channel).resolve_method("grpctunnel.demo.v1.Echo")


@pytest.mark.parametrize(
    ("spec", "full_name"),
    [
        ("Echo", "grpctunnel.demo.v1.Echo"),
        ("grpctunnel.demo.v1.Echo", "grpctunnel.demo.v1.Echo"),
        ("Echo.Expand", "grpctunnel.demo.v1.Echo.Expand"),
        ("Echo/Expand", "grpctunnel.demo.v1.Echo.Expand"),
        ("grpctunnel.demo.v1.Echo.Expand", "grpctunnel.demo.v1.Echo.Expand"),
        ("EchoReply", "grpctunnel.demo.v1.EchoReply"),
        ("grpctunnel.demo.v1.ExpandRequest", "grpctunnel.demo.v1.ExpandRequest"),
        ("ServingStatus", "grpc.health.v1.HealthCheckResponse.ServingStatus"),
        ("Health", "grpc.health.v1.Health"),
    ],
)
async def test_resolves_symbols(backend: str, spec: str, full_name: str) -> None:
    async with grpc.aio.insecure_channel(backend) as channel:
        symbol = await DescriptorSource(channel).resolve_symbol(spec)
        assert symbol.full_name == full_name


async def test_ambiguous_and_unknown_symbols(backend: str) -> None:
    async with grpc.aio.insecure_channel(backend) as channel:
        source = DescriptorSource(channel)
        with pytest.raises(ResolutionError, match="ambiguous service 'ServerReflection'"):
            await source.resolve_symbol("ServerReflection")
        with pytest.raises(ResolutionError, match="unknown symbol 'NoSuchThing'"):
            await source.resolve_symbol("NoSuchThing")


# --- invocation -----------------------------------------------------------------------------


async def test_invoke_unary(backend: str) -> None:
    events = await _events(backend, "Echo/Echo", [{"msg": "hi"}], metadata=[("echo-a", "1")])
    assert isinstance(events[0], ResponseHeaders)
    assert ("echo-a", "1") in events[0].metadata
    assert _replies(events) == [("hi", 0)]
    status = events[-1]
    assert isinstance(status, CallStatus) and status.ok
    assert ("echo-a", "1") in status.trailers
    assert (status.requests_sent, status.responses_received) == (1, 1)


async def test_invoke_unary_without_data_sends_an_empty_message(backend: str) -> None:
    events = await _events(backend, "Echo/Expand", [])
    assert _replies(events) == [("", 0), ("", 1), ("", 2)]


async def test_invoke_unary_with_two_messages_is_an_input_error(backend: str) -> None:
    with pytest.raises(InputError, match="exactly one"):
        await _events(backend, "Echo/Echo", [{"msg": "a"}, {"msg": "b"}])


async def test_invoke_server_streaming(backend: str) -> None:
    events = await _events(backend, "Echo/Expand", [{"msg": "x", "count": 4}])
    assert _replies(events) == [("x", 0), ("x", 1), ("x", 2), ("x", 3)]
    assert isinstance(events[-1], CallStatus) and events[-1].responses_received == 4


async def test_invoke_client_streaming(backend: str) -> None:
    events = await _events(backend, "Echo/Collect", [{"msg": "a"}, {"msg": "b"}, {"msg": "c"}])
    assert _replies(events) == [("a b c", 0)]
    assert isinstance(events[-1], CallStatus) and events[-1].requests_sent == 3


async def test_invoke_bidi_streaming(backend: str) -> None:
    events = await _events(backend, "Echo/Chat", [{"msg": "a"}, {"msg": "b"}])
    assert _replies(events) == [("a", 0), ("b", 1)]


async def test_invoke_error_status_is_an_outcome(backend: str) -> None:
    events = await _events(backend, "Echo/Chat", [{"msg": "a"}, {"msg": "error:ABORTED:stop"}])
    assert _replies(events) == [("a", 0)]
    status = events[-1]
    assert isinstance(status, CallStatus)
    assert (status.code, status.details) == (grpc.StatusCode.ABORTED, "stop")


async def test_invoke_bad_streaming_input_cancels_and_raises(backend: str) -> None:
    with pytest.raises(InputError, match="request 2: unknown field 'bogus'"):
        await _events(backend, "Echo/Collect", [{"msg": "a"}, {"bogus": 1}])


async def test_invoke_deadline(backend: str) -> None:
    async with grpc.aio.insecure_channel(backend) as channel:
        source = DescriptorSource(channel)
        method = await source.resolve_method("Echo/Collect")

        async def never() -> AsyncIterator[echo_pb2.EchoRequest]:
            await asyncio.Event().wait()  # no request ever comes; the deadline ends the call
            yield echo_pb2.EchoRequest()

        events = [event async for event in invoke(channel, method, never(), timeout=0.3)]
        status = events[-1]
        assert isinstance(status, CallStatus)
        assert status.code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_json_values_from_inline_and_file(tmp_path: Path) -> None:
    assert [v async for v in json_values('{"a":1}{"b":2}')] == [{"a": 1}, {"b": 2}]
    assert [v async for v in json_values(None)] == []
    path = tmp_path / "data.json"
    path.write_text('{\n  "msg": "a"\n}\n{"msg": "b"}\n')
    assert [v async for v in json_values(f"@{path}")] == [{"msg": "a"}, {"msg": "b"}]
    with pytest.raises(InputError, match="cannot read request data"):
        [v async for v in json_values(f"@{path}.missing")]


# --- grpc/grpc#36066: a server ending a stream early must not turn into INTERNAL ----------------


async def test_v1alpha_fallback_is_reliable(v1alpha_backend: str) -> None:
    for _ in range(25):  # the grpc bug struck about every other time before the workaround
        async with grpc.aio.insecure_channel(v1alpha_backend) as channel:
            source = DescriptorSource(channel)
            assert "grpctunnel.demo.v1.Echo" in await source.list_services()
            assert source.reflection_version == "v1alpha"


async def test_early_server_status_is_reported_reliably(backend: str) -> None:
    requests = [{"msg": "a"}, {"msg": "error:ABORTED:stop"}, *([{"msg": "more"}] * 20)]
    for _ in range(25):
        status = (await _events(backend, "Echo/Chat", requests))[-1]
        assert isinstance(status, CallStatus)
        assert (status.code, status.details) == (grpc.StatusCode.ABORTED, "stop")
