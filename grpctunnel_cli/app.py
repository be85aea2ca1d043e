"""The `grpctunnel` command line: the Typer app, where every command is registered.

Commands live in their own modules (cmd_*.py); this module only names and registers them.
"""

from __future__ import annotations

import os

# grpc's C core prints its own log lines to stderr, which would only repeat, less clearly,
# what the command reports itself. Silence them unless the user asks (GRPC_VERBOSITY=debug).
# This must happen before grpc is first imported, hence before the imports below.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import typer

from grpctunnel_cli import cmd_call, cmd_demo, cmd_demo_backend, cmd_expose, cmd_serve
from grpctunnel_cli.command import EXIT_CODES_HELP

__all__ = ["app", "main"]

app = typer.Typer(
    name="grpctunnel",
    help="gRPC tunnelled inside one gRPC stream: run a tunnel server (serve), publish a "
    "local backend through it (expose), and call any method by name through reflection "
    f"(call, list, describe). Start with `grpctunnel demo`.\n\n{EXIT_CODES_HELP}",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Calling a server (reflection-based, like grpcurl).
app.command("call", epilog=EXIT_CODES_HELP)(cmd_call.call)
app.command("list", epilog=EXIT_CODES_HELP)(cmd_call.list_services)
app.command("describe", epilog=EXIT_CODES_HELP)(cmd_call.describe)
# Tunnels.
app.command("serve")(cmd_serve.serve)
app.command("expose")(cmd_expose.expose)
# A first look, and something to expose.
app.command("demo")(cmd_demo.demo)
app.command("demo-backend")(cmd_demo_backend.demo_backend)


def main() -> None:
    """The console script entry point."""
    app()
