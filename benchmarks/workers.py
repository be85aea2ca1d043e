"""The two benchmark processes, started by run.py (multiprocessing, "spawn").

* The **service process** hosts the services (Echo and Bench, see bench_service.py). It
  runs one grpc.aio server offering them directly *and* through a TunnelServiceHandler
  (forward tunnels), and on request dials the caller process with a ReverseTunnelServer
  offering the same services (reverse tunnels).
* The **caller process** makes every call that is measured. It runs a grpc.aio server
  with a TunnelServiceHandler that accepts those reverse tunnels, and opens one channel
  per path (see ``CHANNEL_KINDS``); the scenarios (``SCENARIOS``) run on a channel.

Both obey commands from run.py over a multiprocessing pipe: a dict ``{"cmd": ..., **kw}``
answered by ``{"ok": True, "result": ...}`` or ``{"ok": False, "error": traceback}``.
Timing happens inside the caller process; run.py reads each process's RSS from /proc.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import logging
import math
import pstats
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bench_service as bs
import grpc

from grpctunnel import (
    PendingChannel,
    ReverseTunnelServer,
    TunnelServiceHandler,
    TunnelServiceStub,
    add_TunnelServiceServicer_to_server,
)
from grpctunnel_demo.service import enable_reflection
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

SCENARIO_TIMEOUT = 240.0  # seconds; every scenario is bounded by this
OPEN_TIMEOUT = 20.0

Handler = Callable[..., Awaitable[Any]]


# -- the command loop shared by both processes ----------------------------------------


async def _command_loop(conn: Any, handlers: dict[str, Handler], ready: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(1, thread_name_prefix="bench-pipe")
    conn.send({"ok": True, "result": ready})
    try:
        while True:
            try:
                message = await loop.run_in_executor(executor, conn.recv)
            except (EOFError, OSError):
                return  # run.py went away
            cmd = message.pop("cmd")
            if cmd == "stop":
                conn.send({"ok": True, "result": None})
                return
            try:
                result = await handlers[cmd](**message)
            except Exception:
                conn.send({"ok": False, "error": traceback.format_exc()})
            else:
                conn.send({"ok": True, "result": result})
    finally:
        executor.shutdown(wait=False)


async def _gc() -> None:
    gc.collect()


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("grpctunnel").setLevel(logging.WARNING)


def _start_server(server: grpc.aio.Server) -> int:
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        raise OSError("cannot listen on 127.0.0.1")
    return port


# -- the service process ----------------------------------------------------------------


def service_main(conn: Any) -> None:
    _quiet_logs()
    asyncio.run(_service(conn))


async def _service(conn: Any) -> None:
    server = grpc.aio.server(options=bs.GRPC_OPTIONS)
    bs.register_services(server)
    # reflection, as real backends usually offer: relays (the cli path) learn from it
    # which methods are unary; the direct and tunnel paths never call it
    enable_reflection(server, [echo_pb2.DESCRIPTOR.services_by_name["Echo"]])
    handler = TunnelServiceHandler(bs.handler_options())
    bs.register_services(handler)
    add_TunnelServiceServicer_to_server(handler.service(), server)
    port = _start_server(server)
    await server.start()

    reverse: dict[str, tuple[grpc.aio.Channel, ReverseTunnelServer]] = {}

    async def open_reverse(name: str, target: str) -> None:
        channel = grpc.aio.insecure_channel(target, options=bs.GRPC_OPTIONS)
        tunnels = ReverseTunnelServer(TunnelServiceStub(channel), bs.client_options())
        bs.register_services(tunnels)
        await asyncio.wait_for(tunnels.serve(wait_for_ready=True), OPEN_TIMEOUT)
        reverse[name] = (channel, tunnels)

    async def close_reverse(name: str) -> None:
        channel, tunnels = reverse.pop(name)
        await asyncio.wait_for(tunnels.stop(), OPEN_TIMEOUT)
        await channel.close()

    try:
        await _command_loop(
            conn,
            {"open_reverse": open_reverse, "close_reverse": close_reverse, "gc": _gc},
            {"port": port},
        )
    finally:
        for name in list(reverse):
            await close_reverse(name)
        await handler.close()
        await server.stop(0)


# -- the caller process: channels ---------------------------------------------------------


class CallerState:
    def __init__(self, handler: TunnelServiceHandler) -> None:
        self.handler = handler  # accepts the reverse tunnels the service process opens
        self.channels: dict[str, tuple[grpc.aio.Channel, Callable[[], Awaitable[None]]]] = {}


async def _grpc_channel(spec: dict[str, Any], state: CallerState) -> tuple[Any, Any]:
    """A plain grpc.aio channel to ``spec["target"]`` (direct gRPC, or any proxy/CLI
    process that speaks plain gRPC on its listening side)."""
    channel = grpc.aio.insecure_channel(spec["target"], options=bs.GRPC_OPTIONS)
    await asyncio.wait_for(channel.channel_ready(), OPEN_TIMEOUT)
    return channel, channel.close


async def _forward_channel(spec: dict[str, Any], state: CallerState) -> tuple[Any, Any]:
    """A forward tunnel (PendingChannel) over a grpc channel to ``spec["target"]``."""
    raw = grpc.aio.insecure_channel(spec["target"], options=bs.GRPC_OPTIONS)
    pending = PendingChannel(TunnelServiceStub(raw), bs.client_options())
    tunnel = await pending.start(timeout=OPEN_TIMEOUT, wait_for_ready=True)

    async def close() -> None:
        await tunnel.close()
        await raw.close()

    return tunnel, close


async def _reverse_channel(spec: dict[str, Any], state: CallerState) -> tuple[Any, Any]:
    """``handler.as_channel()`` of this process's handler: calls go through the reverse
    tunnel(s) the service process opened to us."""
    channel = state.handler.as_channel()
    await asyncio.wait_for(channel.channel_ready(), OPEN_TIMEOUT)

    async def close() -> None:
        await channel.close()

    return channel, close


# Extension point (caller side): how a path's channel is made, by spec["kind"].
CHANNEL_KINDS: dict[str, Callable[[dict[str, Any], CallerState], Awaitable[tuple[Any, Any]]]] = {
    "grpc": _grpc_channel,
    "forward": _forward_channel,
    "reverse": _reverse_channel,
}


# -- the caller process: scenarios ----------------------------------------------------------

_ECHO_16 = echo_pb2.EchoRequest(msg="0123456789abcdef")  # 16-byte payload


def _percentile(sorted_ns: list[int], pct: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_ns)))
    return sorted_ns[min(rank, len(sorted_ns)) - 1] / 1e6


async def _echo_calls(stub: Any, calls: int) -> None:
    for _ in range(calls):
        await stub.Echo(_ECHO_16)


async def scenario_unary_latency(channel: Any, *, warmup: int, calls: int) -> dict[str, Any]:
    stub = echo_pb2_grpc.EchoStub(channel)
    await _echo_calls(stub, warmup)
    samples: list[int] = []
    clock = time.perf_counter_ns
    begun = clock()
    for _ in range(calls):
        started = clock()
        reply = await stub.Echo(_ECHO_16)
        samples.append(clock() - started)
        if reply.msg != _ECHO_16.msg:
            raise AssertionError("echo mismatch")
    elapsed = (clock() - begun) / 1e9
    samples.sort()
    return {
        "elapsed_s": elapsed,
        "p50_ms": _percentile(samples, 50),
        "p99_ms": _percentile(samples, 99),
        "mean_ms": sum(samples) / len(samples) / 1e6,
        "max_ms": samples[-1] / 1e6,
        "calls": calls,
    }


async def scenario_unary_throughput(
    channel: Any, *, concurrency: int, per_caller: int, warmup: int
) -> dict[str, Any]:
    stub = echo_pb2_grpc.EchoStub(channel)
    await asyncio.gather(*(_echo_calls(stub, warmup) for _ in range(concurrency)))
    started = time.perf_counter()
    await asyncio.gather(*(_echo_calls(stub, per_caller) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    total = concurrency * per_caller
    return {
        "calls_per_s": total / elapsed,
        "elapsed_s": elapsed,
        "calls": total,
        # every call made, warm-up included: what the CPU figures are divided by
        "calls_all": total + concurrency * warmup,
    }


async def _stream_once(channel: Any, count: int, size: int) -> int:
    call = channel.unary_stream(bs.STREAM_METHOD)(bs.STREAM_REQUEST.pack(count, size))
    received = 0
    async for message in call:
        received += len(message)
    return received


async def scenario_stream(channel: Any, *, count: int, size: int) -> dict[str, Any]:
    warmup = min(count, 4)
    await _stream_once(channel, warmup, size)
    started = time.perf_counter()
    received = await _stream_once(channel, count, size)
    elapsed = time.perf_counter() - started
    if received != count * size:
        raise AssertionError(f"received {received} bytes, expected {count * size}")
    return {
        "mib_per_s": received / elapsed / 2**20,
        "elapsed_s": elapsed,
        "mib": received / 2**20,
        "mib_all": (received + warmup * size) / 2**20,  # warm-up included, for CPU figures
    }


async def scenario_big_unary(channel: Any, *, small: int, large: int) -> dict[str, Any]:
    echo = channel.unary_unary(bs.ECHO_BYTES_METHOD)
    await echo(bytes(1024 * 1024))  # warm-up
    times: dict[str, float] = {}
    for key, size in (("small_s", small), ("large_s", large)):
        payload = bytes([0x5A]) * size
        started = time.perf_counter()
        reply = await echo(payload)
        times[key] = time.perf_counter() - started
        if len(reply) != size:
            raise AssertionError(f"echo of {size} bytes returned {len(reply)}")
        del payload, reply
    return {**times, "scaling": times["large_s"] / times["small_s"]}


async def scenario_streams(channel: Any, *, streams: int) -> dict[str, Any]:
    """``streams`` Chat calls open together: each does one round trip, waits until all
    have, does a second, then half-closes and reads the status."""
    stub = echo_pb2_grpc.EchoStub(channel)
    first_done = 0
    all_first = asyncio.Event()

    async def one(index: int) -> None:
        nonlocal first_done
        call = stub.Chat()
        try:
            request = echo_pb2.EchoRequest(msg=f"s{index}")
            await call.write(request)
            reply = await call.read()
            if reply.msg != request.msg:
                raise AssertionError("chat mismatch")
        finally:
            first_done += 1
            if first_done == streams:
                all_first.set()
        await all_first.wait()
        await call.write(request)
        reply = await call.read()
        if reply.index != 1:
            raise AssertionError("second reply has the wrong index")
        await call.done_writing()
        if await call.read() is not grpc.aio.EOF:
            raise AssertionError("chat did not end")
        if await call.code() != grpc.StatusCode.OK:
            raise AssertionError(f"chat ended with {await call.code()}")

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(streams)))
    elapsed = time.perf_counter() - started
    return {"time_s": elapsed, "streams": streams}


async def scenario_unary_calls(channel: Any, *, calls: int) -> dict[str, Any]:
    """Plain sequential 16-byte echo calls (the memory-growth scenario's workload)."""
    stub = echo_pb2_grpc.EchoStub(channel)
    started = time.perf_counter()
    await _echo_calls(stub, calls)
    return {"elapsed_s": time.perf_counter() - started, "calls": calls}


SCENARIOS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "unary_latency": scenario_unary_latency,
    "unary_throughput": scenario_unary_throughput,
    "stream": scenario_stream,
    "big_unary": scenario_big_unary,
    "streams": scenario_streams,
    "unary_calls": scenario_unary_calls,
}


