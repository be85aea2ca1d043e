"""Real processes for the cluster tests: `redis-server` on a free loopback port, `grpctunnel
serve --cluster` nodes, a demo backend, `expose`; each read line by line as it prints
(waited on for a line, never for a fixed time), and every one killed when the test ends."""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import dataclass

import grpc
import pytest
from support.launcher import LISTENING, Launcher, free_port, no_traceback
from support.processes import Proc

JOINED = r"cluster: joined as node (\w+)"
CLUSTER_TOKEN = "cluster-secret-for-tests"
ECHO = "grpctunnel.demo.v1.Echo"

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (scripts/ensure-redis installs it)",
)


@dataclass
class Node:
    """One `serve --cluster` process."""

    proc: Proc
    address: str
    id: str

    def mark(self) -> int:
        return self.proc.mark()

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.address)


class Fleet(Launcher):
    """Starts the processes of one test (a Redis of its own among them), and kills them
    all at its end."""

    def __init__(self) -> None:
        super().__init__()
        self.redis_port = free_port()
        self.redis: Proc | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    async def start_redis(self) -> Proc:
        """`redis-server` on this fleet's port (the same one each time), persistence off."""
        assert REDIS_SERVER is not None
        self.redis = await self.spawn(
            "redis-server",
            REDIS_SERVER,
            "--port",
            str(self.redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        )
        await self.redis.wait_for(r"Ready to accept connections")
        return self.redis

    async def node(self, *extra: str, port: int = 0, **env: str) -> Node:
        """`serve --cluster` on ``port`` (0: a free one); returned once it joined and
        listens."""
        proc = await self.start(
            "serve",
            "--port",
            str(port),
            "--cluster",
            self.redis_url,
            "--cluster-token",
            CLUSTER_TOKEN,
            "-v",
            *extra,
            **env,
        )
        address = (await proc.wait_for(LISTENING)).group(1)
        found = re.search(JOINED, proc.output) or re.search(r"node (\w+) \(advertised", proc.output)
        assert found is not None, proc.output
        return Node(proc, address, found.group(1))

    async def nodes(self, n: int, *extra: str) -> list[Node]:
        return list(await asyncio.gather(*(self.node(*extra) for _ in range(n))))

    async def expose(self, backend: str, name: str, *to: Node, extra: tuple[str, ...] = ()) -> Proc:
        """`expose BACKEND --to ...` as NAME; returned once its first tunnel is up."""
        targets = [arg for node in to for arg in ("--to", node.address)]
        proc = await self.start(
            "expose", backend, *targets, "--name", name, "--max-backoff", "1", "-v", *extra
        )
        await proc.wait_for(rf"tunnel \d+ connected to .* as '{re.escape(name)}'")
        return proc


async def routable(node: Node, name: str, *, after: int = 0, timeout: float = 10.0) -> None:
    """Waits until ``node`` routes to tunnel ``name``: its own, or another node's."""
    pattern = (
        rf"(tunnel opened: {re.escape(name)} from|cluster: routable here: tunnel "
        rf"'{re.escape(name)}')"
    )
    await node.proc.wait_for(pattern, after=after, timeout=timeout)


__all__ = [
    "CLUSTER_TOKEN",
    "ECHO",
    "Fleet",
    "Node",
    "free_port",
    "needs_redis",
    "no_traceback",
    "routable",
]
