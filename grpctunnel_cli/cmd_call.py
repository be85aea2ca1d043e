"""The `call` command: call a method by name, with JSON requests, printing JSON responses.

It reads its options, connects (client.py), resolves the method by reflection or from the
schema files given (schema.py), runs the call with invoke.py and leaves every byte of
output to render.py.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Annotated

import grpc
import typer

from grpctunnel.gateway.message_limit import MessageLimit
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
    text_messages,
)
from grpctunnel_cli.options import (
    OUTPUT,
    ConnectionOptions,
    SchemaOptions,
    SecurityOptions,
    option_groups,
    switch,
    verbose_option,
)
from grpctunnel_cli.render import Renderer
from grpctunnel_cli.schema import ProtosetOutOption, file_of, file_source, write_protoset

__all__ = ["DataFormat", "call"]

# with --timeout, how long after the call's own gRPC deadline the command gives up
# waiting for its status: the call ends itself at its deadline and says so, so this only
# ends a command still reading a unary call's request (from a stdin that stays open)
_CALL_GRACE = 1.0
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


class DataFormat(str, enum.Enum):
    """The format of request data and printed responses."""

    json = "json"
    text = "text"


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
            "line, or concatenated) for client/bidi streaming; <...> may stand for the outer "
            "{...} of an object. Omitted: an empty request (no requests for a streaming "
            "method).",
        ),
    ] = None,
    *,
    connection: ConnectionOptions,
    security: SecurityOptions,
    schema: SchemaOptions,
    protoset_out: ProtosetOutOption = None,
    data_format: Annotated[
        DataFormat,
        typer.Option(
            "--format",
            metavar="json|text",
            help="Request data and responses as JSON, or as protobuf text format (several "
            "requests separated by the 0x1E character; one response per line when piped).",
            rich_help_panel=OUTPUT,
        ),
    ] = DataFormat.json,
    allow_unknown_fields: Annotated[
        bool,
        switch(
            "--allow-unknown-fields",
            help="Ignore request fields the method's message does not have.",
            panel=OUTPUT,
        ),
    ] = False,
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

    Resolves METHOD by the server's reflection (or only from --proto/--protoset files
    when given), sends DATA, and prints each response as
    one JSON line (pretty JSON on a terminal). A call that ends with an error status
    prints it on stderr and exits 64 + its code.

    Load mode (--repeat, --concurrency, --duration) makes the call many times and prints
    a summary: calls, errors, calls/s, latency percentiles and histogram, calls by status.
    It exits 0 if every call succeeded, else 64 + the code of the most common failure.
    """
    renderer = Renderer(verbose=verbose, emit_defaults=emit_defaults, proto_names=proto_names)
    renderer.text_format = data_format is DataFormat.text

    async def body() -> int:
        files = await file_source(schema)
        plan = None
        if json_summary or (repeat, concurrency, duration) != (None, None, None):
            from grpctunnel_cli import load  # imported in load mode only

            plan = load.load_plan(repeat, concurrency, duration, json_summary)
        async with connect(connection, security) as connected:
            source = files or connected.source
            resolved = await connected.reflect(source.resolve_method(method))
            write_protoset(protoset_out, source, [file_of(resolved)])
            renderer.pool = source.pool
            if plan is not None:
                return await load.run_load_command(
                    plan, connected, resolved, data, renderer, connection.timeout
                )
            renderer.request_start(resolved, connected.metadata)
            if data_format is DataFormat.text:
                requests = text_messages(
                    data, resolved.input_type, pool=source.pool, allow_unknown=allow_unknown_fields
                )
            elif is_interactive(data):
                renderer.info(hint(resolved))
                requests = typed_requests(
                    resolved, source.pool, renderer.error, allow_unknown=allow_unknown_fields
                )
            else:
                requests = request_messages(
                    json_values(data),
                    resolved.input_type,
                    pool=source.pool,
                    allow_unknown=allow_unknown_fields,
                )

            own_limit = MessageLimit(
                connection.max_message_length,
                "call",
                f"--max-msg-mib {connection.max_msg_mib:g} of `grpctunnel call`",
            )

            async def calling() -> int:
                code = 0
                events = invoke(
                    connected.channel,
                    resolved,
                    requests,
                    metadata=connected.metadata,
                    timeout=connected.deadline.remaining(),
                )
                async for event in events:
                    if isinstance(event, CallStatus) and event.code is _EXHAUSTED:
                        explained = own_limit.explain(event.details)
                        if explained is not None:
                            event = dataclasses.replace(event, details=explained)
                    renderer.event(event)
                    if isinstance(event, CallStatus):
                        code = status_exit_code(event.code)
                        _hint(event.code)
                return code

            def _hint(code: grpc.StatusCode) -> None:
                if code is grpc.StatusCode.UNAUTHENTICATED:
                    renderer.info(f"  hint: {connected.security.token_hint()}")
                elif code is grpc.StatusCode.DEADLINE_EXCEEDED and connection.timeout:
                    renderer.info(
                        f"  hint: the call did not end within --timeout {connection.timeout:g}s "
                        "(which bounds connecting, reflection and the call)"
                    )

            return await connected.deadline.within(
                calling(), "waiting for the call", grace=_CALL_GRACE
            )

    run(body, renderer)
