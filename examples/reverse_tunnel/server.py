"""Reverse tunnel example: the server.

Accepts reverse tunnels: a client dials in with ``OpenReverseTunnel`` and, through
that stream, *this server* calls the Echo service the client hosts.

The server handles one client at a time: it waits for a reverse tunnel, makes a few
Echo calls through it, then leaves the tunnel open (the client stays reachable) until
that client goes away, and then waits for the next one. It runs until Ctrl+C or
SIGTERM. Port 50051, or ``--port N`` / ``GRPCTUNNEL_EXAMPLE_PORT=N``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import echo_pb2
import echo_pb2_grpc
import grpc

from grpctunnel import (
    TunnelServiceHandler,
    TunnelServiceHandlerOptions,
    add_TunnelServiceServicer_to_server,
)

DEFAULT_PORT = 50051
NUM_CALLS = 5
CALL_TIMEOUT = 10.0  # seconds

logger = logging.getLogger("reverse_tunnel.server")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Reverse tunnel example server")
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


async def call_clients(handler: TunnelServiceHandler) -> None:
    """Calls each client that opens a reverse tunnel, one client at a time."""
    # A channel over the reverse tunnels open to this handler: calls made on it go to
    # the Echo service of a connected client.
    reverse_channel = handler.as_channel()
    echo_stub = echo_pb2_grpc.EchoServiceStub(reverse_channel)

    while True:
        logger.info("Waiting for client to connect with reverse tunnel...")
        await reverse_channel.channel_ready()  # returns once a reverse tunnel is open
        logger.info("✓ Reverse tunnel established")

        print("\n--- Making RPC calls to client ---", flush=True)
        try:
            for i in range(1, NUM_CALLS + 1):
                message = f"Hello from server #{i}"
                logger.info("Sending to client: %s", message)
                response = await echo_stub.Echo(
                    echo_pb2.EchoRequest(message=message), timeout=CALL_TIMEOUT
                )
                logger.info("Client responded: %s", response.message)
        except grpc.aio.AioRpcError as e:
            # UNAVAILABLE means the client went away in the middle of the calls.
            logger.error("Call to client failed: %s: %s", e.code().name, e.details())
        else:
            print("\n✓ All calls to client completed successfully!", flush=True)

        # The tunnel stays open, so the client could be called again at any time. This
        # example has nothing more to ask it: wait until it disconnects.
        await reverse_channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
        logger.info("Client disconnected")


async def serve(port: int) -> int:
    logger.info("Starting Reverse Tunnel Server...")

    # The handler implements TunnelService and keeps the reverse tunnels clients open.
    handler = TunnelServiceHandler(TunnelServiceHandlerOptions())
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

    stop = asyncio.Event()
    install_stop_handlers(stop)
    caller = asyncio.create_task(call_clients(handler))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({caller, stopping}, return_when=asyncio.FIRST_COMPLETED)

    logger.info("Shutting down...")
    caller.cancel()
    stopping.cancel()
    await asyncio.gather(caller, stopping, return_exceptions=True)
    await handler.close()  # ends the reverse tunnels: their clients see them close
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
