"""max_concurrent_streams: calls beyond the limit on one tunnel fail with
RESOURCE_EXHAUSTED; the others, and later calls, are unaffected."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from grpctunnel import TunnelOptions
from grpctunnel.testing import TunnelPair
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc


class Gate(echo_pb2_grpc.EchoServicer):
    def __init__(self) -> None:
        self.entered = 0
        self.both_in = asyncio.Event()
        self.release = asyncio.Event()

    async def Echo(self, request: Any, context: Any) -> Any:
        self.entered += 1
        if self.entered == 2:
            self.both_in.set()
        if request.msg == "wait":
            await self.release.wait()
        return echo_pb2.EchoReply(msg=request.msg)


async def test_calls_beyond_the_limit_are_refused() -> None:
    gate = Gate()
    async with TunnelPair(TunnelOptions(max_concurrent_streams=2)) as pair:
        echo_pb2_grpc.add_EchoServicer_to_server(gate, pair.server)
        stub = echo_pb2_grpc.EchoStub(pair.channel)
        first = stub.Echo(echo_pb2.EchoRequest(msg="wait"), timeout=10)
        second = stub.Echo(echo_pb2.EchoRequest(msg="wait"), timeout=10)
        await asyncio.wait_for(gate.both_in.wait(), 10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Echo(echo_pb2.EchoRequest(msg="third"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many concurrent streams" in (refused.value.details() or "")
        gate.release.set()
        assert (await first).msg == "wait" and (await second).msg == "wait"
        assert (await stub.Echo(echo_pb2.EchoRequest(msg="later"), timeout=10)).msg == "later"
