"""Method kinds belong to the tunnel that announced them, and merged reflection asks the
tunnels in parallel under one deadline, with a bounded, expiring cache (issue 9, items 4
and 6), against real grpc.aio servers on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

from grpctunnel.gateway import GatewayServer
from grpctunnel.gateway.exposer import ExposeConfig, Exposer
from grpctunnel.gateway.method_kinds import MethodKinds
from grpctunnel.gateway.reflection import AnswerCache
from grpctunnel.gateway.reflection_client import V1
from grpctunnel_demo.service import start_demo_backend
from grpctunnel_demo.v1 import echo_pb2

pytestmark = pytest.mark.timeout(60)

ECHO = "grpctunnel.demo.v1.Echo"
METHOD = f"/{ECHO}/Echo"


def _streaming_echo_pool() -> descriptor_pool.DescriptorPool:
    """A schema of its own for a second backend: the same service, whose Echo streams."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="other/echo_streams.proto", package="grpctunnel.demo.v1", syntax="proto3"
    )
    for name in ("EchoRequest", "EchoReply"):
        message = proto.message_type.add(name=name)
        message.field.add(
            name="msg",
            number=1,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    service = proto.service.add(name="Echo")
    service.method.add(
        name="Echo",
        input_type=".grpctunnel.demo.v1.EchoRequest",
        output_type=".grpctunnel.demo.v1.EchoReply",
        server_streaming=True,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool


async def _start_streaming_backend() -> tuple[grpc.aio.Server, int]:
    async def echo_twice(request: bytes, context: Any) -> AsyncIterator[bytes]:
        message = echo_pb2.EchoRequest.FromString(request).msg
        for i in range(2):
            yield echo_pb2.EchoReply(msg=f"{message}-{i}").SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                ECHO, {"Echo": grpc.unary_stream_rpc_method_handler(echo_twice)}
            ),
        )
    )
    reflection.enable_server_reflection(
        [ECHO, reflection.SERVICE_NAME], server, pool=_streaming_echo_pool()
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_two_exposers_with_different_schemas_each_keep_their_kinds() -> None:
    """One backend's Echo is unary, the other's streams: each tunnel relays by what its
    own backend said, so neither call fails (with kinds shared by service, the second
    response of the streaming one failed the call with INTERNAL)."""
    unary_backend, unary_port = await start_demo_backend()
    streaming_backend, streaming_port = await _start_streaming_backend()
    gateway_server = GatewayServer()
    port = await gateway_server.start()
    address = f"127.0.0.1:{port}"
    exposers = [
        Exposer(ExposeConfig(backend=f"127.0.0.1:{p}", server=address, name=n))
        for p, n in ((unary_port, "unary"), (streaming_port, "streaming"))
    ]
    running = [asyncio.ensure_future(e.run()) for e in exposers]
    channel = grpc.aio.insecure_channel(address)
    try:
        directory = gateway_server.gateway.directory
        await gateway_server.gateway.wait_until(
            lambda: set(directory.exposed().get(ECHO, ())) == {"unary", "streaming"}
        )
        for pin in ("unary", "streaming"):
            exposed = directory.route(ECHO, pin)
            assert exposed is not None and await exposed.kinds.learn(ECHO)
        assert directory.route(ECHO, "unary").kinds.get(METHOD) == (False, False)  # type: ignore[union-attr]
        assert directory.route(ECHO, "streaming").kinds.get(METHOD) == (False, True)  # type: ignore[union-attr]

        request = echo_pb2.EchoRequest(msg="hi").SerializeToString()
        for _ in range(3):  # both, several times over, in any order
            unary: Any = channel.unary_unary(METHOD)
            reply = await unary(request, metadata=(("grpctunnel-tunnel", "unary"),), timeout=10)
            assert echo_pb2.EchoReply.FromString(reply).msg == "hi"
            streaming: Any = channel.unary_stream(METHOD)
            call = streaming(request, metadata=(("grpctunnel-tunnel", "streaming"),), timeout=10)
            replies = [echo_pb2.EchoReply.FromString(r).msg async for r in call]
            assert replies == ["hi-0", "hi-1"]
    finally:
        for exposer in exposers:
            exposer.stop()
        await asyncio.gather(*running, return_exceptions=True)
        await channel.close()
        await gateway_server.stop()
        await unary_backend.stop(None)
        await streaming_backend.stop(None)


async def test_kinds_are_forgotten_when_their_tunnel_closes() -> None:
    backend, backend_port = await start_demo_backend()
    gateway_server = GatewayServer()
    port = await gateway_server.start()
    exposer = Exposer(
        ExposeConfig(backend=f"127.0.0.1:{backend_port}", server=f"127.0.0.1:{port}", name="a")
    )
    running = asyncio.ensure_future(exposer.run())
    try:
        directory = gateway_server.gateway.directory
        await gateway_server.gateway.wait_until(lambda: directory.serves(ECHO))
        exposed = directory.route(ECHO)
        assert exposed is not None and await exposed.kinds.learn(ECHO)
        exposer.stop()
        await asyncio.gather(running, return_exceptions=True)
        await gateway_server.gateway.wait_until(lambda: not directory.serves(ECHO))
        assert exposed.kinds.get(METHOD) == (False, False)  # what it knew stays with it...
        assert not await exposed.kinds.learn("other.Service")  # ...and it learns no more
    finally:
        exposer.stop()
        await asyncio.gather(running, return_exceptions=True)
        await gateway_server.stop()
        await backend.stop(None)


async def _start_silent_reflection_backend() -> tuple[grpc.aio.Server, int, asyncio.Event]:
    """A backend whose reflection never answers: it waits until the test ends."""
    released = asyncio.Event()

    async def never(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        await released.wait()
        if False:  # pragma: no cover - an async generator that yields nothing
            yield None

    server = grpc.aio.server()
    for name in ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"):
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    name, {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(never)}
                ),
            )
        )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, released


