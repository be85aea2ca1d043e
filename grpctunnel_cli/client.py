"""What the client commands (call, list, describe) do alike before their own work: check
their connection and security options, connect, and ask reflection with the same metadata.

`ClientOptions` holds those options as given, checked for usage errors (exit 2) as it is
made; `connect` turns it into a `Connection`: the connected channel, the metadata every
request carries (the ``-H`` headers, then the token) and the `DescriptorSource` asking the
server's reflection with it. A refusal for want of credentials gets a hint saying which.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from grpctunnel_cli.command import DEFAULT_REFLECTION_TIMEOUT, check_timeout
from grpctunnel_cli.connect import connected_channel
from grpctunnel_cli.errors import StatusError
from grpctunnel_cli.metadata import Metadata, parse_headers
from grpctunnel_cli.reflection import DescriptorSource
from grpctunnel_cli.security import ClientSecurity, client_security

__all__ = ["ClientOptions", "Connection", "connect"]


@dataclass(frozen=True)
class ClientOptions:
    """The connection and security options of a client command, as given."""

    server: str
    headers: Sequence[str] | None
    timeout: float | None
    connect_timeout: float
    token: str | None
    token_file: Path | None
    tls: bool
    ca_cert: Path | None
    cert: Path | None
    key: Path | None

    def __post_init__(self) -> None:
        check_timeout(self.timeout, "--timeout")
        check_timeout(self.connect_timeout, "--connect-timeout")


@dataclass(frozen=True)
class Connection:
    """A client command's connected server, and what goes with every request to it."""

    channel: grpc.aio.Channel
    security: ClientSecurity
    metadata: Metadata
    source: DescriptorSource


@asynccontextmanager
async def connect(options: ClientOptions) -> AsyncIterator[Connection]:
    """The connected channel (closed after), with the metadata and reflection source of
    the command's requests."""
    security = client_security(
        token=options.token,
        token_file=options.token_file,
        tls=options.tls,
        ca_cert=options.ca_cert,
        cert=options.cert,
        key=options.key,
    )
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
