"""Opening a client channel to a server address, bounded by a connect timeout.

The one place that turns ``--server`` (and later TLS and token options) into a connected
`grpc.aio.Channel`. Everything after this only sees the channel, so the same reflection and
invocation code runs over a direct channel or a tunnel channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from grpctunnel_cli.errors import ConnectError

__all__ = ["DEFAULT_SERVER", "SERVER_ENV", "connected_channel", "wait_until_ready"]

SERVER_ENV = "GRPCTUNNEL_SERVER"
DEFAULT_SERVER = "localhost:50051"

# A method no server has; calling it on a failed channel makes grpc say why it failed.
_PROBE_METHOD = "/grpctunnel.cli.v1.Probe/Probe"


async def _failure_reason(channel: grpc.aio.Channel, timeout: float) -> str | None:
    """Why the channel failed to connect, as grpc words it; None if it is in fact usable."""
    probe = channel.unary_unary(_PROBE_METHOD, request_serializer=None, response_deserializer=None)
    try:
        await probe(b"", timeout=max(timeout, 0.1), wait_for_ready=False)
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return error.details() or error.code().name
        return None  # the server answered (UNIMPLEMENTED): we are connected
    return None


async def wait_until_ready(channel: grpc.aio.Channel, target: str, timeout: float) -> None:
    """Connect `channel` or raise ConnectError: at once if refused, else after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        remaining = deadline - loop.time()
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            reason = await _failure_reason(channel, remaining)
            if reason is not None:
                raise ConnectError(f"cannot connect to {target}: {reason}")
        if state is grpc.ChannelConnectivity.SHUTDOWN:
            raise ConnectError(f"cannot connect to {target}: channel shut down")
        if remaining <= 0:
            raise ConnectError(_timeout_message(target, timeout))
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), remaining)
        except asyncio.TimeoutError:
            raise ConnectError(_timeout_message(target, timeout)) from None
        state = channel.get_state(try_to_connect=True)


def _timeout_message(target: str, timeout: float) -> str:
    return f"cannot connect to {target}: no connection within {timeout:g}s (see --connect-timeout)"


@asynccontextmanager
async def connected_channel(
    target: str, *, connect_timeout: float
) -> AsyncIterator[grpc.aio.Channel]:
    """An insecure channel to `target`, connected before it is yielded and closed after."""
    if not target.strip():
        raise ConnectError("no server address given (use --server or $GRPCTUNNEL_SERVER)")
    channel = grpc.aio.insecure_channel(target)
    try:
        await wait_until_ready(channel, target, connect_timeout)
        yield channel
    finally:
        await channel.close(grace=None)
