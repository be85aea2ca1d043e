"""The commands that talk to a server through reflection: `call`, `list` and `describe`.

Each parses its options, connects, resolves names with reflection.py, runs the call with
invoke.py and leaves every byte of output to render.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import grpc
import typer

from grpctunnel_cli.command import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_REFLECTION_TIMEOUT,
    DEFAULT_SERVER,
    ConnectTimeoutOption,
    HeaderOption,
    ServerOption,
    TimeoutOption,
    VerboseOption,
    check_timeout,
    run,
)
from grpctunnel_cli.connect import connected_channel
from grpctunnel_cli.errors import StatusError
from grpctunnel_cli.invoke import (
    CallStatus,
    invoke,
    json_values,
    request_messages,
    status_exit_code,
)
from grpctunnel_cli.metadata import parse_headers
from grpctunnel_cli.reflection import DescriptorSource
from grpctunnel_cli.render import Renderer
from grpctunnel_cli.security import (
    CaCertOption,
    CertOption,
    ClientSecurity,
    KeyOption,
    TlsOption,
    TokenFileOption,
    TokenOption,
    client_security,
)

__all__ = ["call", "describe", "list_services"]


def call(
    method: Annotated[
        str,
        typer.Argument(
            help="The method: pkg.Service/Method, pkg.Service.Method, or a short form such "
            "as Service/Method when it is unique.",
            show_default=False,
        ),
    ],
    data: Annotated[
        str | None,
        typer.Argument(
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
    emit_defaults: Annotated[
        bool, typer.Option("--emit-defaults", help="Show fields that hold default values.")
    ] = False,
    proto_names: Annotated[
        bool,
        typer.Option("--proto-names", help="Use proto field names (snake_case) in output."),
    ] = False,
    verbose: VerboseOption = False,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    tls: TlsOption = False,
    ca_cert: CaCertOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
) -> None:
    """Call a method, with JSON request data, and print each response as JSON."""
    check_timeout(timeout, "--timeout")
    check_timeout(connect_timeout, "--connect-timeout")
    renderer = Renderer(verbose=verbose, emit_defaults=emit_defaults, proto_names=proto_names)

    async def body() -> int:
        security = client_security(
            token=token, token_file=token_file, tls=tls, ca_cert=ca_cert, cert=cert, key=key
        )
        metadata = (*parse_headers(header or ()), *security.metadata())
        async with _connected(server, connect_timeout, security) as channel:
            source = DescriptorSource(
                channel, metadata=metadata, timeout=timeout or DEFAULT_REFLECTION_TIMEOUT
            )
            resolved = await source.resolve_method(method)
            renderer.pool = source.pool
            renderer.request_start(resolved, metadata)
            requests = request_messages(json_values(data), resolved.input_type, pool=source.pool)
            code = 0
            async for event in invoke(
                channel, resolved, requests, metadata=metadata, timeout=timeout
            ):
                renderer.event(event)
                if isinstance(event, CallStatus):
                    code = status_exit_code(event.code)
                    if event.code is grpc.StatusCode.UNAUTHENTICATED:
                        renderer.info(f"  hint: {security.token_hint()}")
            return code

    run(body, renderer)


def list_services(
    service: Annotated[
        str | None,
        typer.Argument(
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
    """List the services the server offers, or the methods of one service."""
    check_timeout(timeout, "--timeout")
    check_timeout(connect_timeout, "--connect-timeout")
    renderer = Renderer()

    async def body() -> int:
        security = client_security(
            token=token, token_file=token_file, tls=tls, ca_cert=ca_cert, cert=cert, key=key
        )
        metadata = (*parse_headers(header or ()), *security.metadata())
        async with _connected(server, connect_timeout, security) as channel:
            source = DescriptorSource(
                channel, metadata=metadata, timeout=timeout or DEFAULT_REFLECTION_TIMEOUT
            )
            if service is None:
                renderer.names(await source.list_services())
            else:
                found = await source.resolve_service(service)
                renderer.names(f"{found.full_name}.{m.name}" for m in found.methods)
        return 0

    run(body, renderer)


def describe(
    symbol: Annotated[
        str | None,
        typer.Argument(
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
    """Show the definition of a service, method, message or enum, as proto source."""
    check_timeout(timeout, "--timeout")
    check_timeout(connect_timeout, "--connect-timeout")
    renderer = Renderer()

    async def body() -> int:
        security = client_security(
            token=token, token_file=token_file, tls=tls, ca_cert=ca_cert, cert=cert, key=key
        )
        metadata = (*parse_headers(header or ()), *security.metadata())
        async with _connected(server, connect_timeout, security) as channel:
            source = DescriptorSource(
                channel, metadata=metadata, timeout=timeout or DEFAULT_REFLECTION_TIMEOUT
            )
            if symbol is None:
                for found in await source.services():
                    renderer.describe(found)
            else:
                renderer.describe(await source.resolve_symbol(symbol))
        return 0

    run(body, renderer)


@asynccontextmanager
async def _connected(
    server: str, connect_timeout: float, security: ClientSecurity
) -> AsyncIterator[grpc.aio.Channel]:
    """The connected channel; a refusal for want of credentials gets a hint."""
    try:
        async with connected_channel(
            server, connect_timeout=connect_timeout, security=security
        ) as channel:
            yield channel
    except StatusError as error:
        if error.code is grpc.StatusCode.UNAUTHENTICATED and not error.hint:
            error.hint = security.token_hint()
        raise
