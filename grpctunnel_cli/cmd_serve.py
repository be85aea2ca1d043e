"""The `serve` command: a tunnel server that is also a gateway to exposed services."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated

import grpc
import typer

from grpctunnel_cli.command import VerboseOption, run
from grpctunnel_cli.errors import CliError
from grpctunnel_cli.logs import setup_logging
from grpctunnel_cli.render import Renderer

__all__ = ["serve"]

log = logging.getLogger("grpctunnel")

MIB = 1024 * 1024


def serve(
    port: Annotated[
        int, typer.Option("--port", "-p", min=0, max=65535, help="Port to listen on; 0 picks one.")
    ] = 50051,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    grace: Annotated[
        float,
        typer.Option(
            "--grace", min=0, help="On Ctrl-C or SIGTERM, seconds to let calls in flight finish."
        ),
    ] = 10.0,
    max_message_mib: Annotated[
        int, typer.Option("--max-message-mib", min=1, help="Largest message relayed, in MiB.")
    ] = 64,
    verbose: VerboseOption = False,
) -> None:
    """Run a tunnel server: accepts forward and reverse tunnels, and routes calls for
    services exposed through reverse tunnels (`grpctunnel expose`) to them. Serves
    reflection (merged across every exposed backend) and health."""
    renderer = Renderer()
    setup_logging(verbose)

    async def body() -> int:
        from grpctunnel.gateway import Gateway
        from grpctunnel.options import TunnelServiceHandlerOptions

        limit = max_message_mib * MIB

        def observe(method: str, code: grpc.StatusCode, seconds: float) -> None:
            log.debug("call %s %s %.1f ms", method, code.name, seconds * 1000)

        gateway = Gateway(
            TunnelServiceHandlerOptions(
                max_receive_message_length=limit, max_send_message_length=limit
            ),
            observer=observe,
        )
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ]
        )
        gateway.attach(server)
        address = (
            f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        )
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise CliError(
                f"cannot listen on {host}:{port}: the port is in use or the address is not this host's"
            )
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        shown = f"[{host}]" if ":" in host else host
        log.info("tunnel server listening on %s:%d", shown, bound)
        try:
            await stop.wait()
        finally:
            log.info("shutting down: letting calls in flight finish (up to %gs)", grace)
            await gateway.shutdown(grace)
            await server.stop(1.0)
            log.info("stopped")
        return 0

    run(body, renderer)
