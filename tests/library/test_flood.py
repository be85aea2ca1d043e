"""A peer that floods its tunnel with new streams past the server's limit and never
reads what it is sent, against a real grpc.aio server: the server refuses those
streams without keeping them, stops reading that tunnel once the refusals it owes pile
up (backpressure, see grpctunnel.protocol.connection), and so holds a bounded amount
for it; meanwhile another tunnel on the same server serves calls throughout."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from grpctunnel import PendingChannel, TunnelServiceHandlerOptions
from grpctunnel.v1 import tunnel_pb2

from .conftest import echo, forward_sessions, start_backend, wait

pytestmark = pytest.mark.timeout(60)

C2S = tunnel_pb2.ClientToServer
LIMIT = 10
FLOOD = 400_000  # new-stream frames: far more than the transport and the bound absorb
BATCH = 500


def new_stream(sid: int) -> C2S:
    return C2S(
        stream_id=sid,
        new_stream=tunnel_pb2.NewStream(
            method_name="/grpctunnel.demo.v1.Echo/Echo",
            initial_window_size=65536,
            protocol_revision=tunnel_pb2.REVISION_ONE,
        ),
    )


@pytest.mark.parametrize("batched", [False, True], ids=["plain", "batched"])
async def test_a_stream_flood_that_never_reads_is_held_back(batched: bool) -> None:
    backend = await start_backend(TunnelServiceHandlerOptions(max_concurrent_streams=LIMIT))
    flood: asyncio.Task[None] | None = None
    try:
        bystander = await PendingChannel(backend.dial()).start(timeout=10)
        assert await wait(echo(bystander, "before")) == "before"

        extensions = "binary-base64,batch" if batched else "binary-base64"
        call = backend.dial().OpenTunnel(
            metadata=(
                ("grpctunnel-negotiate", "on"),
                ("grpctunnel-extensions", extensions),
                ("name", "flooder"),
            )
        )
        settings = await wait(call.read())  # its last read: the flood never reads
        assert settings.WhichOneof("frame") == "settings"
        (session,) = [
            s for s in forward_sessions(backend.handler) if ("name", "flooder") in s.tunnel_metadata
        ]
        conn = session.conn

        # the read loop waits for the write loop (drain) when it pauses: that is the
        # event this test awaits, and what it sees the moment it comes
        paused = asyncio.Event()
        at_pause: list[tuple[int, int]] = []
        drain = session.drain

        async def drain_spy() -> None:
            if not paused.is_set():
                at_pause.append((conn.active_streams, conn.unsent_control_frames))
                paused.set()
            await drain()

        session.drain = drain_spy

        async def send_flood() -> None:
            sid = 0
            while sid < FLOOD:
                frames = [new_stream(sid + i) for i in range(1, BATCH + 1)]
                sid += BATCH
                if batched:
                    batch = C2S()
                    batch.batch.extend(frames)
                    await call.write(batch)
                else:
                    for frame in frames:
                        await call.write(frame)

        flood = asyncio.ensure_future(send_flood())
        pause = asyncio.ensure_future(paused.wait())
        await asyncio.wait({flood, pause}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if flood.done():
            flood.result()  # the flood's own failure, if any, is the test's
        assert paused.is_set(), (
            f"the server read {conn._highest_stream_id} new streams without pausing and "
            f"holds {conn.active_streams} streams"
        )
        bound = conn.config.max_unsent_control_frames
        ((streams, unsent),) = at_pause
        print(
            f"paused after {conn.highest_stream_id} new streams: {streams} streams held, "
            f"{unsent} control frames unsent (bound {bound})"
        )
        assert streams <= LIMIT
        assert bound <= unsent <= bound + 2

        # the flood goes on (or has all been sent); the server holds what it held,
        # and the other tunnel keeps working
        for i in range(20):
            assert await wait(echo(bystander, f"during {i}")) == f"during {i}"
            assert conn.active_streams <= LIMIT
            assert conn.unsent_control_frames <= bound + 2
        assert conn.highest_stream_id < FLOOD or flood.done()

        call.cancel()
        await wait(session.wait_closed(), 10)
        assert await wait(echo(bystander, "after")) == "after"
        await bystander.close()
    finally:
        if flood is not None:
            flood.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, Exception):
                await flood
        await backend.aclose()
