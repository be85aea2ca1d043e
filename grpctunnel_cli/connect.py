"""Opening a client channel to a server address, bounded by a connect timeout.

The one place that turns ``--server`` and the TLS options into a connected
`grpc.aio.Channel` (the token travels as call metadata, see security.py). Everything after
this only sees the channel, so the same reflection and invocation code runs over a direct
channel or a tunnel channel. A connection that fails because TLS and plaintext were mixed
up, or a certificate was not accepted, says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from grpctunnel_cli.deadline import Deadline
from grpctunnel_cli.errors import ConnectError, TlsMismatchError, UsageError
from grpctunnel_cli.security import ClientSecurity, explain_failure, fetch_certificate

__all__ = [
    "DEFAULT_SERVER",
    "SERVER_ENV",
    "connected_channel",
    "open_channel",
    "server_target",
    "wait_until_ready",
]

SERVER_ENV = "GRPCTUNNEL_SERVER"
DEFAULT_SERVER = "localhost:50051"

# Schemes --server may carry: whether each implies TLS.
_SCHEMES = {"http": False, "grpc": False, "https": True, "grpcs": True}


def server_target(server: str) -> tuple[str, bool]:
    """The grpc target ``--server`` names, and whether its scheme asks for TLS.

    ``HOST:PORT`` and grpc's own targets (``unix:///PATH``, ``unix:PATH``, ``dns:///``,
    ``ipv4:``, ``ipv6:``) are taken as they are; ``http://`` and ``grpc://`` are
    stripped, ``https://`` and ``grpcs://`` too, implying TLS. Any other scheme, or a
    path after the port, is a UsageError saying what is expected."""
    text = server.strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() in ("unix", "dns", "unix-abstract", "vsock"):
        return text, False
    if scheme.lower() not in _SCHEMES:
        raise UsageError(
            f"--server {server!r}: unknown scheme {scheme + '://'!r}; give HOST:PORT, "
            "unix:///PATH, or http://, https://, grpc://, grpcs:// before HOST:PORT"
        )
    address = rest.rstrip("/")
    if not address or "/" in address:
        raise UsageError(
            f"--server {server!r}: give HOST:PORT after {scheme}:// (no path: gRPC "
            "methods are named by the command)"
        )
    return address, _SCHEMES[scheme.lower()]


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


async def wait_until_ready(
    channel: grpc.aio.Channel,
    target: str,
    timeout: float,
    security: ClientSecurity | None = None,
) -> None:
    """Connect `channel` or raise ConnectError: at once if refused, else after `timeout` s.
    With `security`, a failure caused by TLS (or its absence) gets a hint saying so."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        remaining = deadline - loop.time()
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            reason = await _failure_reason(channel, remaining)
            if reason is not None:
                hint = await explain_failure(target, security or ClientSecurity(), reason)
                if hint is not None:
                    raise TlsMismatchError(f"cannot connect to {target}: {hint} (grpc: {reason})")
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


def open_channel(
    target: str,
    security: ClientSecurity | None = None,
    options: list[tuple[str, object]] | None = None,
) -> grpc.aio.Channel:
    """A channel to `target`, with TLS when `security` asks for it (not yet connected)."""
    credentials = security.credentials() if security is not None else None
    if credentials is not None:
        assert security is not None
        return grpc.aio.secure_channel(
            target, credentials, options=[*security.channel_options(), *(options or ())]
        )
    return grpc.aio.insecure_channel(target, options=options)


@asynccontextmanager
async def connected_channel(
    target: str,
    *,
    connect_timeout: float,
    security: ClientSecurity | None = None,
    options: list[tuple[str, object]] | None = None,
    deadline: Deadline | None = None,
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to `target` (TLS if `security` says so, with grpc channel `options`),
    connected before it is yielded and closed after. With a `deadline`, connecting
    ends with it too (DEADLINE_EXCEEDED) if it comes before `connect_timeout`."""
    if not target.strip():
        raise ConnectError("no server address given (use --server or $GRPCTUNNEL_SERVER)")
    bound = deadline or Deadline(None)
    if security is not None and security.insecure and security.shown_cert is None:
        pem, name = await bound.within(
            fetch_certificate(target, security.server_name, connect_timeout),
            f"connecting to {target}",
        )
        security = dataclasses.replace(security, shown_cert=pem, shown_name=name)
    channel = open_channel(target, security, options)
    try:
        await bound.within(
            wait_until_ready(channel, target, connect_timeout, security),
            f"connecting to {target}",
        )
        yield channel
    finally:
        await channel.close(grace=None)
