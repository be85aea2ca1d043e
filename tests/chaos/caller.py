"""The chaos test's caller: a steady mix of the four kinds of call on the demo Echo through
`serve`, at a fixed rate with a bounded number in flight, every call with a deadline, each
one recorded: its request ids, when it started and ended (``time.monotonic()``), its final
code, and the fault under way when it started."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc

from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

DEADLINE = 3.0  # every call's deadline, seconds
HANG_SLACK = 2.0  # a call not ended this long past its deadline hangs: recorded as HUNG
RATE = 30.0  # calls started per second
MAX_IN_FLIGHT = 200  # beyond, a tick starts no call (counted in ``skipped``)
MIX = (("Echo", 65), ("Expand", 20), ("Chat", 10), ("Collect", 5))
EXPAND_COUNT = 5
STREAM_MESSAGES = 3  # messages a Chat or Collect sends

# how a call may end while faults are injected
ALLOWED = frozenset({"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"})

# the caller's own reconnection: quick, so that the figures measure the tunnel's recovery
# rather than grpc's default client backoff (1 s, growing to 2 min) towards a restarted serve
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class Failed(Exception):
    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


@dataclass
class Call:
    n: int
    kind: str
    msgs: tuple[str, ...]
    phase: str
    started: float
    ended: float | None = None
    code: str | None = None
    details: str = ""
    status_lost: bool = False  # INTERNAL from grpc/grpc#36066, see lost_status()

    @property
    def took(self) -> float:
        assert self.ended is not None
        return self.ended - self.started

    def describe(self) -> str:
        ended = "never" if self.ended is None else f"{self.ended:.3f} (after {self.took:.3f}s)"
        return (
            f"call {self.n} ({self.kind}, ids {','.join(self.msgs)}) during {self.phase!r}: "
            f"started {self.started:.3f}, ended {ended}, {self.code} {self.details!r}"
            + (" (status lost: grpc/grpc#36066)" if self.status_lost else "")
        )


@dataclass
class Caller:
    address: str
    metadata: tuple[tuple[str, str], ...]
    seed: int = 9
    phase: str = "start"
    calls: list[Call] = field(default_factory=list)
    skipped: int = 0
    _ended: asyncio.Event = field(default_factory=asyncio.Event)
    _running: set[asyncio.Task[None]] = field(default_factory=set)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self._stub = echo_pb2_grpc.EchoStub(self._channel)  # type: ignore[no-untyped-call]
        self._random = random.Random(self.seed)
        self._kinds = [kind for kind, _ in MIX]
        self._weights = [weight for _, weight in MIX]
        self._ticker = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        """Starts a call every 1/RATE s (sleeping is the point: the rate) until stopped."""
        period = 1.0 / RATE
        next_at = time.monotonic()
        while not self._stop.is_set():
            if len(self._running) < MAX_IN_FLIGHT:
                self._launch()
            else:
                self.skipped += 1
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def _launch(self) -> None:
        n = len(self.calls)
        kind = self._random.choices(self._kinds, self._weights)[0]
        if kind in ("Echo", "Expand"):
            msgs: tuple[str, ...] = (f"req-{n}",)
        else:
            msgs = tuple(f"req-{n}.{k}" for k in range(STREAM_MESSAGES))
        call = Call(n, kind, msgs, self.phase, time.monotonic())
        self.calls.append(call)
        task = asyncio.ensure_future(self._run(call))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, call: Call) -> None:
        try:
            await asyncio.wait_for(self._do(call), DEADLINE + HANG_SLACK)
            code, details = "OK", ""
        except asyncio.TimeoutError:
            code, details = "HUNG", f"not ended {DEADLINE + HANG_SLACK}s after it started"
        except grpc.aio.AioRpcError as e:
            code, details = e.code().name, e.details() or ""
            call.status_lost = lost_status(e)
        except Failed as e:
            code, details = e.code, e.details
        call.ended = time.monotonic()
        call.code, call.details = code, details
        self._ended.set()

    async def _do(self, call: Call) -> None:
        stub, md = self._stub, self.metadata
        if call.kind == "Echo":
            reply = await stub.Echo(
                echo_pb2.EchoRequest(msg=call.msgs[0]), timeout=DEADLINE, metadata=md
            )
            _expect(reply.msg == call.msgs[0], f"Echo answered {reply.msg!r}")
        elif call.kind == "Expand":
            stream = stub.Expand(
                echo_pb2.ExpandRequest(msg=call.msgs[0], count=EXPAND_COUNT),
                timeout=DEADLINE,
                metadata=md,
            )
            got = [(r.msg, r.index) async for r in stream]
            _expect(
                got == [(call.msgs[0], i) for i in range(EXPAND_COUNT)], f"Expand answered {got}"
            )
        elif call.kind == "Chat":
            stream = stub.Chat(timeout=DEADLINE, metadata=md)
            await _streaming(stream, self._chat(stream, call))
        else:
            stream = stub.Collect(timeout=DEADLINE, metadata=md)
            await _streaming(stream, self._collect(stream, call))

    async def _chat(self, stream: Any, call: Call) -> None:
        for index, msg in enumerate(call.msgs):
            await stream.write(echo_pb2.EchoRequest(msg=msg))
            reply = await stream.read()
            _expect(
                reply is not grpc.aio.EOF and (reply.msg, reply.index) == (msg, index),  # type: ignore[attr-defined]
                f"Chat answered {reply!r}",
            )
        await stream.done_writing()
        _expect(await stream.read() is grpc.aio.EOF, "Chat answered more")  # type: ignore[attr-defined]

    async def _collect(self, stream: Any, call: Call) -> None:
        for msg in call.msgs:
            await stream.write(echo_pb2.EchoRequest(msg=msg))
        await stream.done_writing()
        reply = await stream
        _expect(reply.msg == " ".join(call.msgs), f"Collect answered {reply.msg!r}")

    async def wait_ok(self, after: float, n: int, timeout: float) -> list[Call]:
        """The first ``n`` calls started at or after ``after`` to end OK, by when they
        ended, waiting up to ``timeout`` s for them; fewer if they did not."""
        deadline = time.monotonic() + timeout
        while True:
            done = [c for c in self.calls if c.started >= after and c.code == "OK"]
            if len(done) >= n:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._ended.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ended.wait(), remaining)
        return sorted(done, key=lambda c: c.ended or 0.0)[:n]

    async def stop(self) -> None:
        """Starts no more calls, and waits for those in flight (each bounded by its
        deadline and the hang slack)."""
        self._stop.set()
        if self._ticker is not None:
            await self._ticker
        if self._running:
            await asyncio.wait(set(self._running), timeout=DEADLINE + HANG_SLACK + 5)
        await self._channel.close(None)

    def codes(self) -> Counter[str]:
        return Counter(c.code or "NOT ENDED" for c in self.calls)


async def _streaming(stream: Any, talk: Any) -> None:
    """Runs a streaming call's conversation; a failure part-way (a write on a call that
    already ended, say) becomes the call's final status."""
    try:
        await talk
    except (grpc.aio.AioRpcError, Failed):
        raise
    except Exception as e:
        if not stream.done():
            raise
        code = await stream.code()
        if code == grpc.StatusCode.OK:
            raise Failed("WRONG_REPLY", f"ended OK but: {e!r}") from None
        raise Failed(code.name, await stream.details() or "") from None
    code = await stream.code()
    if code != grpc.StatusCode.OK:
        raise Failed(code.name, await stream.details() or "")


def lost_status(error: grpc.aio.AioRpcError) -> bool:
    """Whether grpc.aio replaced the status of a call by INTERNAL "Internal error from
    Core" because a write of ours went out after the server had ended the call
    (grpc/grpc#36066, open in grpcio 1.85): the server's own code is lost. It happens
    against a plain grpc.aio server too (one that fails a client-streaming call at
    once); here, when the gateway fails a Collect or Chat at once with UNAVAILABLE."""
    return (
        error.code() == grpc.StatusCode.INTERNAL
        and error.details() == "Internal error from Core"
        and 'Failed "execute_batch"' in (error.debug_error_string() or "")
        and "SendMessageOperation" in (error.debug_error_string() or "")
    )


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise Failed("WRONG_REPLY", what)
