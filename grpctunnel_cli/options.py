"""The options more than one command takes, declared once: name, help, metavar and panel.

A command takes one as a parameter annotation (``server: ServerOption = DEFAULT_SERVER``),
so the option reads and behaves the same in every command that has it; reading what was
given stays with the command (security.py, client.py). An option of one command only is
declared with its command. `verbose_option` is the one shared option whose help each
command writes itself, since ``-v`` shows something different in each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from grpctunnel_cli.connect import SERVER_ENV
from grpctunnel_cli.security import TOKEN_ENV

__all__ = [
    "CONNECTION",
    "KEEPALIVE",
    "LIMITS",
    "LISTENING",
    "OUTPUT",
    "SECURITY",
    "CaCertOption",
    "CertOption",
    "ConnectTimeoutOption",
    "HeaderOption",
    "HostOption",
    "KeepaliveIntervalOption",
    "KeepaliveTimeoutOption",
    "KeyOption",
    "MaxMessageMibOption",
    "PortOption",
    "ServerOption",
    "TimeoutOption",
    "TlsOption",
    "TokenFileOption",
    "TokenOption",
    "switch",
    "verbose_option",
]

# The help panels options are grouped in.
CONNECTION = "Connection"
LISTENING = "Listening"
SECURITY = "Security"
LIMITS = "Limits"
KEEPALIVE = "Keepalive"
OUTPUT = "Output"


def switch(*names: str, help: str, panel: str) -> Any:
    """An on/off option: listed without a value type, since it takes none."""
    return typer.Option(*names, help=help, metavar="", rich_help_panel=panel)


def verbose_option(help: str) -> Any:
    """``--verbose``/``-v``, with what it shows in this command."""
    return switch("--verbose", "-v", help=help, panel=OUTPUT)


# --- connecting to a server ---------------------------------------------------------------

ServerOption = Annotated[
    str,
    typer.Option(
        "--server",
        "-s",
        envvar=SERVER_ENV,
        show_envvar=True,
        metavar="HOST:PORT",
        help="Server to connect to.",
        rich_help_panel=CONNECTION,
    ),
]
HeaderOption = Annotated[
    list[str] | None,
    typer.Option(
        "--header",
        "-H",
        metavar="'KEY: VALUE'",
        help="Request metadata, repeatable; base64 values for keys ending in -bin. "
        "Sent with reflection requests too.",
        show_default=False,
        rich_help_panel=CONNECTION,
    ),
]
TimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="Deadline of the call, and of each reflection request (those default to 30).",
        show_default=False,
        rich_help_panel=CONNECTION,
    ),
]
ConnectTimeoutOption = Annotated[
    float,
    typer.Option(
        "--connect-timeout",
        metavar="SECONDS",
        help="Give up when no connection is made within this time.",
        rich_help_panel=CONNECTION,
    ),
]

# --- client security: TLS and a bearer token ------------------------------------------------

TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="TOKEN",
        help=f"Bearer token to send as 'authorization: Bearer ...' (default: ${TOKEN_ENV}).",
        show_default=False,
        rich_help_panel=SECURITY,
    ),
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        metavar="FILE",
        help="Read the bearer token from this file.",
        show_default=False,
        rich_help_panel=SECURITY,
    ),
]
TlsOption = Annotated[
    bool, switch("--tls", help="Connect with TLS (implied by --ca-cert or --cert).", panel=SECURITY)
]
CaCertOption = Annotated[
    Path | None,
    typer.Option(
        "--ca-cert",
        metavar="FILE",
        help="CA certificate (PEM) to verify the server with; default: the system's.",
        show_default=False,
        rich_help_panel=SECURITY,
    ),
]
CertOption = Annotated[
    Path | None,
    typer.Option(
        "--cert",
        metavar="FILE",
        help="Client certificate (PEM), for servers requiring one.",
        show_default=False,
        rich_help_panel=SECURITY,
    ),
]
KeyOption = Annotated[
    Path | None,
    typer.Option(
        "--key",
        metavar="FILE",
        help="Private key (PEM) of --cert.",
        show_default=False,
        rich_help_panel=SECURITY,
    ),
]

# --- listening --------------------------------------------------------------------------------

HostOption = Annotated[
    str,
    typer.Option("--host", metavar="ADDRESS", help="Address to listen on.", rich_help_panel=LISTENING),
]
PortOption = Annotated[
    int,
    typer.Option(
        "--port",
        "-p",
        min=0,
        max=65535,
        metavar="PORT",
        help="Port to listen on; 0 picks a free one.",
        rich_help_panel=LISTENING,
    ),
]

# --- relaying: message size and keepalive -----------------------------------------------------

MaxMessageMibOption = Annotated[
    int,
    typer.Option(
        "--max-message-mib",
        min=1,
        metavar="MIB",
        help="Largest message relayed, in MiB.",
        rich_help_panel=LIMITS,
    ),
]
KeepaliveIntervalOption = Annotated[
    float,
    typer.Option(
        "--keepalive-interval",
        min=0.1,
        metavar="SECONDS",
        help="Time between keepalive pings on each connection.",
        rich_help_panel=KEEPALIVE,
    ),
]
KeepaliveTimeoutOption = Annotated[
    float,
    typer.Option(
        "--keepalive-timeout",
        min=0.1,
        metavar="SECONDS",
        help="Time without a ping answer before a connection is dropped, with its tunnels.",
        rich_help_panel=KEEPALIVE,
    ),
]