# -- the caller process ----------------------------------------------------------------------


def _write_profile(profiler: cProfile.Profile, path: str) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)
    with open(path, "w") as f:
        f.write(out.getvalue())


def caller_main(conn: Any) -> None:
    _quiet_logs()
    asyncio.run(_caller(conn))


async def _caller(conn: Any) -> None:
    server = grpc.aio.server(options=bs.GRPC_OPTIONS)
    handler = TunnelServiceHandler(bs.handler_options())
    add_TunnelServiceServicer_to_server(handler.service(), server)
    port = _start_server(server)
    await server.start()
    state = CallerState(handler)

    async def open_channel(name: str, spec: dict[str, Any]) -> None:
        state.channels[name] = await CHANNEL_KINDS[spec["kind"]](spec, state)

    async def close_channel(name: str) -> None:
        _, close = state.channels.pop(name)
        await asyncio.wait_for(close(), OPEN_TIMEOUT)

    async def run(
        name: str, scenario: str, params: dict[str, Any], profile: str | None = None
    ) -> dict[str, Any]:
        channel, _ = state.channels[name]
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        try:
            return await asyncio.wait_for(SCENARIOS[scenario](channel, **params), SCENARIO_TIMEOUT)
        finally:
            if profiler is not None and profile is not None:
                profiler.disable()
                _write_profile(profiler, profile)

    try:
        await _command_loop(
            conn,
            {"open": open_channel, "close": close_channel, "run": run, "gc": _gc},
            {"port": port},
        )
    finally:
        for name in list(state.channels):
            try:
                await close_channel(name)
            except Exception:
                pass
        await handler.close()
        await server.stop(0)
