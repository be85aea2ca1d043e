"""The relay behind a tunnel (the exposer's side) relays a caller's half-close at once:
a tunnelled call tells a half-close from a cancel, so the wait for news of a cancelled
caller that a grpc.aio caller needs is left out. A cancelled upload still reaches the
backend as a cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from grpctunnel.gateway import proxy
from grpctunnel.gateway.proxy import ProxyHandler, Route
from grpctunnel.testing import TunnelPair

UPLOAD = "/test.Up/Upload"


@dataclass
class Seen:
    """What the backend's Upload handler saw."""

    requests: list[bytes] = field(default_factory=list)
    second: asyncio.Event = field(default_factory=asyncio.Event)
    completed: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    hold: bool = False  # once the requests end, wait to be cancelled instead of answering


def _upload_handler(seen: Seen) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    async def upload(requests: AsyncIterator[bytes], context: Any) -> bytes:
        try:
            async for request in requests:
                seen.requests.append(request)
                if len(seen.requests) == 2:
                    seen.second.set()
            seen.completed.set()  # grpc.aio ends the requests alike on a cancel
            if seen.hold:
                await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            seen.cancelled.set()
            raise
        return b"%d" % len(seen.requests)

    return grpc.method_handlers_generic_handler(
        "test.Up", {"Upload": grpc.stream_unary_rpc_method_handler(upload)}
    )


@pytest.fixture
async def relayed() -> AsyncIterator[tuple[TunnelPair, Seen]]:
    """A backend (a real grpc.aio server), and a tunnel whose serving end relays every
    call to it with a ProxyHandler that knows no method kinds (the stream relay)."""
    seen = Seen()
    backend = grpc.aio.server()
    backend.add_generic_rpc_handlers((_upload_handler(seen),))
    port = backend.add_insecure_port("127.0.0.1:0")
    await backend.start()
    upstream = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    pair = TunnelPair()
    pair.server.add_generic_rpc_handlers(
        (ProxyHandler(lambda method, md: Route(upstream, "backend") if method == UPLOAD else None),)
    )
    try:
        async with pair:
            yield pair, seen
    finally:
        await upstream.close()
        await backend.stop(None)


async def test_half_close_through_a_tunnel_is_relayed_without_waiting(
    relayed: tuple[TunnelPair, Seen], monkeypatch: pytest.MonkeyPatch
) -> None:
    pair, seen = relayed
    # were the relay to wait for news of a cancel, the call would run out of time
    monkeypatch.setattr(proxy, "_CANCEL_NEWS_SECONDS", 60.0)
    upload = pair.channel.stream_unary(UPLOAD)
    reply = await upload(iter([b"a", b"b", b"c"]), timeout=5)
    assert reply == b"3"
    assert seen.requests == [b"a", b"b", b"c"]
    assert seen.completed.is_set() and not seen.cancelled.is_set()


async def test_cancelled_upload_through_a_tunnel_reaches_the_backend_as_a_cancel(
    relayed: tuple[TunnelPair, Seen],
) -> None:
    pair, seen = relayed
    seen.hold = True
    call = pair.channel.stream_unary(UPLOAD)(timeout=10)
    await call.write(b"a")
    await call.write(b"b")
    await asyncio.wait_for(seen.second.wait(), 5)
    call.cancel()
    await asyncio.wait_for(seen.cancelled.wait(), 5)
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_requests_complete_only_after_a_half_close(
    relayed: tuple[TunnelPair, Seen],
) -> None:
    """TunnelServicerContext.requests_complete: False while requests may come, True once
    the caller half-closed."""
    pair, _ = relayed
    states: list[bool] = []
    first_read = asyncio.Event()

    async def watch(requests: AsyncIterator[bytes], context: Any) -> bytes:
        async for _ in requests:
            states.append(context.requests_complete())
            first_read.set()
        states.append(context.requests_complete())
        return b""

    pair.server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Watch", {"Watch": grpc.stream_unary_rpc_method_handler(watch)}
            ),
        )
    )
    call = pair.channel.stream_unary("/test.Watch/Watch")(timeout=10)
    await call.write(b"x")
    await asyncio.wait_for(first_read.wait(), 5)
    await call.done_writing()
    assert await call == b""
    assert states == [False, True]
