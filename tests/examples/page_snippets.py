"""The "Key Code Sections" of the two example pages, run as written, in one process.

Run by test_examples.py with the example folder on PYTHONPATH (for ``echo_pb2``); it
prints ``OK`` and exits 0 when every snippet behaved as its page says. It follows the
pages literally where the examples themselves do better (the fixed
``asyncio.sleep(2.0)`` before calling the client, instead of ``channel_ready()``).
"""

from __future__ import annotations

import asyncio
import sys

import echo_pb2
import echo_pb2_grpc
import grpc

from grpctunnel import (
    PendingChannel,
    ReverseTunnelServer,
    TunnelServiceHandler,
    TunnelServiceHandlerOptions,
    TunnelServiceStub,
    add_TunnelServiceServicer_to_server,
)

ECHO_METHODS = {"Echo": {"is_client_stream": False, "is_server_stream": False}}


class EchoService(echo_pb2_grpc.EchoServiceServicer):
    async def Echo(self, request, context):
        return echo_pb2.EchoResponse(message=f"Echo: {request.message}")


async def forward_snippets(server_address: str) -> None:
    # Client side of the forward page.
    channel = grpc.aio.insecure_channel(server_address)
    tunnel_stub = TunnelServiceStub(channel)

    pending = PendingChannel(tunnel_stub)
    tunnel_channel = await pending.start()

    echo_stub = echo_pb2_grpc.EchoServiceStub(tunnel_channel)
    request = echo_pb2.EchoRequest(message="Hello")
    response = await echo_stub.Echo(request)
    assert response.message == "Echo: Hello", response

    # "One tunnel, many concurrent requests".
    tasks = [echo_stub.Echo(echo_pb2.EchoRequest(message=str(i))) for i in range(200)]
    results = await asyncio.gather(*tasks)
    assert [r.message for r in results] == [f"Echo: {i}" for i in range(200)]

    await tunnel_channel.close()
    await channel.close()


async def reverse_client_snippet(
    server_address: str,
) -> tuple[grpc.aio.Channel, ReverseTunnelServer]:
    # Client side of the reverse page.
    channel = grpc.aio.insecure_channel(server_address)
    tunnel_stub = TunnelServiceStub(channel)

    reverse_server = ReverseTunnelServer(tunnel_stub)
    reverse_server.register_service(EchoService(), "test.EchoService", ECHO_METHODS)

    await reverse_server.serve()
    return channel, reverse_server


async def main() -> None:
    # Server side of both pages.
    handler = TunnelServiceHandler(TunnelServiceHandlerOptions())
    handler.register_service(EchoService(), "test.EchoService", ECHO_METHODS)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    add_TunnelServiceServicer_to_server(handler.service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    server_address = f"localhost:{port}"

    await forward_snippets(server_address)

    # The reverse client connects while the server sleeps, as when both are started
    # by hand.
    client = asyncio.create_task(reverse_client_snippet(server_address))

    # Wait for reverse tunnel from client
    await asyncio.sleep(2.0)

    # Get the reverse channel to call the client
    reverse_channel = handler.as_channel()

    # Create stub to call client's service
    echo_stub = echo_pb2_grpc.EchoServiceStub(reverse_channel)

    # Make RPC calls to the client
    request = echo_pb2.EchoRequest(message="Hello")
    response = await echo_stub.Echo(request)
    assert response.message == "Echo: Hello", response

    # "Error Handling": once the client is gone, calls fail with UNAVAILABLE.
    client_channel, reverse_server = await client
    await reverse_server.stop()
    await reverse_server.wait_closed()
    await client_channel.close()
    await reverse_channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
    try:
        await echo_stub.Echo(request)
    except grpc.aio.AioRpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE, e
    else:
        raise AssertionError("a call with no reverse tunnel open succeeded")

    await handler.close()
    await server.stop(None)
    print("OK")


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
