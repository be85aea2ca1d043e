"""Fixtures for the library tests: real grpc.aio servers hosting a TunnelServiceHandler,
forward and reverse tunnels to them, and in-memory pairs that behave like a Go peer.

Every semantic test gets an :class:`Env` through the ``env`` fixture, parametrized over

* ``forward``: a ``PendingChannel`` to a real server; the test servicer runs in the
  server's ``TunnelServiceHandler``;
* ``reverse``: a ``ReverseTunnelServer`` dialled into a real server; the test servicer
  runs in the dialling client and the test calls it through ``handler.as_channel()``;
* ``go``: ``TunnelPair(extended=False)``: both ends behave like a Go peer (64 KiB
  windows, 16 KiB chunks, binary metadata as raw text);
* ``rev0`` (only where listed): ``TunnelPair(extended=False, negotiate=False)``:
  protocol revision zero, as with an old Go peer.

Test servicers report what they see through :class:`Probe` (asyncio events the test
awaits), never through timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

import grpctunnel
from grpctunnel import (
    PendingChannel,
    ReverseTunnelServer,
    TunnelClientOptions,
    TunnelServiceHandler,
    TunnelServiceHandlerOptions,
    TunnelServiceStub,
    add_TunnelServiceServicer_to_server,
)
from grpctunnel.testing import TunnelPair
from grpctunnel.v1 import tunnel_pb2_grpc
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

ECHO = "/grpctunnel.demo.v1.Echo/"
RAW_SERVICE = "test.Raw"
RAW = f"/{RAW_SERVICE}/"

MAIN_MODES = ("forward", "reverse", "go")
ALL_MODES = (*MAIN_MODES, "rev0")
GRPC_MODES = ("forward", "reverse")


# -- what the servicers report ------------------------------------------------------


class Probe:
    """What the far side's handlers saw, for tests to await."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.finished = asyncio.Event()
        self.context_cancelled: list[bool] = []
        self.invocation: list[tuple[tuple[str, Any], ...]] = []
        self.time_remaining: list[float | None] = []
        self.tunnel_metadata: list[tuple[tuple[str, Any], ...]] = []
        self.calls = 0
        self.written = 0
        self.write_threshold = 0
        self.reached_threshold = asyncio.Event()
        self.done_callbacks = 0
        self.release = asyncio.Event()
        self.frozen = 0  # handlers that entered _freeze
        self.unfrozen = 0  # ... and were cancelled out of it
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Waits (event-driven) until ``predicate()`` holds after some change."""
        while not predicate():
            await self._changed.wait()

    async def wait_frozen(self, n: int) -> None:
        await wait(self.until(lambda: self.frozen >= n))

    async def wait_unfrozen(self, n: int) -> None:
        await wait(self.until(lambda: self.unfrozen >= n))

    def wrote_one(self) -> None:
        self.written += 1
        if self.write_threshold and self.written >= self.write_threshold:
            self.reached_threshold.set()


def _echoed(context: Any) -> tuple[tuple[str, Any], ...]:
    """Request metadata whose key starts with ``x-``, to send back."""
    return tuple((k, v) for k, v in context.invocation_metadata() if k.startswith("x-"))


async def _freeze(probe: Probe, context: Any) -> None:
    """Blocks until cancelled; reports start and cancellation."""
    context.add_done_callback(lambda _ctx: _count_done(probe))
    probe.started.set()
    probe.frozen += 1
    probe.changed()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        probe.context_cancelled.append(context.cancelled())
        probe.cancelled.set()
        probe.unfrozen += 1
        probe.changed()
        raise


def _count_done(probe: Probe) -> None:
    probe.done_callbacks += 1


def rich_status(code: grpc.StatusCode, message: str) -> Any:
    from google.rpc import error_details_pb2, status_pb2

    status = status_pb2.Status(code=code.value[0], message=message)
    info = error_details_pb2.ErrorInfo(
        reason="QUOTA", domain="test.grpctunnel", metadata={"limit": "42"}
    )
    status.details.add().Pack(info)
    return status


class EchoProbeServicer(echo_pb2_grpc.EchoServicer):
    """grpctunnel.demo.v1.Echo, driven by ``msg`` commands (``cmd`` or ``cmd:arg``):

    * ``meta``: records invocation metadata; sends ``x-`` request metadata back as
      headers (send_initial_metadata) and trailers (set_trailing_metadata);
    * ``abort:CODE``: aborts with CODE, echoing ``x-`` metadata as trailers;
    * ``rich:CODE``: aborts with rich details in ``grpc-status-details-bin``;
    * ``richstatus:CODE``: the same through ``abort_with_status``;
    * ``setcode:CODE``: set_code/set_details/set_trailing_metadata, then returns;
    * ``raise``: raises RuntimeError;
    * ``deadline``: records ``time_remaining()``;
    * ``freeze``: blocks until cancelled (Expand/Chat: after a first reply);
    * ``whoami``: replies with the servicer's name;
    * ``tunnelmd``: replies with the tunnel metadata value of ``name``;
    * ``flow``: (Expand) writes ``count`` replies with context.write, counting them;
    * ``wait``: blocks until ``probe.release`` is set.
    """

    def __init__(self, name: str = "far") -> None:
        self.name = name
        self.probe = Probe()

    async def _common(self, msg: str, context: Any) -> None:
        probe = self.probe
        cmd, _, arg = msg.partition(":")
        if cmd == "meta":
            probe.invocation.append(tuple(context.invocation_metadata()))
            echoed = _echoed(context)
            await context.send_initial_metadata(echoed)
            context.set_trailing_metadata((*echoed, ("x-trailer", "t")))
        elif cmd == "abort":
            await context.abort(
                grpc.StatusCode[arg], f"aborted with {arg}", trailing_metadata=_echoed(context)
            )
        elif cmd == "rich":
            status = rich_status(grpc.StatusCode[arg], f"rich {arg}")
            await context.abort(
                grpc.StatusCode[arg],
                f"rich {arg}",
                trailing_metadata=(
                    ("grpc-status-details-bin", status.SerializeToString()),
                    ("x-other", "kept"),
                ),
            )
        elif cmd == "richstatus":
            from grpc_status import rpc_status

            await context.abort_with_status(
                rpc_status.to_status(rich_status(grpc.StatusCode[arg], f"rich {arg}"))
            )
        elif cmd == "setcode":  # no abort: the handler sets the status and returns
            context.set_code(grpc.StatusCode[arg])
            context.set_details(f"set {arg}")
            context.set_trailing_metadata((("x-set", arg),))
        elif cmd == "raise":
            raise RuntimeError("handler exploded")
        elif cmd == "deadline":
            probe.time_remaining.append(context.time_remaining())
        elif cmd == "tunnelmd":
            probe.tunnel_metadata.append(grpctunnel.tunnel_metadata(context))
        elif cmd == "wait":
            probe.started.set()
            try:
                await probe.release.wait()
            except asyncio.CancelledError:
                probe.context_cancelled.append(context.cancelled())
                probe.cancelled.set()
                raise

    async def Echo(self, request: Any, context: Any) -> Any:
        self.probe.calls += 1
        await self._common(request.msg, context)
        if request.msg == "freeze":
            await _freeze(self.probe, context)
        if request.msg == "whoami":
            return echo_pb2.EchoReply(msg=self.name)
        if request.msg == "tunnelmd":
            value = dict(self.probe.tunnel_metadata[-1]).get("name", "")
            return echo_pb2.EchoReply(msg=str(value))
        if request.msg == "deadline":
            return echo_pb2.EchoReply(msg=repr(self.probe.time_remaining[-1]))
        return echo_pb2.EchoReply(msg=request.msg)

    async def Expand(self, request: Any, context: Any) -> None:
        # a coroutine using context.write (the reader/writer API), not a generator
        probe = self.probe
        probe.calls += 1
        cmd, _, arg = request.msg.partition(":")
        await self._common(request.msg, context)
        if cmd == "freeze":
            await context.write(echo_pb2.EchoReply(msg="first", index=0))
            await _freeze(probe, context)
        if cmd == "abortafter":
            for i in range(request.count):
                await context.write(echo_pb2.EchoReply(msg="x", index=i))
            await context.abort(grpc.StatusCode.ABORTED, "stopped after writing")
        payload = arg if cmd == "flow" else request.msg
        for i in range(request.count):
            await context.write(echo_pb2.EchoReply(msg=payload, index=i))
            probe.wrote_one()
        probe.finished.set()

    async def Collect(self, request_iterator: Any, context: Any) -> Any:
        self.probe.calls += 1
        parts = []
        async for request in request_iterator:
            await self._common(request.msg, context)
            if request.msg == "freeze":
                await _freeze(self.probe, context)
            parts.append(request.msg)
        joined = ",".join(parts) if sum(map(len, parts)) <= 4096 else "(long)"
        return echo_pb2.EchoReply(msg=joined, index=len(parts))

    async def Chat(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        self.probe.calls += 1
        index = 0
        async for request in request_iterator:
            await self._common(request.msg, context)
            if request.msg == "freeze":
                await _freeze(self.probe, context)
            yield echo_pb2.EchoReply(msg=request.msg, index=index)
            index += 1


# -- a raw-bytes service (no protobuf), for big messages --------------------------------


async def _raw_echo(request: bytes, context: Any) -> bytes:
    return request


async def _raw_chat(request_iterator: Any, context: Any) -> AsyncIterator[bytes]:
    async for request in request_iterator:
        yield request


async def _raw_sink(request_iterator: Any, context: Any) -> bytes:
    total = 0
    async for request in request_iterator:
        total += len(request)
    return str(total).encode()


async def _raw_make(request: bytes, context: Any) -> bytes:
    """Replies with as many bytes as the request says (decimal)."""
    return payload(int(request))


def raw_generic_handler() -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(
        RAW_SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_raw_echo),
            "Chat": grpc.stream_stream_rpc_method_handler(_raw_chat),
            "Sink": grpc.stream_unary_rpc_method_handler(_raw_sink),
            "Make": grpc.unary_unary_rpc_method_handler(_raw_make),
        },
    )


def payload(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


# -- environments ---------------------------------------------------------------------


@dataclass
class Backend:
    """A real grpc.aio server on 127.0.0.1 hosting a TunnelServiceHandler."""

    server: grpc.aio.Server
    handler: TunnelServiceHandler
    port: int
    servicer: EchoProbeServicer
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    stopped: bool = False

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def dial(self) -> TunnelServiceStub:
        """A TunnelService stub over a fresh grpc channel to this server."""
        channel = grpc.aio.insecure_channel(self.target)
        self.channels.append(channel)
        return TunnelServiceStub(channel)

    def dial_generated(self) -> tunnel_pb2_grpc.TunnelServiceStub:
        """The generated stub (protobuf frames both ways, as any other peer's code reads
        and writes them) over a fresh grpc channel to this server."""
        channel = grpc.aio.insecure_channel(self.target)
        self.channels.append(channel)
        return tunnel_pb2_grpc.TunnelServiceStub(channel)  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.server.stop(None)

    async def aclose(self) -> None:
        await self.stop()
        for channel in self.channels:
            await channel.close()


async def start_backend(
    options: TunnelServiceHandlerOptions | None = None, *, name: str = "server", bare: bool = False
) -> Backend:
    """``bare``: the handler serves nothing until the test registers services."""
    handler = TunnelServiceHandler(options)
    servicer = EchoProbeServicer(name)
    if not bare:
        echo_pb2_grpc.add_EchoServicer_to_server(servicer, handler)  # type: ignore[no-untyped-call]
        handler.add_generic_rpc_handlers((raw_generic_handler(),))
    server = grpc.aio.server()
    add_TunnelServiceServicer_to_server(handler.service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port
    await server.start()
    return Backend(server, handler, port, servicer)


def new_reverse_server(
    backend: Backend, options: TunnelClientOptions | None = None, *, name: str = "client"
) -> tuple[ReverseTunnelServer, EchoProbeServicer]:
    rts = ReverseTunnelServer(backend.dial(), options)
    servicer = EchoProbeServicer(name)
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, rts)  # type: ignore[no-untyped-call]
    rts.add_generic_rpc_handlers((raw_generic_handler(),))
    return rts, servicer


@dataclass
class Env:
    """One tunnel to test through: ``channel`` calls ``servicer`` on the far side."""

    mode: str
    channel: grpc.aio.Channel
    servicer: EchoProbeServicer
    backend: Backend | None = None
    rts: ReverseTunnelServer | None = None
    pair: TunnelPair | None = None

    @property
    def stub(self) -> echo_pb2_grpc.EchoStub:
        return echo_pb2_grpc.EchoStub(self.channel)  # type: ignore[no-untyped-call]

    @property
    def probe(self) -> Probe:
        return self.servicer.probe

    @property
    def extended(self) -> bool:
        """Whether both ends are peers of this project (binary metadata survives)."""
        return self.mode in GRPC_MODES

    def raw(self, kind: str, method: str) -> Any:
        return getattr(self.channel, kind)(RAW + method)

    def calling_sessions(self) -> list[Any]:
        if self.mode == "forward":
            return [self.channel._source.session]  # type: ignore[attr-defined]
        if self.mode == "reverse":
            assert self.backend is not None
            return [t.session for t in self.backend.handler.all_reverse_tunnels()]
        assert self.pair is not None
        return [self.pair.calling_session]

    def serving_sessions(self) -> list[Any]:
        if self.mode == "forward":
            assert self.backend is not None
            return forward_sessions(self.backend.handler)
        if self.mode == "reverse":
            assert self.rts is not None
            return [t.session for t in self.rts.tunnels]
        assert self.pair is not None
        return [self.pair.serving_session]

    def assert_idle(self) -> None:
        """No call left in any table on either end."""
        sessions = [*self.calling_sessions(), *self.serving_sessions()]
        assert len(sessions) >= 2
        for session in sessions:
            assert session.listeners == {}, session.listeners
            assert session.conn.active_streams == 0
            assert not session.closed

    async def break_tunnel(self, how: str = "server") -> None:
        """Ends the tunnel RPC abruptly: the server stops, or the reverse client
        goes away."""
        if how == "server":
            assert self.backend is not None
            await self.backend.stop()
        elif how == "client":
            assert self.rts is not None
            await self.rts.stop()
        else:  # pragma: no cover
            raise ValueError(how)


EnvFactory = Callable[..., Awaitable[Env]]


@pytest.fixture
async def make_env() -> AsyncIterator[EnvFactory]:
    """``await make_env(mode, handler_options=..., client_options=..., pair_options=...)``."""
    async with contextlib.AsyncExitStack() as stack:

        async def factory(
            mode: str,
            *,
            handler_options: TunnelServiceHandlerOptions | None = None,
            client_options: TunnelClientOptions | None = None,
            pair_options: Any = None,
        ) -> Env:
            if mode in ("go", "rev0", "pair"):
                pair = TunnelPair(
                    pair_options,
                    extended=mode == "pair",
                    negotiate=mode != "rev0",
                    tunnel_metadata=(("name", "pair"),),
                )
                servicer = EchoProbeServicer("pair")
                echo_pb2_grpc.add_EchoServicer_to_server(servicer, pair.server)  # type: ignore[no-untyped-call]
                pair.server.add_generic_rpc_handlers((raw_generic_handler(),))
                await stack.enter_async_context(pair)
                return Env(mode, pair.channel, servicer, pair=pair)
            backend = await start_backend(handler_options)
            stack.push_async_callback(backend.aclose)
            if mode == "forward":
                channel = await PendingChannel(backend.dial(), client_options).start()
                stack.push_async_callback(channel.close)
                return Env(mode, channel, backend.servicer, backend=backend)
            assert mode == "reverse", mode
            rts, servicer = new_reverse_server(backend, client_options)
            stack.push_async_callback(rts.stop)
            await rts.serve()
            channel = backend.handler.as_channel()
            await channel.channel_ready()
            return Env(mode, channel, servicer, backend=backend, rts=rts)

        yield factory


@pytest.fixture(params=MAIN_MODES)
async def env(request: pytest.FixtureRequest, make_env: EnvFactory) -> Env:
    return await make_env(request.param)


@pytest.fixture(params=GRPC_MODES)
async def grpc_env(request: pytest.FixtureRequest, make_env: EnvFactory) -> Env:
    return await make_env(request.param)


@pytest.fixture(params=ALL_MODES)
async def any_env(request: pytest.FixtureRequest, make_env: EnvFactory) -> Env:
    return await make_env(request.param)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = await start_backend()
    try:
        yield b
    finally:
        await b.aclose()


def forward_sessions(handler: TunnelServiceHandler) -> list[Any]:
    """The sessions of the forward tunnels open on ``handler``."""
    return [r.session for r in handler.open_tunnels() if r.kind == "forward" and r.session]


async def wait_for_reverse_tunnels(handler: TunnelServiceHandler, count: int) -> None:
    """Waits until ``handler`` holds ``count`` live reverse tunnels."""
    while len(handler.all_reverse_tunnels()) < count:
        await handler._reverse.wait_changed()


async def wait(awaitable: Awaitable[Any], timeout: float = 5.0) -> Any:
    """Awaits something the test expects to happen; a guard, not a pause."""
    return await asyncio.wait_for(awaitable, timeout)


async def echo(channel: grpc.aio.Channel, msg: str = "ping", **kwargs: Any) -> str:
    stub = echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
    reply = await stub.Echo(echo_pb2.EchoRequest(msg=msg), **kwargs)
    return str(reply.msg)
