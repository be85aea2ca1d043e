"""Hostile and broken peers against the real `grpctunnel serve`: a raw-frame client (a
plain grpc.aio stream on TunnelService/OpenTunnel, frames made by hand) sends malformed
frames, reused and unknown stream ids, window violations, sizes beyond the limit, garbage
bytes and thousands of idle streams. Each offending tunnel or stream ends with a status
naming the problem; meanwhile a bystander keeps calling the exposed backend through the
same server, directly and through a forward tunnel, and every one of its calls succeeds;
the server's memory stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from grpctunnel import PendingChannel, TunnelServiceStub
from grpctunnel.v1 import tunnel_pb2
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

from .procs import Launcher, Proc, no_traceback

pytestmark = pytest.mark.timeout(60)

C2S = tunnel_pb2.ClientToServer
S2C = tunnel_pb2.ServerToClient
EMPTY = empty_pb2.Empty()
OPEN_TUNNEL = "/grpctunnel.v1.TunnelService/OpenTunnel"
ECHO = "/grpctunnel.demo.v1.Echo/Echo"
CHAT = "/grpctunnel.demo.v1.Echo/Chat"
WINDOW = 65536
STREAM_LIMIT = 100
ROUNDS = 3  # floods, one after the other: memory must not grow from one to the next
MIB = 1024


# --- frames ---------------------------------------------------------------------------------


def new_stream(sid: int, method: str = ECHO, *, revision: int = 1) -> C2S:
    return C2S(
        stream_id=sid,
        new_stream=tunnel_pb2.NewStream(
            method_name=method,
            initial_window_size=WINDOW if revision else 0,
            protocol_revision=revision,  # type: ignore[arg-type]
        ),
    )


def message(sid: int, data: bytes, size: int | None = None) -> C2S:
    size = len(data) if size is None else size
    return C2S(stream_id=sid, request_message=tunnel_pb2.MessageData(size=size, data=data))


def more(sid: int, data: bytes) -> C2S:
    return C2S(stream_id=sid, more_request_data=data)


def half_close(sid: int) -> C2S:
    return C2S(stream_id=sid, half_close=EMPTY)


def cancel(sid: int) -> C2S:
    return C2S(stream_id=sid, cancel=EMPTY)


def unknown_kind(sid: int) -> bytes:
    """A frame of a kind no version of the protocol has (field 15, bytes)."""
    return C2S(stream_id=sid).SerializeToString() + b"\x7a\x03abc"


def echo_bytes(msg: str) -> bytes:
    return echo_pb2.EchoRequest(msg=msg).SerializeToString()


class RawTunnel:
    """A forward tunnel spoken by hand, as bytes both ways."""

    def __init__(self, call: Any) -> None:
        self.call = call

    @classmethod
    async def open(cls, channel: grpc.aio.Channel) -> RawTunnel:
        call = channel.stream_stream(OPEN_TUNNEL)(metadata=(("grpctunnel-negotiate", "on"),))
        tunnel = cls(call)
        await asyncio.wait_for(call.initial_metadata(), 10)
        settings = await tunnel.read()
        assert settings.stream_id == -1 and settings.WhichOneof("frame") == "settings"
        assert settings.settings.initial_window_size == WINDOW
        return tunnel

    async def send(self, *frames: C2S | bytes) -> None:
        for frame in frames:
            await self.call.write(frame if isinstance(frame, bytes) else frame.SerializeToString())

    async def read(self) -> S2C:
        raw = await asyncio.wait_for(self.call.read(), 20)
        assert raw is not grpc.aio.EOF, "the tunnel ended"  # type: ignore[attr-defined]
        return S2C.FromString(raw)

    async def until_close(self, sid: int) -> tuple[list[S2C], tunnel_pb2.CloseStream]:
        frames = []
        while True:
            frame = await self.read()
            if frame.stream_id == sid:
                frames.append(frame)
                if frame.WhichOneof("frame") == "close_stream":
                    return frames, frame.close_stream

    async def ended(self) -> tuple[grpc.StatusCode, str]:
        """Waits for the server to end the tunnel: its status."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            while await asyncio.wait_for(self.call.read(), 20) is not grpc.aio.EOF:  # type: ignore[attr-defined]
                pass
        return await self.call.code(), await self.call.details()

    async def echo(self, sid: int, msg: str) -> str:
        """One well-formed unary call on stream ``sid``: the reply."""
        await self.send(new_stream(sid), message(sid, echo_bytes(msg)), half_close(sid))
        frames, close = await self.until_close(sid)
        assert not close.HasField("status") or close.status.code == 0, close
        replies = [f for f in frames if f.WhichOneof("frame") == "response_message"]
        return str(echo_pb2.EchoReply.FromString(replies[0].response_message.data).msg)


