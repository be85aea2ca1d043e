"""Forward tunnel example: the server.

Serves the Echo service *only through tunnels*: a client opens one ``OpenTunnel``
stream to this server and every Echo call it makes travels inside that stream.

Run ``python server.py`` (port 50051, or ``--port N`` / ``GRPCTUNNEL_EXAMPLE_PORT=N``)
and stop it with Ctrl+C or SIGTERM.
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

from grpctunnel import (
    TunnelServiceHandler,
    TunnelServiceHandlerOptions,
    add_TunnelServiceServicer_to_server,
)

DEFAULT_PORT = 50051

logger = logging.getLogger("forward_tunnel.server")


class EchoService(echo_pb2_grpc.EchoServiceServicer):
    """Answers every Echo call with the message it was sent, prefixed."""

    async def Echo(self, request, context):
        return echo_pb2.EchoResponse(message=f"Echo: {request.message}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Forward tunnel example server")
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRPCTUNNEL_EXAMPLE_PORT", DEFAULT_PORT)),
        help="port to listen on (default: $GRPCTUNNEL_EXAMPLE_PORT or 50051)",
    )
    return parser.parse_args()


def setup_logging() -> None:
    # Everything goes to stdout, so log lines and the printed headings stay in order
    # even when the output is piped.
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


async def serve(port: int) -> int:
    logger.info("Starting Forward Tunnel Server...")

    # The handler implements TunnelService; the services registered on it are the
    # ones reachable through forward tunnels.
    handler = TunnelServiceHandler(TunnelServiceHandlerOptions())
    handler.register_service(
        EchoService(),
        "test.EchoService",
        {"Echo": {"is_client_stream": False, "is_server_stream": False}},
    )
    logger.info("Registered Echo service")

    # No SO_REUSEPORT: a second server on the same port fails instead of sharing it.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    add_TunnelServiceServicer_to_server(handler.service(), server)
    try:
        server.add_insecure_port(f"[::]:{port}")
    except RuntimeError as e:
        logger.error("Cannot listen on port %d: %s", port, e)
        return 1
    await server.start()
    logger.info("✓ Server listening on port %d", port)
    logger.info("Waiting for clients to connect...")

    stop = asyncio.Event()
    install_stop_handlers(stop)
    await stop.wait()

    logger.info("Shutting down...")
    await handler.close()  # ends open tunnels; their calls fail with UNAVAILABLE
    await server.stop(grace=1.0)
    logger.info("Server stopped")
    return 0


def main() -> int:
    args = parse_args()
    setup_logging()
    try:
        return asyncio.run(serve(args.port))
    except KeyboardInterrupt:  # Ctrl+C before the stop handlers were installed
        return 130


if __name__ == "__main__":
    sys.exit(main())
