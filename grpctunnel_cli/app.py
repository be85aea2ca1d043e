"""The `grpctunnel` command line: the Typer app, where every command is registered.

Commands live in their own modules (cmd_*.py); this module names them, puts them in the
help's panels, and makes their help read well at any width (see `_help`).
"""

from __future__ import annotations

import os

# grpc's C core prints its own log lines to stderr, which would only repeat, less clearly,
# what the command reports itself. Silence them unless the user asks (GRPC_VERBOSITY=debug).
# This must happen before grpc is first imported, hence before the imports below.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import inspect
from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from grpctunnel.allocator import tune_for_large_messages
from grpctunnel_cli import (
    cmd_call,
    cmd_demo,
    cmd_demo_backend,
    cmd_describe,
    cmd_expose,
    cmd_list,
    cmd_serve,
    cmd_tunnels,
)
from grpctunnel_cli.command import EXIT_CODES_HELP

__all__ = ["app", "main"]


class _Group(TyperGroup):
    """The top-level command, with ``--help`` listed as the switch it is."""

    def get_help_option(self, ctx: Any) -> Any:
        return _as_switch(super().get_help_option(ctx))


class _Command(TyperCommand):
    """A command, with ``--help`` listed as the switch it is."""

    def get_help_option(self, ctx: Any) -> Any:
        return _as_switch(super().get_help_option(ctx))


def _as_switch(option: Any) -> Any:
    """``--help`` without the ``<bool>`` value type Typer would list it with."""
    if option is not None:
        option.metavar = ""
    return option


def _help(command: Callable[..., None]) -> str:
    """A command's docstring as its help: the first paragraph a one-line summary (the
    command list shows it), the others reflowed to the terminal's width rather than
    broken where the source breaks them."""
    paragraphs = inspect.cleandoc(command.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


app = typer.Typer(
    name="grpctunnel",
    cls=_Group,
    help="gRPC tunnelled inside one gRPC stream: run a tunnel server (serve), publish a "
    "local backend through it (expose), and call any method by name through reflection "
    f"(call, list, describe). Start with `grpctunnel demo`.\n\n{EXIT_CODES_HELP}",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register(name: str, command: Callable[..., None], panel: str, epilog: str | None) -> None:
    app.command(name, cls=_Command, help=_help(command), epilog=epilog, rich_help_panel=panel)(
        command
    )


CALLING = "Calling a server (by reflection, like grpcurl)"
TUNNELS = "Tunnels"
TRYING = "Trying it out"

_register("call", cmd_call.call, CALLING, EXIT_CODES_HELP)
_register("list", cmd_list.list_services, CALLING, EXIT_CODES_HELP)
_register("describe", cmd_describe.describe, CALLING, EXIT_CODES_HELP)
_register("serve", cmd_serve.serve, TUNNELS, None)
_register("expose", cmd_expose.expose, TUNNELS, None)
_register("tunnels", cmd_tunnels.tunnels, TUNNELS, EXIT_CODES_HELP)
_register("demo", cmd_demo.demo, TRYING, None)
_register("demo-backend", cmd_demo_backend.demo_backend, TRYING, None)


def main() -> None:
    """The console script entry point."""
    # serve and expose relay messages of megabytes: keep their buffers' pages mapped
    tune_for_large_messages()
    app()
