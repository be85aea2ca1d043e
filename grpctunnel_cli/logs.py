"""Log output of the long-running commands (serve, expose): one place that decides how
log lines look. ``plain`` (the default): rich and colored on a terminal, timestamped
lines otherwise. ``json``: one JSON object per line, for log collectors (see
`JsonFormatter`). All of it goes to stderr; stdout stays free for data."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

__all__ = ["LOG_FORMATS", "JsonFormatter", "set_log_fields", "setup_logging"]

_PLAIN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOG_FORMATS = ("plain", "json")

# the fields a log line may carry (given as ``extra=`` where it is logged), in the order
# a JSON line shows them
FIELDS = (
    "tunnel",
    "peer",
    "services",
    "service",
    "method",
    "code",
    "duration",
    "reason",
    "node",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``event`` (what
    happened, e.g. ``tunnel_opened``, ``call``; ``log`` for a line that names none),
    ``message`` (the line as plain output shows it), then those of `FIELDS` the record
    carries, then ``fields`` (the same for every line, e.g. ``node``)."""

    def __init__(self, fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.fields: dict[str, Any] = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
        out: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None) or "log",
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        for name, value in self.fields.items():
            out.setdefault(name, value)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def set_log_fields(**fields: Any) -> None:
    """Adds ``fields`` to every JSON log line from now on (no effect on plain lines)."""
    for handler in logging.getLogger("grpctunnel").handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.fields.update(fields)


def setup_logging(
    verbose: bool, console: Console | None = None, log_format: str = "plain"
) -> Console:
    """Routes the library's loggers to stderr; with ``verbose``, per-call lines too."""
    console = console or Console(stderr=True, highlight=False)
    handler: logging.Handler
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif console.is_terminal:
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
