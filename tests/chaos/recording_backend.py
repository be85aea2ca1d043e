"""A backend that records what it applied: the demo Echo service (with reflection, so that
`expose` finds it), run as its own process, that appends one line per request message it
applies to a file: the message (a request id, ``req-<n>`` or ``req-<n>.<k>``) and
``time.monotonic()`` when it applied it. CLOCK_MONOTONIC is one clock for every process of
the machine, so the chaos test compares these times with those of its own caller.

Each line is one ``os.write`` to a file opened with O_APPEND: it is in the file as soon as
it is applied, even if the process is SIGKILLed right after, and a restarted backend
appends to the same file.

    python recording_backend.py --port PORT --record FILE

binds 127.0.0.1:PORT without SO_REUSEPORT (a restart binds the same port again; a second
backend on it fails) and prints ``recording backend listening on 127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from grpctunnel_demo.service import ECHO_SERVICE, EchoServicer, enable_reflection
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc


class RecordingEcho(EchoServicer):
    """The demo Echo, recording every request message as it applies it."""

    def __init__(self, record: str) -> None:
        self._fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def applied(self, msg: str) -> None:
        os.write(self._fd, f"{msg} {time.monotonic():.6f}\n".encode())

    async def _recorded(
        self, requests: AsyncIterator[echo_pb2.EchoRequest]
    ) -> AsyncIterator[echo_pb2.EchoRequest]:
        async for request in requests:
            self.applied(request.msg)
            yield request

    async def Echo(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoReply:
        self.applied(request.msg)
        return await super().Echo(request, context)

    async def Expand(
        self, request: echo_pb2.ExpandRequest, context: Any
    ) -> AsyncIterator[echo_pb2.EchoReply]:
        self.applied(request.msg)
        async for reply in super().Expand(request, context):
            yield reply

    async def Collect(
        self, request_iterator: AsyncIterator[echo_pb2.EchoRequest], context: Any
    ) -> echo_pb2.EchoReply:
        return await super().Collect(self._recorded(request_iterator), context)

    async def Chat(
        self, request_iterator: AsyncIterator[echo_pb2.EchoRequest], context: Any
    ) -> AsyncIterator[echo_pb2.EchoReply]:
        async for reply in super().Chat(self._recorded(request_iterator), context):
            yield reply


async def serve(port: int, record: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    echo_pb2_grpc.add_EchoServicer_to_server(RecordingEcho(record), server)  # type: ignore[no-untyped-call]
    enable_reflection(server, [ECHO_SERVICE])
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    await server.start()
    print(f"recording backend listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.record))


if __name__ == "__main__":
    main()
