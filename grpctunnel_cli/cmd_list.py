"""The `list` command: the services a server offers, or the methods of one, by reflection
or from schema files (which need no server)."""

from __future__ import annotations

from typing import Annotated

import typer

from grpctunnel_cli.client import connect
from grpctunnel_cli.command import run
from grpctunnel_cli.options import (
    ConnectionOptions,
    SchemaOptions,
    SecurityOptions,
    option_groups,
)
from grpctunnel_cli.reflection import DescriptorSource
from grpctunnel_cli.render import Renderer
from grpctunnel_cli.schema import file_source

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
    schema: SchemaOptions,
) -> None:
    """List the services of a server, or the methods of one.

    One full name per line, sorted, as reflection gives them; with --proto or --protoset,
    those the files define (no server is asked).
    """
    renderer = Renderer()

    async def show(source: DescriptorSource) -> None:
        if service is None:
            renderer.names(await source.list_services())
        else:
            found = await source.resolve_service(service)
            renderer.names(f"{found.full_name}.{m.name}" for m in found.methods)

    async def body() -> int:
        files = await file_source(schema)
        if files is not None:
            await show(files)
            return 0
        async with connect(connection, security) as connected:
            await connected.reflect(show(connected.source))
        return 0

    run(body, renderer)
