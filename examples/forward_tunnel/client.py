"""Forward tunnel example: the client.

Opens one forward tunnel to the server and makes several Echo calls through it: the
calls share that single tunnel stream, so they all reach the same server.

Run ``python client.py`` once ``server.py`` is up (``--host``, ``--port`` or
``GRPCTUNNEL_EXAMPLE_PORT`` to point it elsewhere). Exits 0 when every call
succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import echo_pb2
import echo_pb2_grpc
import grpc

from grpctunnel import PendingChannel, TunnelServiceStub

DEFAULT_PORT = 50051
NUM_CALLS = 5
TIMEOUT = 10.0  # seconds, for opening the tunnel and for each call

logger = logging.getLogger("forward_tunnel.client")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Forward tunnel example client")
    parser.add_argument("--host", default="localhost", help="server host (default: localhost)")
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRPCTUNNEL_EXAMPLE_PORT", DEFAULT_PORT)),
        help="server port (default: $GRPCTUNNEL_EXAMPLE_PORT or 50051)",
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


async def run(server_address: str) -> int:
    logger.info("Connecting to server at %s...", server_address)
    async with grpc.aio.insecure_channel(server_address) as channel:
        tunnel_stub = TunnelServiceStub(channel)

        logger.info("Creating forward tunnel...")
        try:
            tunnel_channel = await PendingChannel(tunnel_stub).start(timeout=TIMEOUT)
        except grpc.aio.AioRpcError as e:
            logger.error(
                "Could not open a tunnel to %s: %s: %s", server_address, e.code().name, e.details()
            )
            return 1
        logger.info("✓ Forward tunnel established")

        # tunnel_channel is an ordinary grpc.aio.Channel: generated stubs work on it.
        # Leaving the block closes it, which ends the tunnel.
        async with tunnel_channel:
            echo_stub = echo_pb2_grpc.EchoServiceStub(tunnel_channel)
            print("\n--- Making RPC calls through tunnel ---", flush=True)
            for i in range(1, NUM_CALLS + 1):
                message = f"Hello from client #{i}"
                logger.info("Sending: %s", message)
                try:
                    response = await echo_stub.Echo(
                        echo_pb2.EchoRequest(message=message), timeout=TIMEOUT
                    )
                except grpc.aio.AioRpcError as e:
                    logger.error("Call failed: %s: %s", e.code().name, e.details())
                    return 1
                logger.info("Received: %s", response.message)

    print("\n✓ All calls completed successfully!", flush=True)
    return 0


def main() -> int:
    args = parse_args()
    setup_logging()
    try:
        return asyncio.run(run(f"{args.host}:{args.port}"))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