async def test_reflection_asks_the_tunnels_in_parallel_under_one_deadline() -> None:
    """Many tunnels whose backends never answer reflection: asking for an unknown symbol
    ends after the one short deadline, not after a timeout per tunnel in turn."""
    silent, silent_port, released = await _start_silent_reflection_backend()
    gateway_server = GatewayServer()
    port = await gateway_server.start()
    gateway_server.gateway._reflection.deadline = 0.5
    address = f"127.0.0.1:{port}"
    exposers = [
        Exposer(
            ExposeConfig(
                backend=f"127.0.0.1:{silent_port}",
                server=address,
                name=f"silent-{i}",
                services=(f"acme.v1.S{i}",),
            )
        )
        for i in range(8)
    ]
    running = [asyncio.ensure_future(e.run()) for e in exposers]
    channel = grpc.aio.insecure_channel(address)
    try:
        await gateway_server.gateway.wait_until(lambda: len(gateway_server.gateway.exposed()) == 8)
        ask: Any = channel.unary_stream(
            V1,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        started = time.monotonic()
        call = ask(
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="acme.v1.Nothing"),
            timeout=20,
        )
        answer = await call.read()
        elapsed = time.monotonic() - started
        assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
        assert elapsed < 5, elapsed  # 8 tunnels asked in turn for 10 s each took 80 s
    finally:
        released.set()
        for exposer in exposers:
            exposer.stop()
        await asyncio.gather(*running, return_exceptions=True)
        await channel.close()
        await gateway_server.stop()
        await silent.stop(None)


def test_the_answer_cache_is_bounded_and_expires() -> None:
    now = [0.0]
    cache = AnswerCache(entries=3, seconds=10, clock=lambda: now[0])
    for i in range(5):
        cache.put(("file_by_filename", f"f{i}"), [b"x"])
    assert len(cache) == 3
    assert cache.get(("file_by_filename", "f0")) is None  # the oldest went first
    assert cache.get(("file_by_filename", "f4")) == [b"x"]
    now[0] = 10.0
    assert cache.get(("file_by_filename", "f4")) is None  # expired


async def test_a_source_without_reflection_is_asked_once() -> None:
    """A tunnel whose backend has no reflection answers UNIMPLEMENTED once; its calls
    then go by the general relay without asking again (one question per tunnel, not one
    every 30 s for each of thousands of tunnels)."""
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    asked: list[str] = []

    def channel_for(service: str) -> grpc.aio.Channel:
        asked.append(service)
        return channel

    kinds = MethodKinds(channel_for, retry_after=0)
    try:
        assert not await kinds.learn(ECHO)
        assert kinds.no_reflection
        for _ in range(3):
            assert kinds.get(METHOD) is None and kinds.get("/other.Service/M") is None
        assert asked == [ECHO]
    finally:
        kinds.close()
        await channel.close()
        await server.stop(None)
