"""The `demo` command: the whole path in one process, for a first look.

It starts a tunnel server, the built-in echo backend, exposes the backend through a
reverse tunnel, then calls it through the server every way there is, printing each step
and the commands that do the same by hand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated

import grpc
import typer
from rich.console import Console

from grpctunnel_cli.command import run
from grpctunnel_cli.render import Renderer

__all__ = ["demo"]


def demo(
    calls: Annotated[
        int,
        typer.Option(
            "--calls", min=1, max=100_000, metavar="N", help="How many unary calls to time."
        ),
    ] = 200,
) -> None:
    """See it work: server, backend and exposer in one process.

    Runs a tunnel server, the demo backend and an exposer in this process, calls the
    backend through the tunnel with every kind of call, and shows the commands that do
    the same by hand.
    """
    renderer = Renderer()
    console = Console(highlight=False)
    logging.getLogger("grpctunnel").setLevel(logging.WARNING)

    async def body() -> int:
        from grpctunnel import PendingChannel, TunnelServiceStub
        from grpctunnel.gateway import GatewayServer
        from grpctunnel.gateway.exposer import ExposeConfig, Exposer
        from grpctunnel_demo.service import start_demo_backend
        from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

        def step(text: str) -> None:
            console.print(f"[bold cyan]▸[/] {text}")

        def result(text: str) -> None:
            console.print(f"    [green]{text}[/]")

        backend, backend_port = await start_demo_backend()
        step(f"demo backend (grpctunnel.demo.v1.Echo) listening on 127.0.0.1:{backend_port}")

        gateway_server = GatewayServer()
        gateway = gateway_server.gateway
        port = await gateway_server.start()
        step(f"tunnel server listening on 127.0.0.1:{port}")

        exposer = Exposer(
            ExposeConfig(
                backend=f"127.0.0.1:{backend_port}", server=f"127.0.0.1:{port}", name="demo"
            )
        )
        exposing = asyncio.ensure_future(exposer.run())
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            await asyncio.wait_for(gateway.handler.as_channel().channel_ready(), 15)
            step("backend exposed through a reverse tunnel named 'demo'")
            exposed = gateway.exposed()
            result(
                "server now routes: "
                + ", ".join(f"{s} → {', '.join(n)}" for s, n in exposed.items())
            )

            stub = echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
            step("unary call Echo through the server (caller → server → reverse tunnel → backend)")
            reply = await stub.Echo(
                echo_pb2.EchoRequest(msg="hello through the tunnel"), timeout=10
            )
            result(f"reply: {reply.msg!r}")

            step("server-streaming call Expand")
            async for r in stub.Expand(echo_pb2.ExpandRequest(msg="tick", count=3), timeout=10):
                result(f"reply {r.index}: {r.msg!r}")

            step("client-streaming call Collect")

            async def words() -> AsyncIterator[echo_pb2.EchoRequest]:
                for w in ("one", "call,", "many", "messages"):
                    yield echo_pb2.EchoRequest(msg=w)

            reply = await stub.Collect(words(), timeout=10)
            result(f"reply: {reply.msg!r}")

            step("bidirectional call Chat")
            chat = stub.Chat(timeout=10)
            for w in ("ping", "pong"):
                await chat.write(echo_pb2.EchoRequest(msg=w))
                r = await chat.read()
                result(f"sent {w!r}, got {r.msg!r}")
            await chat.done_writing()

            step("an error status crosses the tunnel intact")
            try:
                await stub.Echo(
                    echo_pb2.EchoRequest(msg="error:NOT_FOUND:no such thing"), timeout=10
                )
            except grpc.aio.AioRpcError as e:
                result(f"{e.code().name}: {e.details()}")

            step(
                "the same call through a forward tunnel (caller → forward tunnel → server → reverse tunnel)"
            )
            forward = await PendingChannel(TunnelServiceStub(channel)).start(timeout=10)  # type: ignore[no-untyped-call]
            forward_stub = echo_pb2_grpc.EchoStub(forward)  # type: ignore[no-untyped-call]
            reply = await forward_stub.Echo(
                echo_pb2.EchoRequest(msg="via both tunnels"), timeout=10
            )
            result(f"reply: {reply.msg!r}")
            await forward.close()

            step(f"{calls} unary calls, 16 at a time")
            started = time.perf_counter()
            semaphore = asyncio.Semaphore(16)

            async def one() -> None:
                async with semaphore:
                    await stub.Echo(echo_pb2.EchoRequest(msg="x" * 16), timeout=10)

            await asyncio.gather(*(one() for _ in range(calls)))
            elapsed = time.perf_counter() - started
            result(f"{calls / elapsed:,.0f} calls/s through the tunnel")

            console.print()
            console.print("[bold]Try it by hand, in three terminals:[/]")
            console.print("    grpctunnel demo-backend --port 9000")
            console.print("    grpctunnel serve --port 50051")
            console.print("    grpctunnel expose localhost:9000 --to localhost:50051")
            console.print("[bold]then:[/]")
            console.print('    grpctunnel call Echo/Echo \'{"msg":"hi"}\'')
            console.print("[bold green]✓ demo complete[/]")
            return 0
        finally:
            exposer.stop()
            await asyncio.gather(exposing, return_exceptions=True)
            await channel.close(None)
            await gateway_server.stop()
            await backend.stop(0.5)

    run(body, renderer)
