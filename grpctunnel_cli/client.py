"""What the client commands (call, list, describe) do alike before their own work:
connect, and ask reflection with the right metadata, all within the command's deadline.

`connect` turns their `ConnectionOptions` and `SecurityOptions` into a `Connection`: the
connected channel, the metadata the call carries (``-H`` and ``--rpc-header`` headers, then
the token), the `DescriptorSource` asking the server's reflection with its own (``-H`` and
``--reflect-header`` headers, then the token), and the `Deadline` of ``--timeout``, which
bounds connecting here and everything after. A refusal for want of credentials gets a
hint saying which.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import grpc

from grpctunnel_cli.connect import connected_channel, server_target
from grpctunnel_cli.deadline import Deadline
from grpctunnel_cli.errors import StatusError
from grpctunnel_cli.metadata import Metadata, parse_headers
from grpctunnel_cli.options import ConnectionOptions, SecurityOptions
from grpctunnel_cli.reflection import DescriptorSource
from grpctunnel_cli.security import ClientSecurity

__all__ = ["DEFAULT_REFLECTION_TIMEOUT", "INSECURE_WARNING", "Connection", "connect"]

DEFAULT_REFLECTION_TIMEOUT = 30.0  # each reflection request, unless --timeout says otherwise
INSECURE_WARNING = "WARNING: --insecure: the server's TLS certificate is not verified"

T = TypeVar("T")


@dataclass(frozen=True)
class Connection:
    """A client command's connected server, and what goes with every request to it."""

    channel: grpc.aio.Channel
    security: ClientSecurity
    metadata: Metadata  # the call's
    source: DescriptorSource
    deadline: Deadline

    async def reflect(self, question: Awaitable[T]) -> T:
        """The answer of a reflection question, within the command's deadline."""
        return await self.deadline.within(question, "asking the server's reflection")


@asynccontextmanager
async def connect(
    options: ConnectionOptions, security_options: SecurityOptions
) -> AsyncIterator[Connection]:
    """The connected channel (closed after), with the metadata and reflection source of
    the command's requests."""
    deadline = Deadline(options.timeout)
    security = security_options.read()
    target, wants_tls = server_target(options.server)
    if wants_tls and not security.tls:
        security = dataclasses.replace(security, tls=True)
    if options.authority is not None:
        security = dataclasses.replace(security, authority=options.authority.strip())
    if security.insecure:
        print(INSECURE_WARNING, file=sys.stderr)
    headers = parse_headers(options.headers or ())
    call_metadata = (*headers, *parse_headers(options.rpc_headers or ()), *security.metadata())
    reflect_metadata = (
        *headers,
        *parse_headers(options.reflect_headers or ()),
        *security.metadata(),
    )
    reflection_timeout = options.timeout or DEFAULT_REFLECTION_TIMEOUT
    try:
        async with connected_channel(
            target,
            connect_timeout=options.connect_timeout,
            security=security,
            options=options.channel_options(),
            deadline=deadline,
        ) as channel:
            source = DescriptorSource(
                channel, metadata=reflect_metadata, timeout=reflection_timeout
            )
            yield Connection(channel, security, call_metadata, source, deadline)
    except StatusError as error:
        if error.code is grpc.StatusCode.UNAUTHENTICATED and not error.hint:
            error.hint = security.token_hint()
        raise
