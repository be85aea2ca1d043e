"""What every command shares to run: exit codes, its async body, and stopping on a signal.

`run` executes a command's coroutine and turns the outcome into the process exit status,
rendering a `CliError` as one ``ERROR:`` line (never a traceback). Commands return 0 or the
status-derived code (64 + gRPC status) themselves. The commands that serve until told to
stop (serve, expose, demo-backend) catch SIGINT and SIGTERM with `on_stop_signal`, or wait
for them with `until_signalled`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer

from grpctunnel_cli.errors import CliError
from grpctunnel_cli.render import Renderer

__all__ = ["EXIT_CODES_HELP", "on_stop_signal", "run", "until_signalled"]

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # as if killed by SIGPIPE, like other tools writing to a closed pipe

EXIT_CODES_HELP = (
    "Exit status: 0 success; 1 local failure (cannot connect, name does not resolve, bad "
    "JSON or headers); 2 usage error; 64 + N when the call ends with gRPC status code N "
    "(e.g. 69 for NOT_FOUND, 68 for DEADLINE_EXCEEDED)."
)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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


@contextmanager
def on_stop_signal(handler: Callable[[], None]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM (Ctrl-C, a service manager stopping the command)
    call ``handler`` instead of ending the process; leaving gives them back the handling
    they had. Where the running loop cannot catch signals, nothing changes."""
    loop = asyncio.get_running_loop()
    caught: list[tuple[signal.Signals, Any]] = []
    try:
        for signum in STOP_SIGNALS:
            previous = signal.getsignal(signum)
            try:
                loop.add_signal_handler(signum, handler)
            except (NotImplementedError, RuntimeError):  # not on this platform or thread
                continue
            caught.append((signum, previous))
        yield
    finally:
        for signum, previous in caught:
            loop.remove_signal_handler(signum)
            if previous is not None:
                signal.signal(signum, previous)


async def until_signalled(
    stop: Callable[[], Awaitable[object]], *, ready: Callable[[], None] | None = None
) -> None:
    """The run loop of a command that serves until told to stop: catch SIGINT and
    SIGTERM, call ``ready`` (whoever sees what it prints may signal from then on), wait
    for a signal, then await ``stop()``. The signals stay caught while it runs, so a
    second one cannot cut a graceful stop short."""
    stopping = asyncio.Event()
    with on_stop_signal(stopping.set):
        try:
            if ready is not None:
                ready()
            await stopping.wait()
        finally:
            await stop()
