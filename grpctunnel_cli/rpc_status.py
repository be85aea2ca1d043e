"""Reading the status of a finished call, including a workaround for a grpc.aio client bug.

grpc/grpc#36066: when a server ends a client- or bidi-streaming call while the client is
still writing (an abort, an early reply, or UNIMPLEMENTED for a method it does not have),
the grpc.aio client can replace the server's status with ``INTERNAL: Internal error from
Core``, caused by the failed write. `FirstStatus` records the status the call first ended
with, from a done callback: done callbacks run as the status is first set, when the call's
``code()``, ``details()`` and ``trailing_metadata()`` complete without waiting.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from grpctunnel_cli.metadata import MetadataValue

__all__ = ["FirstStatus", "Status", "as_metadata", "error_status"]

Status = tuple[grpc.StatusCode, str, tuple[tuple[str, MetadataValue], ...]]


def as_metadata(
    metadata: Iterable[tuple[str, MetadataValue]] | None,
) -> tuple[tuple[str, MetadataValue], ...]:
    """Any metadata (grpc.aio.Metadata, tuples, None) as a tuple of (key, value) pairs."""
    return tuple((key, value) for key, value in (metadata or ()))


class _NotReady(Exception):
    pass


def _result_now(awaitable: Any) -> Any:
    """The result of an awaitable that needs no waiting; _NotReady if it would suspend."""
    coroutine = awaitable.__await__()
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise _NotReady


class FirstStatus:
    """The status a call first ended with; see the module docstring.

    On a call object without done callbacks, or whose status accessors really wait,
    nothing is recorded and `value` stays None.
    """

    def __init__(self, call: Any) -> None:
        self.value: Status | None = None
        add_done_callback = getattr(call, "add_done_callback", None)
        if callable(add_done_callback):
            add_done_callback(self._on_done)

    def _on_done(self, call: Any) -> None:
        if self.value is not None:
            return
        try:
            code = _result_now(call.code())
            details = _result_now(call.details())
            trailers = _result_now(call.trailing_metadata())
        except Exception:  # only a workaround: never disturb the call over it
            return
        if isinstance(code, grpc.StatusCode):
            self.value = (code, details or "", as_metadata(trailers))


def error_status(error: grpc.RpcError, first: FirstStatus | None = None) -> Status:
    """Code, details and trailers of a failed call, corrected by `first` where grpc erred."""
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    trailers = getattr(error, "trailing_metadata", None)
    status: Status = (
        code() if callable(code) else grpc.StatusCode.UNKNOWN,
        (details() if callable(details) else str(error)) or "",
        as_metadata(trailers() if callable(trailers) else None),
    )
    if status[0] is grpc.StatusCode.INTERNAL and first is not None and first.value is not None:
        return first.value
    return status
