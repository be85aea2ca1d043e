"""What a cluster of `grpctunnel serve --cluster` nodes costs and how fast it heals.

Starts a `redis-server` of its own on a free loopback port, three `serve --cluster` nodes, a
demo backend and `expose` processes, then measures:

* **convergence**: a tunnel opened on node 3 -> routable on node 1 (the two nodes' log
  lines, same clock, millisecond stamps), over several tunnels;
* **relay cost**: unary Echo calls made on a node that holds the tunnel and on another
  node (which relays each call to it over its node-to-node tunnel): calls/s with 16 calls
  in flight, and the median latency of calls made one at a time; two nodes of their own,
  without -v (a log line per call, read by this process, would weigh on the timing);
* **failover**: node 3, holding the tunnel of an `expose --to node3 --to node1`, killed
  (SIGKILL) -> the first call on node 1 pinned to that tunnel that succeeds again; and ->
  node 2 dropping node 3 from its view (heartbeat expiry).

    .venv/bin/python benchmarks/cluster.py [--calls 3000] [--json PATH]

Needs `redis-server` on PATH (scripts/ensure-redis installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

GRPCTUNNEL = Path(sys.executable).parent / "grpctunnel"
TOKEN = "benchmark-cluster-token"
PIN = "grpctunnel-tunnel"  # calls pinned to one tunnel name (grpctunnel.gateway.PIN_HEADER)
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose output lines are kept, each with when it was read."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(line.decode(errors="replace").rstrip())
            self._changed.set()

    async def wait_for(self, pattern: str, after: int = 0, timeout: float = 20.0) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = after
        while True:
            for line in self.lines[seen:]:
                if regex.search(line):
                    return line
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no /{pattern}/:\n" + "\n".join(self.lines[-20:]))
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        self._reader.cancel()


async def spawn(name: str, *argv: str) -> Proc:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPCTUNNEL_")}
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    return Proc(name, process)


def stamp(line: str) -> float:
    found = STAMP.match(line)
    assert found is not None, line
    return datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


async def node(redis_url: str, name: str, *, verbose: bool = True) -> tuple[Proc, str]:
    """`serve --cluster`; with ``verbose``, its -v log (the view's events, but also a line
    per relayed call, which this process reads: not for timing calls)."""
    proc = await spawn(
        name,
        str(GRPCTUNNEL),
        "serve",
        "--port",
        "0",
        "--cluster",
        redis_url,
        "--cluster-token",
        TOKEN,
        *(["-v"] if verbose else []),
    )
    line = await proc.wait_for(r"tunnel server listening on (127\.0\.0\.1:\d+)")
    found = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
    assert found is not None
    return proc, found.group(1)


async def calls(address: str, count: int, concurrency: int) -> tuple[float, float]:
    """calls/s of ``count`` unary calls with ``concurrency`` in flight, and their p50 (ms)."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        await stub.Echo(echo_pb2.EchoRequest(msg="warm"), timeout=10)
        left = count

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                started = time.perf_counter()
                await stub.Echo(echo_pb2.EchoRequest(msg="x" * 32), timeout=10)
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return count / elapsed, statistics.median(latencies) * 1000


