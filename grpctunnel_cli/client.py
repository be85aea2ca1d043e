"""What the client commands (call, list, describe) do alike before their own work:
connect, and ask reflection with the same metadata as the call.

`connect` turns their `ConnectionOptions` and `SecurityOptions` into a `Connection`: the
connected channel, the metadata every request carries (the ``-H`` headers, then the
token) and the `DescriptorSource` asking the server's reflection with it. A refusal for
want of credentials gets a hint saying which.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc

from grpctunnel_cli.connect import connected_channel
from grpctunnel_cli.errors import StatusError
from grpctunnel_cli.metadata import Metadata, parse_headers
from grpctunnel_cli.options import ConnectionOptions, SecurityOptions
from grpctunnel_cli.reflection import DescriptorSource
from grpctunnel_cli.security import ClientSecurity

__all__ = ["DEFAULT_REFLECTION_TIMEOUT", "Connection", "connect"]

DEFAULT_REFLECTION_TIMEOUT = 30.0  # each reflection request, unless --timeout says otherwise


@dataclass(frozen=True)
class Connection:
    """A client command's connected server, and what goes with every request to it."""

    channel: grpc.aio.Channel
    security: ClientSecurity
    metadata: Metadata
    source: DescriptorSource


@asynccontextmanager
async def connect(
    options: ConnectionOptions, security_options: SecurityOptions
) -> AsyncIterator[Connection]:
    """The connected channel (closed after), with the metadata and reflection source of
    the command's requests."""
    security = security_options.read()
    metadata = (*parse_headers(options.headers or ()), *security.metadata())
    reflection_timeout = options.timeout or DEFAULT_REFLECTION_TIMEOUT
    try:
        async with connected_channel(
            options.server, connect_timeout=options.connect_timeout, security=security
        ) as channel:
            source = DescriptorSource(channel, metadata=metadata, timeout=reflection_timeout)
            yield Connection(channel, security, metadata, source)
    except StatusError as error:
        if error.code is grpc.StatusCode.UNAUTHENTICATED and not error.hint:
            error.hint = security.token_hint()
        raise
