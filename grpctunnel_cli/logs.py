"""Log output of the long-running commands (serve, expose): one place that decides how
log lines look: rich and colored on a terminal, plain timestamped lines otherwise.
All of it goes to stderr; stdout stays free for data."""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

_PLAIN_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(verbose: bool, console: Console | None = None) -> Console:
    """Routes the library's loggers to stderr; with ``verbose``, per-call lines too."""
    console = console or Console(stderr=True, highlight=False)
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_PLAIN_FORMAT))
    root = logging.getLogger("grpctunnel")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    return console
