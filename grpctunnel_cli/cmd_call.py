"""The `call` command: call a method by name, with JSON requests, printing JSON responses.

It reads its options, connects (client.py), resolves the method by reflection, runs the
call with invoke.py and leaves every byte of output to render.py.
"""

from __future__ import annotations

from typing import Annotated

import grpc
import typer

from grpctunnel_cli.client import ClientOptions, connect
from grpctunnel_cli.command import DEFAULT_CONNECT_TIMEOUT, run
from grpctunnel_cli.connect import DEFAULT_SERVER
from grpctunnel_cli.invoke import (
    CallStatus,
    invoke,
    json_values,
    request_messages,
    status_exit_code,
)
from grpctunnel_cli.options import (
    OUTPUT,
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
    switch,
    verbose_option,
)
from grpctunnel_cli.render import Renderer

__all__ = ["call"]


def call(
    method: Annotated[
        str,
        typer.Argument(
            metavar="METHOD",
            help="The method: pkg.Service/Method, pkg.Service.Method, or a short form such "
            "as Service/Method when it is unique.",
            show_default=False,
        ),
    ],
    data: Annotated[
        str | None,
        typer.Argument(
            metavar="DATA",
            help="Request JSON: inline, @FILE, or @- for stdin. Several JSON values (one per "
            "line, or concatenated) for client/bidi streaming. Omitted: an empty request "
            "(no requests for a streaming method).",
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
) -> None:
    """Call a method with JSON data; print each response as JSON.

    Resolves METHOD by the server's reflection, sends DATA, and prints each response as
    one JSON line (pretty JSON on a terminal). A call that ends with an error status
    prints it on stderr and exits 64 + its code.
    """
    client = ClientOptions(
        server, header, timeout, connect_timeout, token, token_file, tls, ca_cert, cert, key
    )
    renderer = Renderer(verbose=verbose, emit_defaults=emit_defaults, proto_names=proto_names)

    async def body() -> int:
        async with connect(client) as connection:
            source = connection.source
            resolved = await source.resolve_method(method)
            renderer.pool = source.pool
            renderer.request_start(resolved, connection.metadata)
            requests = request_messages(json_values(data), resolved.input_type, pool=source.pool)
            calling = invoke(
                connection.channel, resolved, requests, metadata=connection.metadata, timeout=timeout
            )
            code = 0
            async for event in calling:
                renderer.event(event)
                if isinstance(event, CallStatus):
                    code = status_exit_code(event.code)
                    if event.code is grpc.StatusCode.UNAUTHENTICATED:
                        renderer.info(f"  hint: {connection.security.token_hint()}")
            return code

    run(body, renderer)
