"""Peers that speak the wire protocol by hand, through a raw grpc.aio client of
``TunnelService``: Go-like peers (revision zero, no negotiation; or negotiating), and
peers that break the protocol. Tunnel-level errors end that tunnel with a status that
names the problem; stream-level errors close that stream and the tunnel lives on;
and another tunnel on the same server serves calls throughout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from grpctunnel import PendingChannel
from grpctunnel.v1 import tunnel_pb2
from grpctunnel_demo.v1 import echo_pb2

from .conftest import Backend, echo, start_backend, wait

C2S = tunnel_pb2.ClientToServer
S2C = tunnel_pb2.ServerToClient
EMPTY = empty_pb2.Empty()
ECHO = "/grpctunnel.demo.v1.Echo/Echo"
RAW_ECHO = "/test.Raw/Echo"
NEGOTIATE = ("grpctunnel-negotiate", "on")


def new_stream(
    sid: int,
    method: str = ECHO,
    *,
    revision: int = 0,
    window: int = 0,
    headers: dict[str, str] | None = None,
) -> C2S:
    ns = tunnel_pb2.NewStream(
        method_name=method,
        initial_window_size=window,
        protocol_revision=revision,  # type: ignore[arg-type]
    )
    for key, value in (headers or {}).items():
        ns.request_headers.md[key].val.append(value)
    return C2S(stream_id=sid, new_stream=ns)


def request(sid: int, data: bytes, size: int | None = None) -> C2S:
    return C2S(
        stream_id=sid,
        request_message=tunnel_pb2.MessageData(size=len(data) if size is None else size, data=data),
    )


def more(sid: int, data: bytes) -> C2S:
    return C2S(stream_id=sid, more_request_data=data)


def half_close(sid: int) -> C2S:
    return C2S(stream_id=sid, half_close=EMPTY)


def cancel(sid: int) -> C2S:
    return C2S(stream_id=sid, cancel=EMPTY)


def echo_request(msg: str) -> bytes:
    return echo_pb2.EchoRequest(msg=msg).SerializeToString()


class RawTunnel:
    """A hand-driven tunnel RPC (forward: we send ClientToServer)."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.headers: list[tuple[str, Any]] = []
        self.settings: tunnel_pb2.Settings | None = None

    @classmethod
    async def open(
        cls, backend: Backend, *, negotiate: bool = False, extensions: bool = False
    ) -> RawTunnel:
        metadata = []
        if negotiate:
            metadata.append(NEGOTIATE)
        if extensions:
            metadata.append(("grpctunnel-extensions", "binary-base64"))
        tunnel = cls(backend.dial_generated().OpenTunnel(metadata=tuple(metadata)))
        tunnel.headers = list(await wait(tunnel.call.initial_metadata()))
        if negotiate:
            first = await tunnel.read()
            assert first.stream_id == -1 and first.WhichOneof("frame") == "settings"
            tunnel.settings = first.settings
        return tunnel

    async def send(self, *frames: Any) -> None:
        for frame in frames:
            await self.call.write(frame)

    async def read(self) -> S2C:
        frame = await wait(self.call.read())
        assert frame is not grpc.aio.EOF, "the tunnel ended"
        return frame  # type: ignore[no-any-return]

    async def until_close(self, sid: int) -> tuple[list[S2C], tunnel_pb2.CloseStream]:
        """Frames of stream ``sid`` up to and including its close_stream."""
        frames = []
        while True:
            frame = await self.read()
            if frame.stream_id != sid:
                continue
            frames.append(frame)
            if frame.WhichOneof("frame") == "close_stream":
                return frames, frame.close_stream

    async def ended(self) -> tuple[grpc.StatusCode, str]:
        """Waits for the server to end the tunnel; its status."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            while await wait(self.call.read()) is not grpc.aio.EOF:
                pass
        return await self.call.code(), await self.call.details()

    async def call_echo(self, sid: int, msg: str = "ok", revision: int = 0) -> str:
        """A whole well-formed unary call on stream ``sid``; the reply's msg."""
        window = 65536 if revision else 0
        await self.send(
            new_stream(sid, revision=revision, window=window),
            request(sid, echo_request(msg)),
            half_close(sid),
        )
        frames, close = await self.until_close(sid)
        assert not close.HasField("status") or close.status.code == 0, close
        kinds = [f.WhichOneof("frame") for f in frames]
        assert kinds == ["response_headers", "response_message", "close_stream"], kinds
        return echo_pb2.EchoReply.FromString(frames[1].response_message.data).msg


