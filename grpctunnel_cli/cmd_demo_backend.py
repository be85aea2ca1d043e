"""The `demo-backend` command: serve the demo Echo service (with reflection and health)."""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated

import typer

from grpctunnel_cli.command import run
from grpctunnel_cli.errors import CliError
from grpctunnel_cli.render import Renderer

__all__ = ["demo_backend"]

_STOP_GRACE = 1.0


def demo_backend(
    port: Annotated[
        int, typer.Option("--port", "-p", min=0, max=65535, help="Port to listen on; 0 picks one.")
    ] = 9000,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Serve the demo Echo service, with reflection and health, until interrupted."""
    renderer = Renderer()

    async def body() -> int:
        # Imported here so that other commands do not load the tunnel library for nothing.
        from grpctunnel_demo.service import start_demo_backend

        try:
            server, bound = await start_demo_backend(host, port)
        except (OSError, RuntimeError):
            # grpc's own message says no more than this (and to set GRPC_VERBOSITY=debug).
            raise CliError(
                f"cannot listen on {host}:{port}: the port is in use or the address is not "
                "one of this host's (GRPC_VERBOSITY=debug shows grpc's reason)"
            ) from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop.set)
            except (NotImplementedError, RuntimeError):  # not on this platform
                pass
        shown_host = f"[{host}]" if ":" in host else host
        renderer.info(
            f"demo backend listening on {shown_host}:{bound} "
            "(grpctunnel.demo.v1.Echo, reflection, health); Ctrl-C to stop"
        )
        try:
            await stop.wait()
        finally:
            await server.stop(_STOP_GRACE)
        return 0

    run(body, renderer)