# --- the server, its exposer, and a bystander -----------------------------------------------


class Bystander:
    """Calls the exposed Echo through the server without pause, directly and through a
    forward tunnel, and keeps count; any failure is kept for the test to report."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.ok = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.address)
        self._tunnel = await PendingChannel(TunnelServiceStub(self._channel)).start(timeout=10)
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        stubs = [
            echo_pb2_grpc.EchoStub(self._channel),  # type: ignore[no-untyped-call]
            echo_pb2_grpc.EchoStub(self._tunnel),  # type: ignore[no-untyped-call]
        ]
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                replies = await asyncio.gather(
                    *(s.Echo(echo_pb2.EchoRequest(msg=f"b{n}"), timeout=10) for s in stubs)
                )
                assert all(r.msg == f"b{n}" for r in replies)
                self.ok += len(replies)
            except Exception as e:  # kept and reported; the test fails on any
                self.failures.append(repr(e))
            await asyncio.sleep(0.01)

    async def check(self) -> None:
        """No call failed so far, and calls are still being answered."""
        assert not self.failures, self.failures[:3]
        before = self.ok
        deadline = time.monotonic() + 10
        while self.ok < before + 4:
            assert time.monotonic() < deadline, "the bystander's calls stopped being answered"
            assert not self.failures, self.failures[:3]
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 15)
        await self._tunnel.close()
        await self._channel.close()


@dataclass
class Stack:
    server: Proc
    address: str
    bystander: Bystander
    channel: grpc.aio.Channel


@pytest.fixture
async def stack(launcher: Launcher) -> AsyncIterator[Stack]:
    backend = await launcher.backend()
    server = await launcher.server("--max-streams-per-tunnel", str(STREAM_LIMIT))
    await launcher.exposer(backend, server, "a")
    bystander = Bystander(server[1])
    await bystander.start()
    channel = grpc.aio.insecure_channel(server[1])
    try:
        yield Stack(server[0], server[1], bystander, channel)
        await bystander.check()
        assert bystander.ok > 0
        assert server[0].running
        no_traceback(server[0])
    finally:
        await bystander.stop()
        await channel.close()


# --- tunnel-level: the tunnel ends, with a status naming the problem ------------------------

# each case: the frames to send once stream 1 has carried a good call, and words the
# status must hold
TUNNEL_ERRORS: dict[str, tuple[list[C2S | bytes], str]] = {
    "garbage bytes": ([b"\xff\xff\xff\xff this is no frame at all"], "malformed frame"),
    "reused stream id": ([new_stream(2), new_stream(2)], "is not greater than every id"),
    "stream id reused after its call": ([new_stream(1)], "is not greater than every id"),
    "decreasing stream id": ([new_stream(5), new_stream(3)], "is not greater than every id"),
    "frame for a stream never opened": ([new_stream(2), message(99, b"x")], "never opened"),
    "frame of no kind": ([new_stream(2), C2S(stream_id=2)], "has no known kind"),
    "frame of an unknown kind": ([new_stream(2), unknown_kind(2)], "has no known kind"),
    "batch not negotiated": (
        [C2S(batch=[new_stream(2), half_close(2)])],
        "did not negotiate batches",
    ),
}


async def test_broken_tunnels_end_with_a_status_naming_the_problem(stack: Stack) -> None:
    rss: list[int] = []
    rounds = 5
    for _ in range(rounds):
        for case, (frames, words) in TUNNEL_ERRORS.items():
            raw = await RawTunnel.open(stack.channel)
            assert await raw.echo(1, "first") == "first"
            await raw.send(*frames)
            code, details = await raw.ended()
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (case, code, details)
            assert "protocol error" in details and words in details, (case, details)
        await stack.bystander.check()
        rss.append(stack.server.rss_kib())
    print(f"broken tunnels: {rounds * len(TUNNEL_ERRORS)}; server RSS by round (KiB): {rss}")
    assert rss[-1] - rss[0] < 32 * MIB, rss


# --- stream-level: that stream ends, the tunnel goes on -------------------------------------

STREAM_ERRORS: dict[str, tuple[list[Any], grpc.StatusCode, str]] = {
    "declared size beyond the limit": (
        [message(0, b"x", size=2**32 - 1)],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "larger than max",
    ),
    "window violation": (
        [message(0, b"w" * (WINDOW + 4464), size=WINDOW * 2)],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "flow-control window",
    ),
    "more bytes than declared": (
        [message(0, b"abcdef", size=3)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "exceeds its declared size",
    ),
    "more data without a message": (
        [more(0, b"abc")],
        grpc.StatusCode.INVALID_ARGUMENT,
        "no message in progress",
    ),
    "new message before the last was complete": (
        [message(0, b"ab", size=10), message(0, b"cd")],
        grpc.StatusCode.INVALID_ARGUMENT,
        "before the previous one was complete",
    ),
}
OPEN_ERRORS: dict[str, tuple[C2S, grpc.StatusCode, str]] = {
    "malformed method name": (
        new_stream(0, "no-slashes"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "malformed method name",
    ),
    "empty method name": (new_stream(0, ""), grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
    "unsupported revision": (
        new_stream(0, revision=7),
        grpc.StatusCode.UNAVAILABLE,
        "unsupported protocol revision 7",
    ),
    "unknown service": (
        new_stream(0, "/no.such.v1.Service/Method"),
        grpc.StatusCode.UNAVAILABLE,
        "no tunnel exposes service no.such.v1.Service",
    ),
}


async def test_broken_streams_end_alone(stack: Stack) -> None:
    raw = await RawTunnel.open(stack.channel)
    sid = 1
    assert await raw.echo(sid, "first") == "first"
    for case, (frames, code, words) in STREAM_ERRORS.items():
        sid += 1
        await raw.send(new_stream(sid), *(_on(f, sid) for f in frames))
        await _closed_with(raw, sid, code, words, case)
        sid += 1
        assert await raw.echo(sid, case) == case  # the tunnel goes on
    for case, (opening, code, words) in OPEN_ERRORS.items():
        sid += 1
        await raw.send(_on(opening, sid), message(sid, b""), half_close(sid))
        await _closed_with(raw, sid, code, words, case)
        await raw.send(message(sid, b"late"), cancel(sid))  # for a finished stream: dropped
        sid += 1
        assert await raw.echo(sid, case) == case
    await stack.bystander.check()
    await raw.call.done_writing()
    assert (await raw.ended())[0] == grpc.StatusCode.OK


def _on(frame: C2S, sid: int) -> C2S:
    copy = C2S()
    copy.CopyFrom(frame)
    copy.stream_id = sid
    return copy


async def _closed_with(
    raw: RawTunnel, sid: int, code: grpc.StatusCode, words: str, case: str
) -> None:
    _, close = await raw.until_close(sid)
    assert close.status.code == code.value[0], (case, close)
    assert words in close.status.message, (case, close.status.message)


# --- thousands of idle streams ------------------------------------------------------------


async def test_thousands_of_idle_streams(stack: Stack) -> None:
    rss_before = stack.server.rss_kib()
    peaks = []
    for round_ in range(ROUNDS):
        raw = await RawTunnel.open(stack.channel)
        flood = 3000
        started = time.monotonic()
        await raw.send(*(new_stream(sid, CHAT) for sid in range(1, flood + 1)))
        refused: dict[int, str] = {}
        while len(refused) < flood - STREAM_LIMIT:
            frame = await raw.read()
            if frame.WhichOneof("frame") == "close_stream":
                status = frame.close_stream.status
                assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], frame
                refused[frame.stream_id] = status.message
        took = time.monotonic() - started
        assert set(refused.values()) == {
            f"too many concurrent streams on this tunnel (limit {STREAM_LIMIT})"
        }
        # the first ones were taken, the rest refused
        assert min(refused) == STREAM_LIMIT + 1 and max(refused) == flood, (min(refused),)
        await stack.bystander.check()
        peaks.append(stack.server.rss_kib())
        # a slot freed is a slot usable: cancel one idle stream, and a call goes through
        await raw.send(cancel(1))
        deadline = time.monotonic() + 10
        sid = flood
        while True:
            sid += 1
            await raw.send(new_stream(sid), message(sid, echo_bytes("slot")), half_close(sid))
            _, close = await raw.until_close(sid)
            if not close.HasField("status") or close.status.code == 0:
                break
            assert "too many concurrent streams" in close.status.message, close
            assert time.monotonic() < deadline, "the cancelled stream never freed its slot"
        raw.call.cancel()
        print(
            f"round {round_ + 1}: {flood} idle streams, {len(refused)} refused in {took:.2f}s; "
            f"server RSS {peaks[-1]} KiB"
        )
    rss_after = stack.server.rss_kib()
    print(f"idle streams: server RSS before {rss_before} KiB, peaks {peaks}, after {rss_after} KiB")
    assert max(peaks) - rss_before < 64 * MIB, (rss_before, peaks)
    assert peaks[-1] - peaks[0] < 16 * MIB, peaks  # no growth from one flood to the next
