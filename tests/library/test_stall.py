"""A serving session whose event loop stood still longer than ``stale_after`` drops its
tunnel without starting the calls it then finds queued: by then its peer may have given
up on the tunnel and told those callers their calls failed.

The stall here is this test's own event loop blocked (``time.sleep``: nothing else runs
meanwhile), with the frames of a call already arrived, as when a SIGSTOPped process is
resumed (tests/security/test_frozen_exposer.py does that to a real ``expose``). Before
the fix the queued call ran (``ran == ["before", "after"]``) and the tunnel lived on."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from grpctunnel.opening import TunnelOpening
from grpctunnel.protocol import ConnectionConfig, ServingConnection
from grpctunnel.serving import ServiceRegistry, ServingSession
from grpctunnel.session import TunnelClosed
from grpctunnel.v1 import tunnel_pb2

from .conftest import wait
from .test_session import GatedStream

C2S = tunnel_pb2.ClientToServer
STALE_AFTER = 0.5


def _call_frames(stream_id: int, data: bytes) -> list[C2S]:
    return [
        C2S(stream_id=stream_id, new_stream=tunnel_pb2.NewStream(method_name="/test.Apply/Put")),
        C2S(
            stream_id=stream_id,
            request_message=tunnel_pb2.MessageData(size=len(data), data=data),
        ),
        C2S(stream_id=stream_id, half_close=empty_pb2.Empty()),
    ]


def _session(ran: list[str], applied: asyncio.Event) -> tuple[GatedStream, ServingSession]:
    async def put(request: bytes, context: Any) -> bytes:
        ran.append(request.decode())
        applied.set()
        return b"ok"

    registry = ServiceRegistry()
    registry.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Apply", {"Put": grpc.unary_unary_rpc_method_handler(put)}
            ),
        )
    )
    stream = GatedStream()
    conn = ServingConnection(ConnectionConfig(negotiated=False))
    conn.start()
    opening = TunnelOpening((), "test", negotiated=False, extended=True, batches=False)
    session = ServingSession(stream, conn, opening, registry=registry, stale_after=STALE_AFTER)
    return stream, session


@pytest.mark.parametrize("heartbeat_first", [False, True], ids=["read-first", "heartbeat-first"])
async def test_a_stall_drops_the_tunnel_without_starting_queued_calls(
    heartbeat_first: bool,
) -> None:
    ran: list[str] = []
    applied = asyncio.Event()
    stream, session = _session(ran, applied)
    run = asyncio.ensure_future(session.run())
    for frame in _call_frames(1, b"before"):
        stream.inbox.put_nowait(frame)
    await wait(applied.wait())
    assert ran == ["before"]

    if heartbeat_first:  # the loop stalls, its heartbeat runs, then the frames arrive
        time.sleep(STALE_AFTER * 3)  # noqa: ASYNC251 - the stall under test
        await asyncio.sleep(0)  # the overdue heartbeat's turn
        for frame in _call_frames(3, b"after"):
            stream.inbox.put_nowait(frame)
    else:  # the frames arrived before the stall: read first when the loop resumes
        for frame in _call_frames(3, b"after"):
            stream.inbox.put_nowait(frame)
        time.sleep(STALE_AFTER * 3)  # noqa: ASYNC251 - the stall under test
    with pytest.raises(TunnelClosed) as ended:
        await wait(run)
    assert ended.value.code == grpc.StatusCode.UNAVAILABLE
    assert ended.value.details.startswith("tunnel stalled for ")
    assert ended.value.details.endswith("; dropped without starting the calls queued on it")
    assert session.stalled_for is not None and session.stalled_for >= STALE_AFTER * 3
    await asyncio.sleep(0)  # a handler task started by mistake would run now
    assert ran == ["before"]


async def test_a_busy_but_live_loop_is_not_a_stall() -> None:
    """Calls keep coming for several times ``stale_after``: none is refused."""
    ran: list[str] = []
    applied = asyncio.Event()
    stream, session = _session(ran, applied)
    run = asyncio.ensure_future(session.run())
    began = time.monotonic()
    stream_id = 1
    while time.monotonic() - began < STALE_AFTER * 4:
        applied.clear()
        for frame in _call_frames(stream_id, str(stream_id).encode()):
            stream.inbox.put_nowait(frame)
        await wait(applied.wait())
        stream_id += 2
    assert not session.closed and session.stalled_for is None
    session.close("done")
    with pytest.raises(TunnelClosed):
        await wait(run)
    assert len(ran) == stream_id // 2
