"""The `describe` command: the definition of a service, method, message or enum, from
reflection, as proto source."""

from __future__ import annotations

from typing import Annotated

import typer

from grpctunnel_cli.client import connect
from grpctunnel_cli.command import run
from grpctunnel_cli.completion import complete_symbol
from grpctunnel_cli.options import ConnectionOptions, SecurityOptions, option_groups
from grpctunnel_cli.render import Renderer

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
) -> None:
    """Show a service, method, message or enum as proto source.

    A short name is looked up among services first, then methods, then messages and enums.
    """
    renderer = Renderer()

    async def body() -> int:
        async with connect(connection, security) as connected:
            source = connected.source
            if symbol is None:
                for found in await source.services():
                    renderer.describe(found)
            else:
                renderer.describe(await source.resolve_symbol(symbol))
        return 0

    run(body, renderer)