@pytest.fixture
async def backend_with_bystander() -> AsyncIterator[tuple[Backend, Any]]:
    """A server, and a well-behaved forward tunnel to it that keeps making calls in the
    background for the whole test (the bystander); the test asserts none failed."""
    backend = await start_backend()
    channel = await PendingChannel(backend.dial()).start()
    stop = asyncio.Event()
    made = [0]

    async def bystander() -> None:
        while not stop.is_set():
            assert await echo(channel, f"by{made[0]}") == f"by{made[0]}"
            made[0] += 1

    task = asyncio.ensure_future(bystander())
    try:
        yield backend, made
        stop.set()
        await wait(task)  # raises if any bystander call failed
        assert made[0] > 0
        assert await echo(channel, "after") == "after"
    finally:
        task.cancel()
        await channel.close()
        await backend.aclose()


# -- tunnel-level protocol errors ------------------------------------------------------

TUNNEL_ERRORS = {
    "duplicate new_stream": (
        [new_stream(1), new_stream(1)],
        "not greater",
    ),
    "decreasing stream id": (
        [new_stream(5), new_stream(3)],
        "not greater",
    ),
    "frame for a stream never opened": (
        [new_stream(1), request(99, b"x")],
        "never opened",
    ),
    "cancel for a stream never opened": (
        [cancel(7)],
        "never opened",
    ),
    "frame with no kind": (
        [new_stream(1), C2S(stream_id=1)],
        "no known kind",
    ),
}


@pytest.mark.parametrize("case", list(TUNNEL_ERRORS))
async def test_tunnel_level_protocol_errors(
    backend_with_bystander: tuple[Backend, Any], case: str
) -> None:
    backend, _ = backend_with_bystander
    frames, words = TUNNEL_ERRORS[case]
    raw = await RawTunnel.open(backend)
    await raw.send(*frames)
    code, details = await raw.ended()
    assert code != grpc.StatusCode.OK
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert words in details and "protocol error" in details, details
    assert backend.handler.forward_tunnels == 1  # just the bystander's


async def test_tunnel_error_cancels_handlers_of_that_tunnel(
    backend_with_bystander: tuple[Backend, Any],
) -> None:
    backend, _ = backend_with_bystander
    probe = backend.servicer.probe
    raw = await RawTunnel.open(backend)
    await raw.send(new_stream(1), request(1, echo_request("freeze")), half_close(1))
    await probe.wait_frozen(1)
    await raw.send(new_stream(1))  # breaks the tunnel
    code, _ = await raw.ended()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    await probe.wait_unfrozen(1)


async def test_garbage_bytes_end_the_tunnel(backend_with_bystander: tuple[Backend, Any]) -> None:
    backend, _ = backend_with_bystander
    channel = grpc.aio.insecure_channel(backend.target)
    backend.channels.append(channel)
    open_tunnel = channel.stream_stream("/grpctunnel.v1.TunnelService/OpenTunnel")
    call = open_tunnel(metadata=(NEGOTIATE,))
    await wait(call.initial_metadata())
    await call.write(b"\xff\xff\xff\xff this is not a protobuf message")
    with contextlib.suppress(grpc.aio.AioRpcError):
        while await wait(call.read()) is not grpc.aio.EOF:
            pass
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = await call.details() or ""
    assert "malformed frame" in details and "ClientToServer" in details  # names what was wrong


async def test_peer_closing_abruptly_mid_call(backend_with_bystander: tuple[Backend, Any]) -> None:
    backend, _ = backend_with_bystander
    probe = backend.servicer.probe
    raw = await RawTunnel.open(backend)
    await raw.send(new_stream(1), request(1, echo_request("freeze")), half_close(1))
    await probe.wait_frozen(1)
    raw.call.cancel()
    await probe.wait_unfrozen(1)


