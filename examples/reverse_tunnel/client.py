"""Reverse tunnel example: the client.

Hosts the Echo service and opens a reverse tunnel to the server, which then calls
that service through the tunnel: the client dials out, yet it is the one answering
calls (handy behind NAT or a firewall).

The client stays up, answering calls, until the tunnel closes (the server stopped or
went away) or until Ctrl+C / SIGTERM; either way it exits 0. It exits 1 when it cannot
open the tunnel. ``--host``, ``--port`` or ``GRPCTUNNEL_EXAMPLE_PORT`` point it
elsewhere than localhost:50051.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

# Importing echo_pb2 also puts test.EchoService in the protobuf descriptor pool, where
# register_service() finds the message types.
import echo_pb2
import echo_pb2_grpc
import grpc

from grpctunnel import ReverseTunnelServer, TunnelServiceStub

DEFAULT_PORT = 50051
OPEN_TIMEOUT = 10.0  # seconds

logger = logging.getLogger("reverse_tunnel.client")


class EchoService(echo_pb2_grpc.EchoServiceServicer):
    """The service this client offers to the server."""

    async def Echo(self, request, context):
        logger.info("Client received request: %s", request.message)
        return echo_pb2.EchoResponse(message=f"Echo: {request.message}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Reverse tunnel example client")
    parser.add_argument("--host", default="localhost", help="server host (default: localhost)")
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRPCTUNNEL_EXAMPLE_PORT", DEFAULT_PORT)),
        help="server port (default: $GRPCTUNNEL_EXAMPLE_PORT or 50051)",
    )
    return parser.parse_args()


def setup_logging() -> None:
    # Everything goes to stdout, so the log lines stay in order even when piped.
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s - %(levelname)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stdout,
    )
    # The library's own INFO messages (tunnels ending, ...) would clutter the demo.
    logging.getLogger("grpctunnel").setLevel(logging.WARNING)


def install_stop_handlers(stop: asyncio.Event) -> None:
    """Sets ``stop`` on Ctrl+C or SIGTERM."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # e.g. Windows
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))


async def run(server_address: str) -> int:
    logger.info("Connecting to server at %s...", server_address)
    async with grpc.aio.insecure_channel(server_address) as channel:
        tunnel_stub = TunnelServiceStub(channel)

        # The services registered here are the ones the server can call.
        reverse_server = ReverseTunnelServer(tunnel_stub)
        reverse_server.register_service(
            EchoService(),
            "test.EchoService",
            {"Echo": {"is_client_stream": False, "is_server_stream": False}},
        )
        logger.info("Registered Echo service on client")

        logger.info("Opening reverse tunnel to server...")
        try:
            # Returns as soon as the server has accepted the tunnel; the tunnel keeps
            # serving calls in the background.
            tunnel = await reverse_server.serve(timeout=OPEN_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            logger.error(
                "Could not open a reverse tunnel to %s: %s: %s",
                server_address,
                e.code().name,
                e.details(),
            )
            return 1
        logger.info("✓ Reverse tunnel established")
        logger.info("Waiting for calls from server...")

        # Serve until the tunnel closes or we are asked to stop.
        stop = asyncio.Event()
        install_stop_handlers(stop)
        closed = asyncio.create_task(tunnel.wait_closed())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()

        if closed.done():
            reason = tunnel.error.details if tunnel.error is not None else "closed by the server"
            logger.info("Reverse tunnel closed (%s); exiting", reason)
        else:
            logger.info("Closing reverse tunnel...")
            await reverse_server.stop(grace=1.0)
            await closed
            logger.info("Reverse tunnel closed")
    return 0


def main() -> int:
    args = parse_args()
    setup_logging()
    try:
        return asyncio.run(run(f"{args.host}:{args.port}"))
    except KeyboardInterrupt:  # Ctrl+C before the stop handlers were installed
        return 130


if __name__ == "__main__":
    sys.exit(main())
