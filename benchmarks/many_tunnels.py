#!/usr/bin/env python
"""One gateway, many tunnels: the call rate through `grpctunnel serve` with 10, 1,000 and
10,000 reverse tunnels open, pinned and unpinned, and what the tunnels cost.

    python benchmarks/many_tunnels.py [--tunnels 10,1000,10000] [--seconds 5]
                                      [--concurrency 32] [--json PATH]

Three processes: a real `grpctunnel serve`; a *fleet* process (this script with
``--fleet``) that opens N reverse tunnels to it as fast as it can, each announcing its
own name (``dev-<i>``) and one service, as N devices would; and this process, the
caller, which times calls through serve for a fixed time: unpinned (any tunnel of the
service, in turn) and pinned (``grpctunnel-tunnel: dev-<random i>``). For each N it
reports the time to open the tunnels, calls/s and p50 latency of both kinds (and their
ratio to N = the first, smallest count), and the memory of serve per idle tunnel (its
resident memory after opening them, less before, over N). The fleet serves every call
itself, so the same work is done at every N: a ratio below 1 is what routing among more
tunnels costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import grpc  # noqa: E402
from paths import grpctunnel_command, rss_bytes  # noqa: E402
from profile_path import cpu_seconds  # noqa: E402

FLEET_SERVICE = "grpctunnel.bench.v1.Fleet"
METHOD = f"/{FLEET_SERVICE}/Ping"
TUNNELS_PER_CONNECTION = 500  # reverse tunnels sharing one HTTP/2 connection
PIN = "grpctunnel-tunnel"


# -- the fleet process ----------------------------------------------------------------------


async def _fleet(address: str, count: int) -> None:
    """Opens ``count`` reverse tunnels to ``address`` and serves Ping on each; prints
    "opened N in S s" once all are up, then serves until its stdin closes."""
    from grpctunnel import ReverseTunnelServer, TunnelClientOptions, TunnelServiceStub
    from grpctunnel.gateway import announce_metadata

    async def ping(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        FLEET_SERVICE, {"Ping": grpc.unary_unary_rpc_method_handler(ping)}
    )
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, -(-count // TUNNELS_PER_CONNECTION)))
    ]
    servers = []
    started = time.perf_counter()

    async def open_one(i: int) -> None:
        channel = channels[i // TUNNELS_PER_CONNECTION]
        server = ReverseTunnelServer(
            TunnelServiceStub(channel),  # type: ignore[no-untyped-call]
            TunnelClientOptions(metadata=announce_metadata(f"dev-{i}", [FLEET_SERVICE])),
        )
        server.add_generic_rpc_handlers((handler,))
        await server.serve(timeout=120)
        servers.append(server)

    semaphore = asyncio.Semaphore(256)

    async def bounded(i: int) -> None:
        async with semaphore:
            await open_one(i)

    await asyncio.gather(*(bounded(i) for i in range(count)))
    print(f"opened {count} in {time.perf_counter() - started:.3f} s", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(s.stop() for s in servers), return_exceptions=True)
    for channel in channels:
        await channel.close()


# -- the caller -----------------------------------------------------------------------------


def _settle(pid: int, limit: float = 120.0) -> None:
    """Waits (at most ``limit`` seconds) until process ``pid`` is nearly idle: what a
    tunnel's first call sets going in the gateway (learning its backend's method kinds
    and health, once per tunnel) has finished, so that the figures are those of a fleet
    in its steady state."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        if cpu_seconds(pid) - before < 0.05:
            return


