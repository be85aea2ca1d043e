"""The `grpctunnel` command line: the Typer app, where every command is registered.

Commands live in their own modules (cmd_*.py); this module names them, puts them in the
help's panels, and makes their help read well at any width (see `_help`). A command's
module is imported only when that command runs (or the top-level help lists them all): the
modules of `serve` import the whole gateway, which `call` in a shell loop should not pay for.
"""

from __future__ import annotations

import os

# grpc's C core prints its own log lines to stderr, which would only repeat, less clearly,
# what the command reports itself. Silence them unless the user asks (GRPC_VERBOSITY=debug).
# This must happen before grpc is first imported, hence before the imports below.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from typing import Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

from grpctunnel_cli.coercion import quicken
from grpctunnel_cli.command import EXIT_CODES_HELP

__all__ = ["build_app", "exit_now", "main"]


class _Group(TyperGroup):
    """The top-level command, with ``--help`` and the completion options (added by Typer
    after the group is made) listed as the switches they are."""

    def get_help_option(self, ctx: Any) -> Any:
        return _as_switch(super().get_help_option(ctx))

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)
        for param in params:
            if param.name in _COMPLETION_SWITCHES and getattr(param, "is_flag", False):
                _as_switch(param)
        return params


_COMPLETION_SWITCHES = ("install_completion", "show_completion")


class _Command(TyperCommand):
    """A command, with ``--help`` listed as the switch it is, and the quick conversion of
    its plain option values (coercion.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        quicken(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        return _as_switch(super().get_help_option(ctx))


def _as_switch(option: Any) -> Any:
    """``--help`` without the ``<bool>`` value type Typer would list it with (and with the
    quick conversion of its value, coercion.py)."""
    if option is not None:
        option.metavar = ""
        quicken([option])
    return option


def _help(command: Callable[..., None]) -> str:
    """A command's docstring as its help: the first paragraph a one-line summary (the
    command list shows it), the others reflowed to the terminal's width rather than
    broken where the source breaks them."""
    paragraphs = inspect.cleandoc(command.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


CALLING = "Calling a server (by reflection, like grpcurl)"
TUNNELS = "Tunnels"
TRYING = "Trying it out"

# Each command: its module and function, its help panel, and its epilog, in help order.
COMMANDS: dict[str, tuple[str, str, str, str | None]] = {
    "call": ("cmd_call", "call", CALLING, EXIT_CODES_HELP),
    "list": ("cmd_list", "list_services", CALLING, EXIT_CODES_HELP),
    "describe": ("cmd_describe", "describe", CALLING, EXIT_CODES_HELP),
    "serve": ("cmd_serve", "serve", TUNNELS, None),
    "expose": ("cmd_expose", "expose", TUNNELS, None),
    "tunnels": ("cmd_tunnels", "tunnels", TUNNELS, EXIT_CODES_HELP),
    "demo": ("cmd_demo", "demo", TRYING, None),
    "demo-backend": ("cmd_demo_backend", "demo_backend", TRYING, None),
}


def _grouped() -> None:
    """Keeps an app of one command a group of commands (see `build_app`)."""


def build_app(only: str | None = None) -> typer.Typer:
    """The app with every command, or with command `only` alone (its module the only one
    imported), which parses that command's arguments exactly as the whole app would."""
    app = typer.Typer(
        name="grpctunnel",
        cls=_Group,
        help="gRPC tunnelled inside one gRPC stream: run a tunnel server (serve), publish a "
        "local backend through it (expose), and call any method by name through reflection "
        f"(call, list, describe). Start with `grpctunnel demo`.\n\n{EXIT_CODES_HELP}",
        no_args_is_help=True,
        add_completion=True,
        pretty_exceptions_show_locals=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    for name, (module, function, panel, epilog) in COMMANDS.items():
        if only is not None and name != only:
            continue
        command = getattr(import_module(f"grpctunnel_cli.{module}"), function)
        app.command(name, cls=_Command, help=_help(command), epilog=epilog, rich_help_panel=panel)(
            command
        )
    if only is not None:
        # Typer runs an app of one command as that command; a callback keeps it a group.
        app.callback()(_grouped)
    return app


def chosen_command(args: Sequence[str]) -> str | None:
    """The command the arguments run, when the first of them names one."""
    return args[0] if args and args[0] in COMMANDS else None


COMPLETE_VAR = "_GRPCTUNNEL_COMPLETE"  # set by the shell's completion script (click's protocol)


def completed_command(environ: Mapping[str, str]) -> str | None:
    """During a shell completion, the command whose words are being completed: the line so
    far is in $COMP_WORDS and $COMP_CWORD (bash), or in $_TYPER_COMPLETE_ARGS (zsh, fish,
    PowerShell). None while the command's own name is being completed."""
    if "COMP_WORDS" in environ:
        words = environ["COMP_WORDS"].split()
        try:
            done = words[: int(environ.get("COMP_CWORD", ""))]
        except ValueError:
            return None
    else:
        line = environ.get("_TYPER_COMPLETE_ARGS", "")
        words = line.split()
        done = words if line[-1:].isspace() else words[:-1]
    return chosen_command(done[1:])


# The commands that end as soon as their output is written: they may skip Python's teardown.
QUICK_EXIT = frozenset({"call", "list", "describe"})
# The commands that relay messages for as long as they run: the allocator is tuned for them.
RELAYING = frozenset({"serve", "expose", "demo", "demo-backend"})


def exit_now(code: object) -> NoReturn:
    """Exit with `code` as ``sys.exit(code)`` would, but without Python's teardown (freeing
    every module, grpc's shutdown): some 30 ms, a sixth of a short call's run. Output is
    flushed first; the client commands leave no thread or handler that teardown would wait
    for (stdin is read on a daemon thread)."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: nothing more can be said
            pass
    os._exit(status)


def main() -> None:
    """The console script entry point."""
    completing = COMPLETE_VAR in os.environ
    chosen = completed_command(os.environ) if completing else chosen_command(sys.argv[1:])
    if chosen in RELAYING:
        # they relay messages of megabytes (keep their buffers' pages mapped), and may
        # hold thousands of tunnels (keep the collector from walking them all often)
        from grpctunnel.allocator import tune_for_large_messages
        from grpctunnel.collector import tune_for_many_tunnels

        tune_for_large_messages()
        tune_for_many_tunnels()
    app = build_app(chosen)
    if not completing and chosen not in QUICK_EXIT:
        app()
        return
    try:
        app()
    except SystemExit as stop:
        exit_now(stop.code)
