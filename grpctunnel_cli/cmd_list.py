"""The `list` command: the services a server offers, or the methods of one, by reflection."""

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

__all__ = ["list_services"]


def list_services(
    service: Annotated[
        str | None,
        typer.Argument(
            metavar="SERVICE",
            help="A service (full or unique short name) whose methods to list. Omitted: "
            "list the services.",
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
    """List the services of a server, or the methods of one.

    One full name per line, sorted, as reflection gives them.
    """
    client = ClientOptions(
        server, header, timeout, connect_timeout, token, token_file, tls, ca_cert, cert, key
    )
    renderer = Renderer()

    async def body() -> int:
        async with connect(client) as connection:
            source = connection.source
            if service is None:
                renderer.names(await source.list_services())
            else:
                found = await source.resolve_service(service)
                renderer.names(f"{found.full_name}.{m.name}" for m in found.methods)
        return 0

    run(body, renderer)