async def _time_calls(
    address: str, seconds: float, concurrency: int, tunnels: int, pinned: bool, serve_pid: int
) -> dict[str, float]:
    channel = grpc.aio.insecure_channel(address)
    ping: Any = channel.unary_unary(METHOD)
    latencies: list[float] = []
    deadline = 0.0  # set once warmed up
    rng = random.Random(7)

    async def caller() -> None:
        while time.perf_counter() < deadline:
            metadata = ((PIN, f"dev-{rng.randrange(tunnels)}"),) if pinned else None
            begun = time.perf_counter()
            await ping(b"x" * 16, metadata=metadata, timeout=30)
            latencies.append(time.perf_counter() - begun)

    # warm up: a tunnel's first call makes the gateway ask it (once) for its method
    # kinds; the steady state of a fleet is every tunnel already asked
    warm = asyncio.Semaphore(64)

    async def first_call(i: int) -> None:
        async with warm:
            await ping(b"", metadata=((PIN, f"dev-{i}"),), timeout=30)

    await asyncio.gather(*(first_call(i) for i in range(tunnels)))
    await asyncio.to_thread(_settle, serve_pid)
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await channel.close()
    return {
        "calls_per_second": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "calls": len(latencies),
    }


def _start_serve(logs: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = logs / "serve.log"
    process = subprocess.Popen(
        [*grpctunnel_command(), "serve", "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"tunnel server listening on (\S+:\d+)", log.read_text(errors="replace"))
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"serve exited: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    raise TimeoutError("serve did not start")


def measure(tunnels: int, seconds: float, concurrency: int) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="bench-many-"))
    serve, address = _start_serve(logs)
    fleet = None
    try:
        before = rss_bytes(serve.pid)
        fleet = subprocess.Popen(
            [sys.executable, __file__, "--fleet", address, str(tunnels)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert fleet.stdout is not None
        line = fleet.stdout.readline()
        found = re.match(r"opened \d+ in ([\d.]+) s", line)
        if not found:
            raise RuntimeError(f"fleet did not open its tunnels: {line!r}")
        open_seconds = float(found.group(1))
        after = rss_bytes(serve.pid)
        unpinned = asyncio.run(
            _time_calls(address, seconds, concurrency, tunnels, False, serve.pid)
        )
        pinned = asyncio.run(_time_calls(address, seconds, concurrency, tunnels, True, serve.pid))
        return {
            "tunnels": tunnels,
            "open_seconds": open_seconds,
            "serve_kib_per_tunnel": (after - before) / tunnels / 1024,
            "unpinned": unpinned,
            "pinned": pinned,
        }
    finally:
        if fleet is not None:
            fleet.communicate(timeout=120)
        serve.terminate()
        serve.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fleet", nargs=2, metavar=("ADDRESS", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--tunnels", default="10,1000,10000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "many_tunnels.json")
    ns = parser.parse_args(argv)
    if ns.fleet:
        # the fleet stands for N devices, each its own process: its one process holding
        # all N tunnels tunes its collector as serve does (grpctunnel.collector)
        from grpctunnel.collector import tune_for_many_tunnels

        tune_for_many_tunnels()
        asyncio.run(_fleet(ns.fleet[0], int(ns.fleet[1])))
        return 0
    results = [
        measure(int(n), ns.seconds, ns.concurrency) for n in ns.tunnels.split(",") if n.strip()
    ]
    base = results[0]
    print(
        f"{'tunnels':>8} {'open s':>8} {'KiB/tunnel':>10} "
        f"{'unpinned/s':>11} {'ratio':>6} {'p50 ms':>7} {'pinned/s':>9} {'ratio':>6} {'p50 ms':>7}"
    )
    for r in results:
        u, p = r["unpinned"], r["pinned"]
        r["unpinned_ratio"] = u["calls_per_second"] / base["unpinned"]["calls_per_second"]
        r["pinned_ratio"] = p["calls_per_second"] / base["pinned"]["calls_per_second"]
        print(
            f"{r['tunnels']:>8} {r['open_seconds']:>8.2f} {r['serve_kib_per_tunnel']:>10.1f} "
            f"{u['calls_per_second']:>11.0f} {r['unpinned_ratio']:>6.2f} {u['p50_ms']:>7.2f} "
            f"{p['calls_per_second']:>9.0f} {r['pinned_ratio']:>6.2f} {p['p50_ms']:>7.2f}"
        )
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
