"""The `describe` command: the definition of a service, method, message or enum, from
reflection, as proto source."""

from __future__ import annotations

from typing import Annotated

import typer

from grpctunnel_cli.client import ClientOptions, connect
from grpctunnel_cli.command import DEFAULT_CONNECT_TIMEOUT, run
from grpctunnel_cli.connect import DEFAULT_SERVER
from grpctunnel_cli.options import (
    CaCertOption,
    CertOption,
    ConnectTimeoutOption,
    HeaderOption,
    KeyOption,
    ServerOption,
    TimeoutOption,
    TlsOption,
    TokenFileOption,
    TokenOption,
)
from grpctunnel_cli.render import Renderer

__all__ = ["describe"]


def describe(
    symbol: Annotated[
        str | None,
        typer.Argument(
            metavar="SYMBOL",
            help="A service, method, message or enum: full name, or a unique short name. "
            "Omitted: describe every service.",
            show_default=False,
        ),
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
    header: HeaderOption = None,
    timeout: TimeoutOption = None,
    connect_timeout: ConnectTimeoutOption = DEFAULT_CONNECT_TIMEOUT,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    tls: TlsOption = False,
    ca_cert: CaCertOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
) -> None:
    """Show a service, method, message or enum as proto source.

    A short name is looked up among services first, then methods, then messages and enums.
    """
    client = ClientOptions(
        server, header, timeout, connect_timeout, token, token_file, tls, ca_cert, cert, key
    )
    renderer = Renderer()

    async def body() -> int:
        async with connect(client) as connection:
            source = connection.source
            if symbol is None:
                for found in await source.services():
                    renderer.describe(found)
            else:
                renderer.describe(await source.resolve_symbol(symbol))
        return 0

    run(body, renderer)
