"""A frozen exposer that comes back never runs a call its caller was told failed; and a
tunnel that never finishes opening is dropped by `serve` in time (real processes).

The exposer is SIGSTOPped, a call is sent through the gateway into its tunnel (the
kernel keeps the frames for the stopped process), the caller is told the call failed
(the gateway gives up on the frozen tunnel), the exposer is resumed: it finds the call
queued on a tunnel whose peer gave up, and must drop the tunnel without starting it.
The backend, in this process, records every request it applies. Before the fix the
resumed exposer relayed the queued call and the backend applied it ("frozen-put")."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from grpctunnel import metadata as md
from grpctunnel.gateway.auth import bearer_metadata
from grpctunnel.v1.tunnel_pb2_grpc import TunnelServiceStub
from grpctunnel_demo.service import enable_reflection
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

from .procs import Launcher, no_traceback

pytestmark = pytest.mark.timeout(90)

FAST = ("--keepalive-interval", "1", "--keepalive-timeout", "1")
ECHO = "grpctunnel.demo.v1.Echo"


class RecordingEcho(echo_pb2_grpc.EchoServicer):
    """Echo that records every request it applies."""

    def __init__(self) -> None:
        self.applied: list[str] = []

    async def Echo(self, request: Any, context: Any) -> Any:
        self.applied.append(request.msg)
        return echo_pb2.EchoReply(msg=request.msg)


@pytest.fixture
async def recording_backend() -> AsyncIterator[tuple[str, RecordingEcho]]:
    server = grpc.aio.server()
    recorder = RecordingEcho()
    echo_pb2_grpc.add_EchoServicer_to_server(recorder, server)  # type: ignore[no-untyped-call]
    enable_reflection(server, [echo_pb2.DESCRIPTOR.services_by_name["Echo"]])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", recorder
    finally:
        await server.stop(None)


async def test_a_resumed_exposer_never_applies_a_call_its_caller_saw_fail(
    launcher: Launcher, recording_backend: tuple[str, RecordingEcho]
) -> None:
    backend, recorder = recording_backend
    server = await launcher.server(*FAST)
    server_proc, address = server
    exposer = await launcher.exposer(backend, server, "rec", "--service", ECHO, *FAST)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
        assert (await stub.Echo(echo_pb2.EchoRequest(msg="warm-up"), timeout=10)).msg == "warm-up"

        mark = server_proc.mark()
        exposer.signal(signal.SIGSTOP)
        with pytest.raises(grpc.aio.AioRpcError) as failed:  # sent into the frozen tunnel
            await stub.Echo(echo_pb2.EchoRequest(msg="frozen-put"), timeout=8)
        print(f"the caller was told: {failed.value.code().name}: {failed.value.details()}")
        assert failed.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        await server_proc.wait_for(r"tunnel closed: rec from", after=mark)  # it gave up

        resumed = exposer.mark()
        exposer.signal(signal.SIGCONT)
        await exposer.wait_for(r"tunnel \d+ connected to", after=resumed)  # it redialled
        await server_proc.wait_for(r"tunnel opened: rec from", after=mark)
        reply = await stub.Echo(echo_pb2.EchoRequest(msg="after"), timeout=10)
        assert reply.msg == "after"
    assert recorder.applied == ["warm-up", "after"], recorder.applied
    stalled = await exposer.wait_for(r"tunnel stalled for ([\d.]+)s", after=resumed)
    print(f"the resumed exposer dropped its tunnel: stalled for {stalled.group(1)}s")
    no_traceback(server_proc, exposer)


async def test_serve_drops_a_tunnel_that_never_finishes_opening(launcher: Launcher) -> None:
    """`serve --establishment-timeout`: a reverse tunnel that never sends its settings
    is ended with DEADLINE_EXCEEDED once that time is up (it waited for ever before)."""
    server_proc, address = await launcher.server("--token", "t", "--establishment-timeout", "0.5")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = TunnelServiceStub(channel)  # type: ignore[no-untyped-call]
        call = stub.OpenReverseTunnel(
            metadata=((md.NEGOTIATE_HEADER, md.NEGOTIATE_VALUE), *bearer_metadata("t"))
        )
        await call.initial_metadata()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while await call.read() is not grpc.aio.EOF:  # type: ignore[attr-defined]
                pass
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, ended.value
    assert ended.value.details() == (
        "tunnel not established within 0.5s: no settings frame from the peer"
    )
    no_traceback(server_proc)
