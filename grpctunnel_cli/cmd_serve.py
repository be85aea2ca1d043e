"""The `serve` command: a tunnel server that is also a gateway to exposed services."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Annotated

import grpc
import typer

from grpctunnel import keepalive
from grpctunnel.gateway.auth import AuthConfigError, TokenAuthority
from grpctunnel_cli.command import VerboseOption, run
from grpctunnel_cli.errors import CliError, UsageError
from grpctunnel_cli.logs import setup_logging
from grpctunnel_cli.render import Renderer
from grpctunnel_cli.security import TOKEN_ENV, is_loopback, read_file

__all__ = ["serve"]

log = logging.getLogger("grpctunnel")

MIB = 1024 * 1024
DEFAULT_MAX_STREAMS = 1000  # as grpctunnel.gateway.server.DEFAULT_MAX_STREAMS_PER_TUNNEL


def _authority(token: str | None, token_file: Path | None) -> TokenAuthority | None:
    """The tokens to require: --token, --token-file or $GRPCTUNNEL_TOKEN; None for none."""
    if token is not None and token_file is not None:
        raise UsageError("give either --token or --token-file, not both")
    if token_file is not None:
        try:
            return TokenAuthority.from_file(token_file)
        except OSError as error:
            raise CliError(
                f"cannot read --token-file {token_file}: {error.strerror or error}"
            ) from None
        except AuthConfigError as error:
            raise CliError(f"bad --token-file: {error}") from None
    text = token if token is not None else os.environ.get(TOKEN_ENV)
    if text is None or (token is None and not text.strip()):
        return None
    if not text.strip():
        raise UsageError("--token is empty")
    return TokenAuthority.single(text.strip())


def _server_credentials(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> grpc.ServerCredentials | None:
    if (cert is None) != (key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if cert is None or key is None:
        if client_ca is not None:
            raise UsageError("--client-ca needs --tls-cert and --tls-key")
        return None
    pair = (read_file(key, "--tls-key"), read_file(cert, "--tls-cert"))
    if client_ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair], root_certificates=read_file(client_ca, "--client-ca"), require_client_auth=True
    )


def serve(
    port: Annotated[
        int, typer.Option("--port", "-p", min=0, max=65535, help="Port to listen on; 0 picks one.")
    ] = 50051,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    grace: Annotated[
        float,
        typer.Option(
            "--grace", min=0, help="On Ctrl-C or SIGTERM, seconds to let calls in flight finish."
        ),
    ] = 10.0,
    max_message_mib: Annotated[
        int, typer.Option("--max-message-mib", min=1, help="Largest message relayed, in MiB.")
    ] = 64,
    max_streams: Annotated[
        int,
        typer.Option(
            "--max-streams-per-tunnel",
            min=1,
            help="Calls one forward tunnel may have in progress at once; beyond, "
            "RESOURCE_EXHAUSTED.",
        ),
    ] = DEFAULT_MAX_STREAMS,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help=f"Require this bearer token of every tunnel and call (default: ${TOKEN_ENV}).",
            show_default=False,
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="Require a token from this file: one token, or JSON with a token per "
            "credential and its rights (see README, Security).",
            show_default=False,
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert", help="Serve TLS with this certificate (PEM).", show_default=False
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", help="Private key (PEM) of --tls-cert.", show_default=False),
    ] = None,
    client_ca: Annotated[
        Path | None,
        typer.Option(
            "--client-ca",
            help="Mutual TLS: require client certificates signed by this CA (PEM).",
            show_default=False,
        ),
    ] = None,
    allow_insecure: Annotated[
        bool,
        typer.Option(
            "--allow-insecure",
            help="Listen on a non-loopback address with neither TLS nor a token.",
        ),
    ] = False,
    keepalive_interval: Annotated[
        float,
        typer.Option(
            "--keepalive-interval",
            min=0.1,
            help="Seconds between keepalive pings on each connection.",
        ),
    ] = keepalive.DEFAULT_INTERVAL,
    keepalive_timeout: Annotated[
        float,
        typer.Option(
            "--keepalive-timeout",
            min=0.1,
            help="Seconds without a ping answer before a connection (and its tunnels) is given up.",
        ),
    ] = keepalive.DEFAULT_TIMEOUT,
    verbose: VerboseOption = False,
) -> None:
    """Run a tunnel server: accepts forward and reverse tunnels, and routes calls for
    services exposed through reverse tunnels (`grpctunnel expose`) to them. Serves
    reflection (merged across every exposed backend) and health."""
    renderer = Renderer()
    setup_logging(verbose)

    async def body() -> int:
        from grpctunnel.gateway import BindError, GatewayServer, GatewaySettings

        authority = _authority(token, token_file)
        credentials = _server_credentials(tls_cert, tls_key, client_ca)
        if not is_loopback(host) and credentials is None and authority is None:
            if not allow_insecure:
                raise UsageError(
                    f"refusing to listen on {host} with neither TLS nor a token: anyone who "
                    "can reach it could expose services through it and call every exposed "
                    "backend. Add --tls-cert/--tls-key, --token/--token-file (or "
                    f"${TOKEN_ENV}), or --allow-insecure if the network itself is trusted."
                )
            log.warning(
                "listening on %s with neither TLS nor a token (--allow-insecure): "
                "anyone who can reach it can use it",
                host,
            )
        elif authority is not None and credentials is None and not is_loopback(host):
            log.warning("tokens travel in clear text without TLS (--tls-cert/--tls-key)")

        def observe(method: str, code: grpc.StatusCode, seconds: float) -> None:
            log.debug("call %s %s %.1f ms", method, code.name, seconds * 1000)

        gateway_server = GatewayServer(
            GatewaySettings(
                host=host,
                port=port,
                credentials=credentials,
                authority=authority,
                max_message_length=max_message_mib * MIB,
                max_streams_per_tunnel=max_streams,
                keepalive_interval=keepalive_interval,
                keepalive_timeout=keepalive_timeout,
                observer=observe,
            )
        )
        try:
            bound = await gateway_server.start()
        except BindError as error:
            raise CliError(str(error)) from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        shown = f"[{host}]" if ":" in host else host
        log.info(
            "tunnel server listening on %s:%d (%s, %s)",
            shown,
            bound,
            ("mutual TLS" if client_ca else "TLS") if credentials is not None else "plaintext",
            "tokens required" if authority is not None else "no token required",
        )
        try:
            await stop.wait()
        finally:
            log.info("shutting down: letting calls in flight finish (up to %gs)", grace)
            await gateway_server.stop(grace)
            log.info("stopped")
        return 0

    run(body, renderer)
