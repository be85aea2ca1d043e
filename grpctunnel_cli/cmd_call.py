"""The `call` command: call a method by name, with JSON requests, printing JSON responses.

It reads its options, connects (client.py), resolves the method by reflection, runs the
call with invoke.py and leaves every byte of output to render.py.
"""

from __future__ import annotations

from typing import Annotated

import grpc
import typer

from grpctunnel_cli.client import connect
from grpctunnel_cli.command import run
from grpctunnel_cli.completion import complete_method
from grpctunnel_cli.interactive import hint, is_interactive, typed_requests
from grpctunnel_cli.invoke import (
    CallStatus,
    invoke,
    json_values,
    request_messages,
    status_exit_code,
)
from grpctunnel_cli.options import (
    OUTPUT,
    ConnectionOptions,
    SecurityOptions,
    option_groups,
    switch,
    verbose_option,
)
from grpctunnel_cli.render import Renderer

__all__ = ["call"]

LOAD = "Load mode"


@option_groups
def call(
    method: Annotated[
        str,
        typer.Argument(
            metavar="METHOD",
            help="The method: pkg.Service/Method, pkg.Service.Method, or a short form such "
            "as Service/Method when it is unique.",
            autocompletion=complete_method,
        ),
    ],
    data: Annotated[
        str | None,
        typer.Argument(
            metavar="DATA",
            help="Request JSON: inline, @FILE, or @- for stdin. Several JSON values (one per "
            "line, or concatenated) for client/bidi streaming. Omitted: an empty request "
            "(no requests for a streaming method).",
        ),
    ] = None,
    *,
    connection: ConnectionOptions,
    security: SecurityOptions,
    emit_defaults: Annotated[
        bool, switch("--emit-defaults", help="Show fields that hold default values.", panel=OUTPUT)
    ] = False,
    proto_names: Annotated[
        bool,
        switch("--proto-names", help="Use proto field names (snake_case) in output.", panel=OUTPUT),
    ] = False,
    verbose: Annotated[
        bool,
        verbose_option(
            "Also show, on stderr, the method, the request metadata, the response headers "
            "and trailers, and the status with timing and message counts."
        ),
    ] = False,
    repeat: Annotated[
        int | None,
        typer.Option(
            "--repeat",
            min=1,
            metavar="N",
            help="Load mode: make the call N times (default 1, or unbounded with --duration) "
            "and print a summary instead of the responses.",
            rich_help_panel=LOAD,
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            min=1,
            metavar="C",
            help="Load mode: keep C calls in flight at once (default 1).",
            rich_help_panel=LOAD,
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            metavar="SECONDS",
            help="Load mode: make calls for this long (at most --repeat of them, if given).",
            rich_help_panel=LOAD,
        ),
    ] = None,
    json_summary: Annotated[
        bool, switch("--json", help="Load mode: print the summary as one JSON object.", panel=LOAD)
    ] = False,
) -> None:
    """Call a method with JSON data; print each response as JSON.

    Resolves METHOD by the server's reflection, sends DATA, and prints each response as
    one JSON line (pretty JSON on a terminal). A call that ends with an error status
    prints it on stderr and exits 64 + its code.

    Load mode (--repeat, --concurrency, --duration) makes the call many times and prints
    a summary: calls, errors, calls/s, latency percentiles and histogram, calls by status.
    It exits 0 if every call succeeded, else 64 + the code of the most common failure.
    """
    renderer = Renderer(verbose=verbose, emit_defaults=emit_defaults, proto_names=proto_names)

    async def body() -> int:
        plan = None
        if json_summary or (repeat, concurrency, duration) != (None, None, None):
            from grpctunnel_cli import load  # imported in load mode only

            plan = load.load_plan(repeat, concurrency, duration, json_summary)
        async with connect(connection, security) as connected:
            source = connected.source
            resolved = await source.resolve_method(method)
            renderer.pool = source.pool
            if plan is not None:
                return await load.run_load_command(
                    plan, connected, resolved, data, renderer, connection.timeout
                )
            renderer.request_start(resolved, connected.metadata)
            if is_interactive(data):
                renderer.info(hint(resolved))
                requests = typed_requests(resolved, source.pool, renderer.error)
            else:
                requests = request_messages(
                    json_values(data), resolved.input_type, pool=source.pool
                )
            calling = invoke(
                connected.channel,
                resolved,
                requests,
                metadata=connected.metadata,
                timeout=connection.timeout,
            )
            code = 0
            async for event in calling:
                renderer.event(event)
                if isinstance(event, CallStatus):
                    code = status_exit_code(event.code)
                    if event.code is grpc.StatusCode.UNAUTHENTICATED:
                        renderer.info(f"  hint: {connected.security.token_hint()}")
            return code

    run(body, renderer)
