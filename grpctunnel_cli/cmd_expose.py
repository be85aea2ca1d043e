"""The `expose` command: publish a local gRPC backend through reverse tunnels to a
tunnel server (ssh -R for gRPC), and keep them up.

It reads the options into an `ExposeConfig` (compiling or reading any schema files, which
then describe the backend through the server in place of its reflection), refuses at
once TLS settings that cannot work, and runs the `Exposer` until signalled; on a terminal a live table shows its state.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table

from grpctunnel.gateway.exposer import ExposeConfig, ExposeError, Exposer, ExposeStats
from grpctunnel.gateway.metrics import ExposerMetrics, MetricsServer, serve_metrics
from grpctunnel_cli.command import on_stop_signal, run
from grpctunnel_cli.connect import open_channel, wait_until_ready
from grpctunnel_cli.errors import CliError, ConnectError, TlsMismatchError, UsageError
from grpctunnel_cli.logs import setup_logging
from grpctunnel_cli.options import (
    CONNECTION,
    DEFAULT_CONNECT_TIMEOUT,
    LogFormat,
    LogFormatOption,
    MetricsOptions,
    RelayOptions,
    SchemaOptions,
    SecurityOptions,
    option_groups,
    verbose_option,
)
from grpctunnel_cli.render import Renderer
from grpctunnel_cli.security import ClientSecurity

__all__ = ["expose"]

EXPOSING = "Exposing"

log = logging.getLogger("grpctunnel")


@option_groups
def expose(
    backend: Annotated[
        str,
        typer.Argument(
            metavar="BACKEND",
            help="The local backend, host:port (e.g. localhost:9000).",
        ),
    ],
    to: Annotated[
        list[str],
        typer.Option(
            "--to",
            metavar="HOST:PORT",
            help="The tunnel server. Repeat it (or separate by commas) for several, the "
            "nodes of a cluster say: they are tried in turn.",
            rich_help_panel=CONNECTION,
        ),
    ],
    connect_timeout: Annotated[
        float,
        typer.Option(
            "--connect-timeout",
            metavar="SECONDS",
            help="Time each attempt to open a tunnel may take (expose keeps retrying, "
            "with backoff, until stopped).",
            rich_help_panel=CONNECTION,
        ),
    ] = DEFAULT_CONNECT_TIMEOUT,
    backoff_cap: Annotated[
        float,
        typer.Option(
            "--max-backoff",
            min=0.1,
            metavar="SECONDS",
            help="Longest wait between reconnection attempts.",
            rich_help_panel=CONNECTION,
        ),
    ] = 10.0,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            metavar="NAME",
            help="The name callers can pin calls to (default: HOST/BACKEND).",
            rich_help_panel=EXPOSING,
        ),
    ] = None,
    service: Annotated[
        list[str] | None,
        typer.Option(
            "--service",
            metavar="SERVICE",
            help="A service to announce (repeatable); default: those of --proto/--protoset "
            "files, else the backend's, by reflection.",
            rich_help_panel=EXPOSING,
        ),
    ] = None,
    tunnels: Annotated[
        int,
        typer.Option(
            "--tunnels",
            min=1,
            max=64,
            metavar="N",
            help="Tunnels to keep open, for concurrency.",
            rich_help_panel=EXPOSING,
        ),
    ] = 1,
    *,
    security_options: SecurityOptions,
    relay: RelayOptions,
    schema: SchemaOptions,
    verbose: Annotated[
        bool,
        verbose_option("Also log one line per relayed call (method, status, time, tunnel)."),
    ] = False,
    log_format: LogFormatOption = LogFormat.plain,
    metrics: MetricsOptions,
) -> None:
    """Publish a local backend through reverse tunnels to a server.

    Exposes BACKEND through reverse tunnels to the tunnel server given with --to, and
    keeps them up: reconnects with backoff when the server goes away (to the next one,
    given several). With --proto or --protoset, reflection through the server is
    answered from those files, for a backend that has none. Logs go to stderr;
    on a terminal, a live table shows the tunnels and calls.
    """
    renderer = Renderer()
    console = setup_logging(verbose, log_format=log_format.value)
    metrics.prepare()

    async def body() -> int:
        security = security_options.read()
        if security.insecure or security.server_name is not None:
            raise UsageError(
                "--insecure and --servername are options of call, list and describe; "
                "expose verifies the server with --ca-cert"
            )
        servers = list(dict.fromkeys(s.strip() for entry in to for s in entry.split(",")))
        servers = [s for s in servers if s]
        if not servers:
            raise UsageError("--to needs a server, HOST:PORT")
        files = await asyncio.to_thread(schema.load)
        await asyncio.gather(*(_check_tls(s, security, connect_timeout) for s in servers))
        config = ExposeConfig(
            backend=backend,
            server=servers,
            name=name or f"{socket.gethostname()}/{backend}",
            services=tuple(service or ()),
            tunnels=tunnels,
            backoff_cap=backoff_cap,
            connect_timeout=connect_timeout,
            metadata=security.metadata(),
            server_credentials=security.credentials(),
            keepalive_interval=relay.keepalive_interval,
            keepalive_timeout=relay.keepalive_timeout,
            establishment_timeout=relay.establishment_timeout,
            max_message_length=relay.max_message_length,
            schema=files,
            limit_raised_by=f"--max-message-mib {relay.max_message_mib} of `grpctunnel expose`",
        )
        live: Live | None = None

        def status() -> Table:
            return _status_table(config, exposer.stats)

        def on_change(stats: ExposeStats) -> None:
            if live is not None:
                live.update(status())

        exposer_metrics = ExposerMetrics() if metrics.port is not None else None
        exposer = Exposer(config, on_change=on_change, metrics=exposer_metrics)
        metrics_server = _serve_metrics(exposer_metrics, metrics)
        try:
            with on_stop_signal(exposer.stop):
                if console.is_terminal and log_format is LogFormat.plain:
                    with Live(status(), console=console, refresh_per_second=4) as live:
                        await exposer.run()
                else:
                    await exposer.run()
        except ExposeError as e:
            message = str(e)
            if "UNAUTHENTICATED" in message:
                message += f"\n  hint: {security.token_hint()}"
            raise CliError(message) from None
        finally:
            if metrics_server is not None:
                metrics_server.close()
        return 0

    run(body, renderer)


def _serve_metrics(metrics: ExposerMetrics | None, options: MetricsOptions) -> MetricsServer | None:
    """Serves the exposer's metrics, when asked for (--metrics-port)."""
    if metrics is None or options.port is None:
        return None
    try:
        server = serve_metrics(metrics.registry, options.host, options.port)
    except OSError as error:
        raise CliError(
            f"cannot serve metrics on {options.host}:{options.port}: {error.strerror or error}"
        ) from None
    log.info("metrics at %s", server.url, extra={"event": "metrics_listening", "peer": server.url})
    return server


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


def _status_table(config: ExposeConfig, stats: ExposeStats) -> Table:
    """The live view: what is exposed where, the tunnels up, the calls relayed."""
    table = Table(show_header=False, box=None, padding=(0, 1))
    color = {"connected": "green", "reconnecting": "yellow"}.get(stats.state, "cyan")
    state = stats.state
    if state == "reconnecting" and stats.last_error.startswith("cannot reach backend"):
        state = f"waiting for backend {config.backend}"
    server = stats.server or ", ".join(config.servers)
    table.add_row("expose", f"{config.backend} → {server} as [bold]{config.name}[/]")
    table.add_row("state", f"[{color}]{state}[/] ({stats.tunnels_up}/{config.tunnels} tunnels up)")
    table.add_row(
        "calls",
        f"{stats.calls_in_flight} in flight, {stats.calls_total} done, {stats.calls_failed} failed",
    )
    if stats.last_error:
        table.add_row("last error", f"[red]{stats.last_error}[/]")
    return table
