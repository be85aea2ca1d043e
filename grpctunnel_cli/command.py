"""What every command shares: common option types, exit codes, and running an async body.

`run` executes a command's coroutine and turns the outcome into the process exit status,
rendering a `CliError` as one ``ERROR:`` line (never a traceback). Commands return 0 or the
status-derived code (64 + gRPC status) themselves.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, NoReturn

import typer

from grpctunnel_cli.connect import DEFAULT_SERVER, SERVER_ENV
from grpctunnel_cli.errors import CliError
from grpctunnel_cli.render import Renderer

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_REFLECTION_TIMEOUT",
    "DEFAULT_SERVER",
    "EXIT_CODES_HELP",
    "EXIT_LOCAL_FAILURE",
    "EXIT_OK",
    "ConnectTimeoutOption",
    "HeaderOption",
    "ServerOption",
    "TimeoutOption",
    "VerboseOption",
    "check_timeout",
    "run",
]

EXIT_OK = 0
EXIT_LOCAL_FAILURE = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # as if killed by SIGPIPE, like other tools writing to a closed pipe

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_REFLECTION_TIMEOUT = 30.0

EXIT_CODES_HELP = (
    "Exit status: 0 success; 1 local failure (cannot connect, name does not resolve, bad "
    "JSON or headers); 2 usage error; 64 + N when the call ends with gRPC status code N "
    "(e.g. 69 for NOT_FOUND, 68 for DEADLINE_EXCEEDED)."
)

ServerOption = Annotated[
    str,
    typer.Option(
        "--server",
        "-s",
        envvar=SERVER_ENV,
        show_envvar=True,
        help="Server address, host:port.",
    ),
]
HeaderOption = Annotated[
    list[str] | None,
    typer.Option(
        "--header",
        "-H",
        help="Request metadata 'key: value' (repeatable; base64 value for keys ending -bin). "
        "Also sent on reflection requests.",
        show_default=False,
    ),
]
TimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        help="Deadline for the call, in seconds.",
        show_default=False,
    ),
]
ConnectTimeoutOption = Annotated[
    float,
    typer.Option(
        "--connect-timeout",
        help="Give up when no connection is made within this many seconds.",
    ),
]
VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Show request and response metadata, trailers and timing on stderr.",
    ),
]


def check_timeout(value: float | None, option: str) -> None:
    """Reject a non-positive timeout as a usage error (exit 2)."""
    if value is not None and not value > 0:
        raise typer.BadParameter("must be a positive number of seconds", param_hint=option)


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run(body: Callable[[], Coroutine[Any, Any, int]], renderer: Renderer) -> NoReturn:
    """Run a command's async body; exit with its code, or 1 after rendering a CliError."""
    try:
        code = asyncio.run(body())
    except CliError as error:
        renderer.error(error.message)
        code = error.exit_code
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        code = EXIT_BROKEN_PIPE
    raise typer.Exit(code)