# -- stream-level errors: that stream is closed, the tunnel goes on ------------------------

STREAM_ERRORS = {
    "message bigger than its size": (
        [new_stream(1), request(1, b"abcdef", size=3)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "exceeds its declared size",
    ),
    "more data without a message": (
        [new_stream(1), more(1, b"abc")],
        grpc.StatusCode.INVALID_ARGUMENT,
        "no message in progress",
    ),
    "new message before the last was complete": (
        [new_stream(1), request(1, b"ab", size=10), request(1, b"cd", size=2)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "before the previous one was complete",
    ),
    # (the handler blocks on "wait", so the stream is surely still open)
    "second request on a unary method": (
        [new_stream(1), request(1, echo_request("wait")), request(1, echo_request("b"))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "second message",
    ),
    "request after half-close": (
        [
            new_stream(1, "/grpctunnel.demo.v1.Echo/Collect"),
            request(1, echo_request("wait")),
            half_close(1),
            request(1, echo_request("late")),
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "after the caller half-closed",
    ),
    "window violation": (
        [
            new_stream(1, RAW_ECHO, revision=1, window=65536),
            request(1, b"w" * 70000, size=100000),
        ],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "flow-control window",
    ),
    "message over the receive limit": (
        [new_stream(1, RAW_ECHO), request(1, b"x", size=5 * 1024 * 1024)],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "larger than max",
    ),
    "empty method name": (
        [new_stream(1, "")],
        grpc.StatusCode.INVALID_ARGUMENT,
        "malformed method name",
    ),
    "malformed method name": (
        [new_stream(1, "no-slashes")],
        grpc.StatusCode.INVALID_ARGUMENT,
        "malformed method name",
    ),
    "unknown method": (
        [new_stream(1, "/no.Such/Method"), request(1, b""), half_close(1)],
        grpc.StatusCode.UNIMPLEMENTED,
        "/no.Such/Method",
    ),
    "unsupported revision": (
        [new_stream(1, revision=7), request(1, b""), half_close(1)],
        grpc.StatusCode.UNAVAILABLE,
        "revision",
    ),
    "bad grpc-timeout": (
        [new_stream(1, headers={"grpc-timeout": "soon"}), request(1, b""), half_close(1)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "grpc-timeout",
    ),
}


@pytest.mark.parametrize("case", list(STREAM_ERRORS))
async def test_stream_level_errors(backend_with_bystander: tuple[Backend, Any], case: str) -> None:
    backend, _ = backend_with_bystander
    frames, code, words = STREAM_ERRORS[case]
    raw = await RawTunnel.open(backend, negotiate=True)
    assert raw.settings is not None
    assert await raw.call_echo(1, "before", revision=1) == "before"
    renumbered = [_renumber(f, 2) for f in frames]
    await raw.send(*renumbered)
    _, close = await raw.until_close(2)
    assert close.status.code == code.value[0], close
    assert words in close.status.message, close.status.message
    # frames that still arrive for the finished stream are dropped quietly
    await raw.send(request(2, b"late"), half_close(2), cancel(2))
    # the tunnel goes on
    assert await raw.call_echo(3, "after", revision=1) == "after"
    assert await raw.call_echo(4, "after", revision=0) == "after"
    await raw.send(cancel(4))  # finished: dropped
    assert await raw.call_echo(10, "gap in ids is fine") == "gap in ids is fine"
    await raw.call.done_writing()
    code_, _ = await raw.ended()
    assert code_ == grpc.StatusCode.OK  # a clean end after a clean half-close


def _renumber(frame: C2S, sid: int) -> C2S:
    copy = C2S()
    copy.CopyFrom(frame)
    copy.stream_id = sid
    return copy


async def test_server_enforces_the_deadline_without_a_cancel(
    backend_with_bystander: tuple[Backend, Any],
) -> None:
    """A peer that sends grpc-timeout but never cancels: the server ends the call with
    DEADLINE_EXCEEDED by itself and cancels the handler."""
    backend, _ = backend_with_bystander
    probe = backend.servicer.probe
    raw = await RawTunnel.open(backend)
    started = time.monotonic()
    await raw.send(
        new_stream(1, headers={"grpc-timeout": "200m"}),
        request(1, echo_request("freeze")),
        half_close(1),
    )
    _, close = await raw.until_close(1)
    elapsed = time.monotonic() - started
    assert close.status.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert 0.18 < elapsed < 0.5, elapsed
    await probe.wait_unfrozen(1)
    assert await raw.call_echo(2, "next") == "next"


async def test_cancel_frame_cancels_the_handler(
    backend_with_bystander: tuple[Backend, Any],
) -> None:
    backend, _ = backend_with_bystander
    probe = backend.servicer.probe
    raw = await RawTunnel.open(backend)
    await raw.send(new_stream(1), request(1, echo_request("freeze")), half_close(1))
    await probe.wait_frozen(1)
    await raw.send(cancel(1))
    await probe.wait_unfrozen(1)
    assert probe.context_cancelled == [True]
    # nothing is sent for a cancelled stream; the next call's frames come next
    assert await raw.call_echo(2, "next") == "next"


# -- Go-like peers ----------------------------------------------------------------------


async def test_revision_zero_peer_without_negotiation(
    backend_with_bystander: tuple[Backend, Any],
) -> None:
    """An old Go client: no negotiate header, so no settings frame and no window
    updates, even for a message in many chunks."""
    backend, _ = backend_with_bystander
    raw = await RawTunnel.open(backend)
    assert NEGOTIATE in raw.headers  # the server always answers with it
    assert await raw.call_echo(1, "zero") == "zero"
    data = bytes(range(256)) * 800  # 200 KiB in 16 KiB chunks
    chunks = [data[i : i + 16384] for i in range(0, len(data), 16384)]
    await raw.send(
        new_stream(2, RAW_ECHO),
        request(2, chunks[0], size=len(data)),
        *(more(2, c) for c in chunks[1:]),
        half_close(2),
    )
    frames, close = await raw.until_close(2)
    kinds = [f.WhichOneof("frame") for f in frames]
    assert "settings" not in kinds and "window_update" not in kinds
    assert not close.HasField("status") or close.status.code == 0
    first = frames[1].response_message
    body = first.data + b"".join(f.more_response_data for f in frames[2:-1])
    assert first.size == len(data) and body == data


@pytest.mark.parametrize("extensions", [False, True])
async def test_negotiating_peer(
    backend_with_bystander: tuple[Backend, Any], extensions: bool
) -> None:
    backend, _ = backend_with_bystander
    raw = await RawTunnel.open(backend, negotiate=True, extensions=extensions)
    assert NEGOTIATE in raw.headers
    assert raw.settings is not None
    assert list(raw.settings.supported_protocol_revisions) == [0, 1]
    # a Go peer gets Go's window; a peer of this project a larger one
    expected = 4 * 1024 * 1024 if extensions else 65536
    assert raw.settings.initial_window_size == expected
    assert await raw.call_echo(1, "one", revision=1) == "one"
    # with a small window of ours, the server sends at most that much, then waits
    await raw.send(
        new_stream(2, "/test.Raw/Make", revision=1, window=65536),
        request(2, b"200000"),
        half_close(2),
    )
    received = 0
    granted = False
    frame = await raw.read()
    while frame.WhichOneof("frame") != "close_stream":
        kind = frame.WhichOneof("frame")
        if kind in ("response_message", "more_response_data"):
            chunk = (
                frame.response_message.data
                if kind == "response_message"
                else frame.more_response_data
            )
            assert len(chunk) <= (1024 * 1024 if extensions else 16384)
            received += len(chunk)
            assert received <= 65536 or granted
        if received == 65536:
            granted = True
            await raw.send(C2S(stream_id=2, window_update=200000))
        frame = await raw.read()
    assert received == 200000


# -- reverse tunnels with hand-driven peers ------------------------------------------------


class RawReverse:
    """A hand-driven reverse tunnel: we are the serving side and send ServerToClient."""

    def __init__(self, call: Any) -> None:
        self.call = call

    @classmethod
    async def open(cls, backend: Backend, *, negotiate: bool) -> RawReverse:
        metadata = (NEGOTIATE, ("name", "raw")) if negotiate else (("name", "raw"),)
        raw = cls(backend.dial_generated().OpenReverseTunnel(metadata=metadata))
        await wait(raw.call.initial_metadata())
        return raw

    async def send(self, *frames: S2C) -> None:
        for frame in frames:
            await self.call.write(frame)

    async def read(self) -> C2S:
        frame = await wait(self.call.read())
        assert frame is not grpc.aio.EOF
        return frame  # type: ignore[no-any-return]

    async def serve_one(self) -> tunnel_pb2.NewStream:
        """Answers one unary Echo call with the request's msg uppercased."""
        opened = await self.read()
        assert opened.WhichOneof("frame") == "new_stream", opened
        sid = opened.stream_id
        req = await self.read()
        assert req.stream_id == sid and req.WhichOneof("frame") == "request_message"
        msg = echo_pb2.EchoRequest.FromString(req.request_message.data).msg
        assert (await self.read()).WhichOneof("frame") == "half_close"
        reply = echo_pb2.EchoReply(msg=msg.upper()).SerializeToString()
        md = tunnel_pb2.Metadata()
        md.md["x-from"].val.append("raw")
        await self.send(
            S2C(stream_id=sid, response_headers=md),
            S2C(
                stream_id=sid,
                response_message=tunnel_pb2.MessageData(size=len(reply), data=reply),
            ),
            S2C(stream_id=sid, close_stream=tunnel_pb2.CloseStream()),
        )
        return opened.new_stream

    async def ended(self) -> tuple[grpc.StatusCode, str]:
        with contextlib.suppress(grpc.aio.AioRpcError):
            while await wait(self.call.read()) is not grpc.aio.EOF:
                pass
        return await self.call.code(), await self.call.details()


def _settings(revisions: list[int], sid: int = -1) -> S2C:
    return S2C(
        stream_id=sid,
        settings=tunnel_pb2.Settings(
            supported_protocol_revisions=revisions,  # type: ignore[arg-type]
            initial_window_size=65536,
        ),
    )


@pytest.mark.parametrize("negotiate", [False, True])
async def test_reverse_tunnel_to_a_go_like_peer(
    backend_with_bystander: tuple[Backend, Any], negotiate: bool
) -> None:
    backend, _ = backend_with_bystander
    raw = await RawReverse.open(backend, negotiate=negotiate)
    if negotiate:
        await raw.send(_settings([0, 1]))
    pool = backend.handler.as_channel()
    await wait(pool.channel_ready())
    call = pool.unary_unary(
        "/grpctunnel.demo.v1.Echo/Echo",
        request_serializer=echo_pb2.EchoRequest.SerializeToString,
        response_deserializer=echo_pb2.EchoReply.FromString,
    )(echo_pb2.EchoRequest(msg="hi"), timeout=10)
    opened = await raw.serve_one()
    assert (await call).msg == "HI"
    assert ("x-from", "raw") in list(await call.initial_metadata())
    assert opened.protocol_revision == (1 if negotiate else 0)
    assert opened.method_name == "/grpctunnel.demo.v1.Echo/Echo"
    assert "grpc-timeout" in opened.request_headers.md
    await raw.call.done_writing()
    await raw.ended()


REVERSE_ERRORS = {
    "no settings first": (
        [S2C(stream_id=1, response_headers=tunnel_pb2.Metadata())],
        "settings frame first",
    ),
    "settings with no revisions": ([_settings([])], "no protocol revisions"),
    "settings on a stream": ([_settings([0, 1], sid=3)], "settings belong on stream -1"),
}


@pytest.mark.parametrize("case", list(REVERSE_ERRORS))
async def test_reverse_peer_breaking_negotiation(
    backend_with_bystander: tuple[Backend, Any], case: str
) -> None:
    backend, _ = backend_with_bystander
    frames, words = REVERSE_ERRORS[case]
    raw = await RawReverse.open(backend, negotiate=True)
    await raw.send(*frames)
    code, details = await raw.ended()
    assert code != grpc.StatusCode.OK
    assert words in details, details
    assert backend.handler.all_reverse_tunnels() == []


async def test_reverse_peer_answering_a_stream_never_opened(
    backend_with_bystander: tuple[Backend, Any],
) -> None:
    backend, _ = backend_with_bystander
    raw = await RawReverse.open(backend, negotiate=False)
    pool = backend.handler.as_channel()
    await wait(pool.channel_ready())
    call = pool.unary_unary("/grpctunnel.demo.v1.Echo/Echo")(b"")
    await raw.read()  # its new_stream
    await raw.send(S2C(stream_id=42, close_stream=tunnel_pb2.CloseStream()))
    code, details = await raw.ended()
    assert code != grpc.StatusCode.OK and "never opened" in details
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "never opened" in (info.value.details() or "")


# -- the batch extension: several frames in one tunnel message ---------------------------
BOTH_EXTENSIONS = ("grpctunnel-extensions", "binary-base64,batch")


def batch_of(*frames: C2S) -> C2S:
    outer = C2S()
    outer.batch.extend(frames)
    return outer


async def test_batched_call_is_served_and_answered_in_batches(
    backend_with_bystander: tuple[Any, Any],
) -> None:
    backend, _ = backend_with_bystander
    raw = RawTunnel(backend.dial_generated().OpenTunnel(metadata=(NEGOTIATE, BOTH_EXTENSIONS)))
    headers = dict(await raw.call.initial_metadata())
    assert "batch" in headers["grpctunnel-extensions"].split(",")
    settings = await raw.read()
    assert settings.WhichOneof("frame") == "settings"
    window = settings.settings.initial_window_size
    await raw.send(
        batch_of(
            new_stream(1, revision=1, window=window), request(1, echo_request("hi")), half_close(1)
        )
    )
    frames: list[Any] = []
    batches = 0
    while not any(f.WhichOneof("frame") == "close_stream" for f in frames):
        frame = await raw.read()
        if frame.batch:
            batches += 1
            frames.extend(frame.batch)
        else:
            frames.append(frame)
    kinds = [f.WhichOneof("frame") for f in frames if f.stream_id == 1]
    assert kinds == ["response_headers", "response_message", "close_stream"]
    assert batches >= 1, "a peer that announced batches gets its small frames batched"
    raw.call.cancel()


async def test_batch_from_a_peer_that_did_not_negotiate_it_ends_the_tunnel(
    backend_with_bystander: tuple[Any, Any],
) -> None:
    backend, _ = backend_with_bystander
    raw = await RawTunnel.open(backend, negotiate=True)
    await raw.send(
        batch_of(
            new_stream(1, revision=1, window=65536), request(1, echo_request("x")), half_close(1)
        )
    )
    code, details = await raw.ended()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch" in details


async def test_nested_batch_ends_the_tunnel(backend_with_bystander: tuple[Any, Any]) -> None:
    backend, _ = backend_with_bystander
    raw = RawTunnel(backend.dial_generated().OpenTunnel(metadata=(NEGOTIATE, BOTH_EXTENSIONS)))
    await raw.call.initial_metadata()
    await raw.read()  # settings
    await raw.send(batch_of(batch_of(new_stream(1, revision=1, window=65536))))
    code, details = await raw.ended()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch" in details


async def test_go_like_peer_never_receives_a_batch(backend_with_bystander: tuple[Any, Any]) -> None:
    backend, _ = backend_with_bystander
    raw = await RawTunnel.open(backend, negotiate=True)
    for sid in range(1, 6):
        await raw.send(
            new_stream(sid, revision=1, window=65536),
            request(sid, echo_request(f"m{sid}")),
            half_close(sid),
        )
    closed = 0
    while closed < 5:
        frame = await raw.read()
        assert not frame.batch
        closed += frame.WhichOneof("frame") == "close_stream"
    raw.call.cancel()
