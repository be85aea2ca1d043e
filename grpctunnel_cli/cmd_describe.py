"""The `describe` command: the definition of a service, method, message or enum, from
reflection or from schema files, as proto source."""

from __future__ import annotations

from typing import Annotated

import typer

from grpctunnel_cli.client import connect
from grpctunnel_cli.command import run
from grpctunnel_cli.completion import complete_symbol
from grpctunnel_cli.errors import ResolutionError
from grpctunnel_cli.options import (
    ConnectionOptions,
    SchemaOptions,
    SecurityOptions,
    option_groups,
)
from grpctunnel_cli.reflection import DescriptorSource
from grpctunnel_cli.render import Renderer
from grpctunnel_cli.schema import ProtosetOutOption, file_of, file_source, write_protoset

__all__ = ["describe"]


@option_groups
def describe(
    symbol: Annotated[
        str | None,
        typer.Argument(
            metavar="SYMBOL",
            help="A service, method, message or enum: full name, or a unique short name. "
            "Omitted: describe every service.",
            autocompletion=complete_symbol,
        ),
    ] = None,
    *,
    connection: ConnectionOptions,
    security: SecurityOptions,
    schema: SchemaOptions,
    protoset_out: ProtosetOutOption = None,
) -> None:
    """Show a service, method, message or enum as proto source.

    A short name is looked up among services first, then methods, then messages and enums.
    With no SYMBOL, every service that can be described is shown; those that cannot are
    named on stderr, and the exit status is 0 if at least one was shown (1 if none).
    With --proto or --protoset, the files are the schema and no server is asked.
    """
    renderer = Renderer()

    async def show(source: DescriptorSource) -> None:
        if symbol is not None:
            found = await source.resolve_symbol(symbol)
            renderer.describe(found)
            write_protoset(protoset_out, source, [file_of(found)])
            return
        described, failed = await source.describe_services()
        for service in described:
            renderer.describe(service)
        write_protoset(protoset_out, source, [service.file for service in described])
        if failed:
            reasons = "".join(f"\n  {error}" for error in failed)
            if not described:
                raise ResolutionError(f"no service could be described:{reasons}")
            renderer.warning(f"{len(failed)} of the services could not be described:{reasons}")

    async def body() -> int:
        files = await file_source(schema)
        if files is not None:
            await show(files)
            return 0
        async with connect(connection, security) as connected:
            await connected.reflect(show(connected.source))
        return 0

    run(body, renderer)
