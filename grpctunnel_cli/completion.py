"""Completing METHOD (call) and SYMBOL (describe) in the shell, from the schema files on
the line (--proto, --protoset) or by asking the server.

The shell's completion runs the command with the line typed so far; Typer parses what it
can of it and calls `complete_method` or `complete_symbol` with the parameters parsed, so
the server (``-s``/``--server`` or ``$GRPCTUNNEL_SERVER``), the headers and the token given
on the line are those the reflection questions use. Asking is bounded by `TIMEOUT`; on
any failure (no server, no reflection, refused, too slow) there is nothing to offer, and
nothing is printed: a completion never shows an error or a traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from grpctunnel_cli.reflection import DescriptorSource

__all__ = ["TIMEOUT", "complete_method", "complete_symbol", "matching"]

TIMEOUT = 1.0  # seconds for everything a completion asks the server


def _group(kind: type[Any], params: dict[str, Any], prefix: str, **fixed: Any) -> Any:
    """An option group (options.py) from the parameters parsed so far, with `fixed` on top."""
    given = {
        field.name: params[f"{prefix}__{field.name}"]
        for field in dataclasses.fields(kind)
        if params.get(f"{prefix}__{field.name}") is not None
    }
    return kind(**{**given, **fixed})


def _ask(
    ctx: typer.Context, question: Callable[[DescriptorSource], Awaitable[list[str]]]
) -> list[str]:
    """What `question` answers from the schema files on the parsed line (--proto,
    --protoset), else from the server it names; [] on any failure."""
    from grpctunnel_cli.client import connect
    from grpctunnel_cli.options import ConnectionOptions, SchemaOptions, SecurityOptions
    from grpctunnel_cli.schema import file_source

    async def asking() -> list[str]:
        if any(key.startswith("schema__") for key in ctx.params):
            files = await file_source(_group(SchemaOptions, ctx.params, "schema"))
            if files is not None:
                return await question(files)
        connection = _group(
            ConnectionOptions, ctx.params, "connection", timeout=TIMEOUT, connect_timeout=TIMEOUT
        )
        security = _group(SecurityOptions, ctx.params, "security")
        async with connect(connection, security) as connected:
            return await question(connected.source)

    async def bounded() -> list[str]:
        return await asyncio.wait_for(asking(), TIMEOUT)

    try:
        return asyncio.run(bounded())
    except Exception:
        return []


def matching(names: list[str], incomplete: str) -> list[str]:
    """The names that begin with what is typed, sorted and without repeats."""
    return sorted({name for name in names if name.startswith(incomplete)})


def _short_forms(full_names: list[str], separator: str) -> list[str]:
    """``Service<separator>Member`` for each full name whose service's short name is unique."""
    services: dict[str, set[str]] = {}
    for name in full_names:
        service = name.split(separator, 1)[0]
        services.setdefault(service.rsplit(".", 1)[-1], set()).add(service)
    short: list[str] = []
    for name in full_names:
        service, _, member = name.partition(separator)
        leaf = service.rsplit(".", 1)[-1]
        if len(services[leaf]) == 1 and leaf != service:
            short.append(f"{leaf}{separator}{member}")
    return short


async def _methods(source: DescriptorSource) -> list[str]:
    return [
        f"{service.full_name}/{method.name}"
        for service in await source.services()
        for method in service.methods
    ]


async def _symbols(source: DescriptorSource) -> list[str]:
    from grpctunnel_cli.reflection import iter_types

    services = await source.services()
    names = [service.full_name for service in services]
    names += [
        f"{service.full_name}.{method.name}" for service in services for method in service.methods
    ]
    names += [found.full_name for file in source.files() for found in iter_types(file)]
    return names


def complete_method(ctx: typer.Context, incomplete: str) -> list[str]:
    """METHOD of `call`: pkg.Service/Method, and Service/Method where that is unique."""
    full = _ask(ctx, _methods)
    if not incomplete:
        return matching(full, incomplete)
    return matching([*full, *_short_forms(full, "/")], incomplete)


def complete_symbol(ctx: typer.Context, incomplete: str) -> list[str]:
    """SYMBOL of `describe`: services, methods, messages and enums, by full name."""
    return matching(_ask(ctx, _symbols), incomplete)
