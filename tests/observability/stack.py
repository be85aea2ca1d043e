"""What the observability tests share: scraping /metrics, a demo backend's stubs, and an
in-process backend whose health the test switches."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from prometheus_client.parser import text_string_to_metric_families
from security.procs import Proc

from grpctunnel.admin.v1 import admin_pb2_grpc
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

ECHO = "grpctunnel.demo.v1.Echo"
WHO = "obs.v1.Who"
METRICS_AT = r"metrics at (http://\S+/metrics)"

Labels = frozenset[tuple[str, str]]


@dataclass
class Samples:
    """One scrape: sample name -> labels -> value."""

    values: dict[str, dict[Labels, float]] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> float:
        """The value of the sample with exactly these labels (0 when absent)."""
        return self.values.get(name, {}).get(frozenset(labels.items()), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples whose labels include these."""
        wanted = set(labels.items())
        return sum(v for k, v in self.values.get(name, {}).items() if wanted <= k)

    def label_values(self) -> set[str]:
        return {value for samples in self.values.values() for key in samples for _, value in key}

    def series(self, name: str) -> list[dict[str, str]]:
        return [dict(key) for key in self.values.get(name, {})]


async def scrape(url: str) -> Samples:
    """GETs ``url`` (a /metrics) and parses the Prometheus text."""

    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(get)
    samples = Samples()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = frozenset(sample.labels.items())
            samples.values.setdefault(sample.name, {})[key] = sample.value
    return samples


async def metrics_url(proc: Proc, after: int = 0) -> str:
    found = await proc.wait_for(METRICS_AT, after=after)
    return found.group(1)


@asynccontextmanager
async def echo_stub(address: str) -> AsyncIterator[echo_pb2_grpc.EchoStub]:
    channel = grpc.aio.insecure_channel(address)
    try:
        yield echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
    finally:
        await channel.close(None)


@asynccontextmanager
async def admin_stub(address: str) -> AsyncIterator[admin_pb2_grpc.AdminStub]:
    channel = grpc.aio.insecure_channel(address)
    try:
        yield admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
    finally:
        await channel.close(None)


def size(message: object) -> int:
    return len(message.SerializeToString())  # type: ignore[attr-defined]


def echo_request(text: str) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(msg=text)


class WhoBackend:
    """A backend serving ``obs.v1.Who/Name`` (answers its own name) and the standard
    health service, whose status of ``obs.v1.Who`` the test sets. No reflection: expose
    it with ``--service obs.v1.Who``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health = HealthServicer()
        self.server = grpc.aio.server()
        self.address = ""

    async def start(self) -> WhoBackend:
        async def answer(request: bytes, context: object) -> bytes:
            return self.name.encode()

        handler = grpc.method_handlers_generic_handler(
            WHO, {"Name": grpc.unary_unary_rpc_method_handler(answer)}
        )
        self.server.add_generic_rpc_handlers((handler,))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.address = f"127.0.0.1:{port}"
        await self.set(health_pb2.HealthCheckResponse.SERVING)
        return self

    async def set(self, status: int) -> None:
        await self.health.set(WHO, status)

    async def stop(self) -> None:
        await self.server.stop(None)


async def who(channel: grpc.aio.Channel) -> str:
    answer = await channel.unary_unary(f"/{WHO}/Name")(b"", timeout=10)
    return bytes(answer).decode()
