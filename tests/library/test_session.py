"""The session loop, deterministically, over a hand-made frame stream (an asyncio queue
in, a gated list out): no gRPC involved, so races that real tunnels hit only now and
then can be forced."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf import empty_pb2

from grpctunnel.opening import TunnelOpening
from grpctunnel.protocol import ConnectionConfig, ServingConnection
from grpctunnel.serving import ServiceRegistry, ServingSession
from grpctunnel.session import EOF
from grpctunnel.v1 import tunnel_pb2

from .conftest import wait

C2S = tunnel_pb2.ClientToServer
METHOD = "/test.Gate/Call"


class GatedStream:
    """Frames to read come from ``inbox``; writes wait at ``gate`` (open by default).
    ``swallow_cancel`` makes a write that is cancelled keep waiting for ``release``,
    like a transport write that takes a while to give up."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.written: list[Any] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.writing = asyncio.Event()
        self.swallow_cancel = False
        self.write_cancelled = asyncio.Event()
        self.release = asyncio.Event()

    async def read(self) -> Any:
        return await self.inbox.get()

    async def write(self, frame: Any) -> None:
        self.writing.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            if not self.swallow_cancel:
                raise
            self.write_cancelled.set()
            await self.release.wait()
            return
        self.written.append(frame)

    def kinds(self, stream_id: int) -> list[str]:
        return [f.WhichOneof("frame") for f in self.written if f.stream_id == stream_id]


class Recorder:
    """A stream listener that records what happens to it."""

    def __init__(self) -> None:
        self.closed_with: str | None = None

    def on_event(self, event: Any) -> None:
        pass

    def on_tunnel_closed(self, reason: str) -> None:
        self.closed_with = reason


def _session(stream: GatedStream, registry: ServiceRegistry, negotiated: bool) -> ServingSession:
    conn = ServingConnection(ConnectionConfig(negotiated=negotiated))
    conn.start()
    opening = TunnelOpening((), "test", negotiated=negotiated, extended=True, batches=False)
    session = ServingSession(stream, conn, opening, registry=registry)
    session.flush()
    return session


async def test_teardown_survives_a_cancel_while_the_loops_wind_down() -> None:
    """The peer ends the tunnel RPC and, while the session's loops are still winding
    down, the RPC's task is cancelled (what grpc does when the peer then cancels):
    every call on the tunnel must still be failed."""
    stream = GatedStream()
    stream.gate.clear()  # the settings frame's write hangs ...
    stream.swallow_cancel = True  # ... and takes its time to give up
    session = _session(stream, ServiceRegistry(), negotiated=True)
    listener = Recorder()
    session.add_listener(1, listener)
    run = asyncio.ensure_future(session.run())
    await wait(stream.writing.wait())
    stream.inbox.put_nowait(EOF)  # the peer half-closes the tunnel RPC
    await wait(stream.write_cancelled.wait())  # run() is waiting for its loops to end
    run.cancel()  # ... when the RPC is cancelled
    stream.release.set()
    await asyncio.gather(run, return_exceptions=True)
    assert session.closed
    assert listener.closed_with is not None
    assert session.listeners == {}


async def test_wait_idle_waits_for_the_final_frames() -> None:
    """A graceful stop waits until the frames that end the last call are written,
    not just until its handler returns; otherwise the caller never gets them."""
    release = asyncio.Event()
    started = asyncio.Event()
    finished = asyncio.Event()

    async def handler(request: bytes, context: Any) -> bytes:
        context.add_done_callback(lambda _: finished.set())
        started.set()
        await release.wait()
        return b"done"

    registry = ServiceRegistry()
    registry.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Gate", {"Call": grpc.unary_unary_rpc_method_handler(handler)}
            ),
        )
    )
    stream = GatedStream()
    session = _session(stream, registry, negotiated=False)
    run = asyncio.ensure_future(session.run())
    ns = tunnel_pb2.NewStream(method_name=METHOD)
    for frame in (
        C2S(stream_id=1, new_stream=ns),
        C2S(stream_id=1, request_message=tunnel_pb2.MessageData(size=2, data=b"hi")),
        C2S(stream_id=1, half_close=empty_pb2.Empty()),
    ):
        stream.inbox.put_nowait(frame)
    await wait(started.wait())

    stream.gate.clear()  # the transport is slow to take the response
    idle = asyncio.ensure_future(session.wait_idle(5))
    release.set()
    await wait(finished.wait())  # the handler is done and its call is forgotten
    assert session.listeners == {}
    done, _ = await asyncio.wait({idle}, timeout=0.05)
    assert not done, "wait_idle returned while the call's last frames were unwritten"
    stream.gate.set()
    assert await wait(idle) is True
    assert stream.kinds(1) == ["response_headers", "response_message", "close_stream"]
    session.close("test over")
    await asyncio.gather(run, return_exceptions=True)


async def test_wait_idle_gives_up_after_its_timeout() -> None:
    stream = GatedStream()
    session = _session(stream, ServiceRegistry(), negotiated=False)
    run = asyncio.ensure_future(session.run())
    session.add_listener(1, Recorder())
    assert await session.wait_idle(0.05) is False
    session.close("test over")
    await asyncio.gather(run, return_exceptions=True)
    assert await session.wait_idle(0.05) is True  # a closed tunnel is idle
