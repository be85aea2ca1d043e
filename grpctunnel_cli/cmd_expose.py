"""The `expose` command: publish a local gRPC backend through reverse tunnels to a
tunnel server (ssh -R for gRPC)."""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table

from grpctunnel import keepalive
from grpctunnel_cli.command import ConnectTimeoutOption, VerboseOption, run
from grpctunnel_cli.connect import open_channel, wait_until_ready
from grpctunnel_cli.errors import CliError, ConnectError, TlsMismatchError
from grpctunnel_cli.logs import setup_logging
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

__all__ = ["expose"]


def expose(
    backend: Annotated[
        str,
        typer.Argument(
            help="The local backend, host:port (e.g. localhost:9000).", show_default=False
        ),
    ],
    to: Annotated[
        str, typer.Option("--to", help="The tunnel server, host:port.", show_default=False)
    ],
    name: Annotated[
        str | None,
        typer.Option("--name", help="The name callers can pin calls to (default: HOST/BACKEND)."),
    ] = None,
    service: Annotated[
        list[str] | None,
        typer.Option(
            "--service",
            help="A service to announce (repeatable); default: the backend's, by reflection.",
        ),
    ] = None,
    tunnels: Annotated[
        int, typer.Option("--tunnels", min=1, max=64, help="Tunnels to keep open, for concurrency.")
    ] = 1,
    backoff_cap: Annotated[
        float,
        typer.Option(
            "--max-backoff", min=0.1, help="Longest wait between reconnection attempts, in seconds."
        ),
    ] = 10.0,
    connect_timeout: ConnectTimeoutOption = 10.0,
    max_message_mib: Annotated[
        int, typer.Option("--max-message-mib", min=1, help="Largest message relayed, in MiB.")
    ] = 64,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    tls: TlsOption = False,
    ca_cert: CaCertOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    keepalive_interval: Annotated[
        float,
        typer.Option(
            "--keepalive-interval",
            min=0.1,
            help="Seconds between keepalive pings to the server.",
        ),
    ] = keepalive.DEFAULT_INTERVAL,
    keepalive_timeout: Annotated[
        float,
        typer.Option(
            "--keepalive-timeout",
            min=0.1,
            help="Seconds without a ping answer before the connection is given up and redialled.",
        ),
    ] = keepalive.DEFAULT_TIMEOUT,
    verbose: VerboseOption = False,
) -> None:
    """Expose BACKEND through reverse tunnels to the server given with --to, and keep
    them up: reconnects with backoff when the server goes away."""
    renderer = Renderer()
    console = setup_logging(verbose)

    async def body() -> int:
        from grpctunnel.gateway.exposer import ExposeConfig, ExposeError, Exposer, ExposeStats

        security = client_security(
            token=token, token_file=token_file, tls=tls, ca_cert=ca_cert, cert=cert, key=key
        )
        await _check_tls(to, security, connect_timeout)
        config = ExposeConfig(
            backend=backend,
            server=to,
            name=name or f"{socket.gethostname()}/{backend}",
            services=tuple(service or ()),
            tunnels=tunnels,
            backoff_cap=backoff_cap,
            connect_timeout=connect_timeout,
            metadata=security.metadata(),
            server_credentials=security.credentials(),
            keepalive_interval=keepalive_interval,
            keepalive_timeout=keepalive_timeout,
            max_message_length=max_message_mib * 1024 * 1024,
        )
        live: Live | None = None

        def on_change(stats: ExposeStats) -> None:
            if live is not None:
                live.update(_status_table(config.name, backend, to, tunnels, stats))

        exposer = Exposer(config, on_change=on_change)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, exposer.stop)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            if console.is_terminal:
                with Live(
                    _status_table(config.name, backend, to, tunnels, exposer.stats),
                    console=console,
                    refresh_per_second=4,
                    transient=False,
                ) as live_display:
                    live = live_display
                    await exposer.run()
            else:
                await exposer.run()
        except ExposeError as e:
            message = str(e)
            if "UNAUTHENTICATED" in message:
                message += f"\n  hint: {security.token_hint()}"
            raise CliError(message) from None
        return 0

    run(body, renderer)


async def _check_tls(server: str, security: ClientSecurity, timeout: float) -> None:
    """Refuses to start when a first connection to ``server`` shows that TLS settings
    cannot work (plaintext against TLS or the reverse, a certificate not trusted or
    refused); any other failure is left to the exposer, which retries."""
    channel = open_channel(server, security)
    try:
        await wait_until_ready(channel, server, min(timeout, 5.0), security)
    except TlsMismatchError:
        raise
    except ConnectError:
        pass  # the exposer says why, and retries
    finally:
        await channel.close(None)


def _status_table(name: str, backend: str, server: str, wanted: int, stats: object) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 1))
    state = getattr(stats, "state", "")
    color = {"connected": "green", "reconnecting": "yellow"}.get(state, "cyan")
    table.add_row("expose", f"{backend} → {server} as [bold]{name}[/]")
    table.add_row(
        "state", f"[{color}]{state}[/] ({getattr(stats, 'tunnels_up', 0)}/{wanted} tunnels up)"
    )
    table.add_row(
        "calls",
        f"{getattr(stats, 'calls_in_flight', 0)} in flight, {getattr(stats, 'calls_total', 0)} done, "
        f"{getattr(stats, 'calls_failed', 0)} failed",
    )
    error = getattr(stats, "last_error", "")
    if error:
        table.add_row("last error", f"[red]{error}[/]")
    return table