async def routed(address: str, pin: str | None = None, timeout: float = 20.0) -> None:
    """Waits until a call through ``address`` (pinned to tunnel ``pin``, if given)
    succeeds: its node routes to the tunnel."""
    metadata = ((PIN, pin),) if pin else None
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        while True:
            try:
                await stub.Echo(echo_pb2.EchoRequest(msg="ready"), metadata=metadata, timeout=2)
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)  # the polling cadence, bounded by the deadline


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--tunnels", type=int, default=5, help="tunnels timed for convergence")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the relay cost")
    parser.add_argument("--json", type=Path, default=None)
    ns = parser.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not on PATH (scripts/ensure-redis installs it)")
    port = free_port()
    procs: list[Proc] = []
    results: dict[str, Any] = {}
    try:
        redis = await spawn(
            "redis", redis_server, "--port", str(port), "--save", "", "--appendonly", "no"
        )
        procs.append(redis)
        await redis.wait_for("Ready to accept connections")
        url = f"redis://127.0.0.1:{port}/0"
        started = await asyncio.gather(*(node(url, f"node{i + 1}") for i in range(3)))
        (n1, a1), (n2, _), (n3, a3) = started
        procs += [n1, n2, n3]
        backend = await spawn(str(GRPCTUNNEL), str(GRPCTUNNEL), "demo-backend", "--port", "0")
        procs.append(backend)
        line = await backend.wait_for(r"demo backend listening on 127\.0\.0\.1:\d+")
        backend_address = re.findall(r"127\.0\.0\.1:\d+", line)[0]

        # convergence: tunnel opened on node 3 -> routable on node 1
        delays = []
        for i in range(ns.tunnels):
            name = f"conv-{i}"
            mark1, mark3 = len(n1.lines), len(n3.lines)
            exposer = await spawn(
                "expose",
                str(GRPCTUNNEL),
                *("expose", backend_address, "--to", a3, "--name", name),
            )
            procs.append(exposer)
            opened = await n3.wait_for(rf"tunnel opened: {name} from", after=mark3)
            routable = await n1.wait_for(rf"routable here: tunnel '{name}'", after=mark1)
            delays.append((stamp(routable) - stamp(opened)) * 1000)
            await exposer.kill()
        results["convergence_ms"] = {
            "median": statistics.median(delays),
            "max": max(delays),
            "samples": [round(d, 1) for d in delays],
        }
        print(f"convergence (node 3 open -> node 1 routable): {results['convergence_ms']}")

        # relay cost: on the node holding the tunnel vs relayed by another node, on two
        # nodes of their own without -v (as deployed: no line per call, which this
        # process would read while it times the calls), runs alternating, medians
        (h, ah), (r, ar) = await asyncio.gather(
            node(url, "holding", verbose=False), node(url, "relaying", verbose=False)
        )
        procs += [h, r]
        exposer = await spawn(
            "expose", str(GRPCTUNNEL), "expose", backend_address, "--to", ah, "--name", "bench",
        )  # fmt: skip
        procs.append(exposer)
        await routed(ar)
        runs: dict[str, list[tuple[float, float]]] = {"holding": [], "relaying": []}
        for _ in range(ns.repeat):
            for label, address in (("holding", ah), ("relaying", ar)):
                rate, _ = await calls(address, ns.calls, 16)
                _, p50 = await calls(address, max(300, ns.calls // 3), 1)
                runs[label].append((rate, p50))
        relay: dict[str, Any] = {}
        for label, measured in runs.items():
            rate = statistics.median(m[0] for m in measured)
            p50 = statistics.median(m[1] for m in measured)
            relay[label] = {"calls_per_s": round(rate), "p50_ms": round(p50, 3)}
            print(
                f"{label} node: {rate:.0f} calls/s (16 in flight), p50 {p50:.2f} ms "
                f"(one at a time), medians of {ns.repeat}"
            )
        hold, hop = relay["holding"], relay["relaying"]
        relay["hop_latency_ratio"] = round(hop["p50_ms"] / hold["p50_ms"], 2)
        relay["hop_throughput_ratio"] = round(hop["calls_per_s"] / hold["calls_per_s"], 2)
        print(
            f"the extra hop: p50 x{relay['hop_latency_ratio']} (target <= 1.5), "
            f"throughput x{relay['hop_throughput_ratio']} (target >= 0.7)"
        )
        results["relay"] = relay

        # failover: an exposer given node 3, then node 1; kill node 3; first successful
        # call on node 1; node 2 drops node 3
        mover = await spawn(
            "expose", str(GRPCTUNNEL), "expose", backend_address, "--to", a3, "--to", a1,
            "--name", "mover", "--max-backoff", "1",
        )  # fmt: skip
        procs.append(mover)
        await mover.wait_for(rf"connected to {re.escape(a3)}")
        await routed(a1, pin="mover")
        mark2 = len(n2.lines)
        killed = time.monotonic()
        await n3.kill()
        recovered = None
        failures = 0
        async with grpc.aio.insecure_channel(a1) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            for _ in range(2000):  # bounded: 2000 x 10 ms = 20 s at most
                try:
                    await stub.Echo(
                        echo_pb2.EchoRequest(msg="again"), metadata=((PIN, "mover"),), timeout=1
                    )
                    recovered = time.monotonic() - killed
                    break
                except grpc.aio.AioRpcError:
                    failures += 1
                    await asyncio.sleep(0.01)  # the retry cadence of this measurement
        await n2.wait_for(r"cluster: node \w+ .* left: sent no heartbeat", after=mark2)
        dropped = time.monotonic() - killed
        results["failover_s"] = {
            "calls_succeed_again_on_node_1": round(recovered or -1, 3),
            "failed_calls_meanwhile": failures,
            "node_3_dropped_from_node_2_view": round(dropped, 3),
        }
        print(f"failover: {results['failover_s']}")
    finally:
        await asyncio.gather(*(p.kill() for p in procs), return_exceptions=True)
    if ns.json is not None:
        ns.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
