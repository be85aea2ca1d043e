"""The `list` command: the services a server offers, or the methods of one, by reflection."""

from __future__ import annotations

from typing import Annotated

import typer

from grpctunnel_cli.client import connect
from grpctunnel_cli.command import run
from grpctunnel_cli.options import ConnectionOptions, SecurityOptions, option_groups
from grpctunnel_cli.render import Renderer

__all__ = ["list_services"]


@option_groups
def list_services(
    service: Annotated[
        str | None,
        typer.Argument(
            metavar="SERVICE",
            help="A service (full or unique short name) whose methods to list. Omitted: "
            "list the services.",
        ),
    ] = None,
    *,
    connection: ConnectionOptions,
    security: SecurityOptions,
) -> None:
    """List the services of a server, or the methods of one.

    One full name per line, sorted, as reflection gives them.
    """
    renderer = Renderer()

    async def body() -> int:
        async with connect(connection, security) as connected:
            source = connected.source
            if service is None:
                renderer.names(await connected.reflect(source.list_services()))
            else:
                found = await connected.reflect(source.resolve_service(service))
                renderer.names(f"{found.full_name}.{m.name}" for m in found.methods)
        return 0

    run(body, renderer)
