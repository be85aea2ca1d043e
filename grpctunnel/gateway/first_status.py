"""The status a grpc.aio call first ended with: a workaround for a grpc.aio client bug.

grpc/grpc#36066: when a server ends a client- or bidi-streaming call while the client is
still writing (an abort, an early reply, UNIMPLEMENTED), the grpc.aio client can replace
the server's status with ``INTERNAL: Internal error from Core``, caused by the failed
write. :class:`FirstStatus` records the status the call first ended with, from a done
callback: done callbacks run as the status is first set, when the call's ``code()``,
``details()`` and ``trailing_metadata()`` complete without waiting.
"""

from __future__ import annotations

from typing import Any

import grpc

Status = tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]


class _NotReady(Exception):
    pass


def _result_now(awaitable: Any) -> Any:
    """The result of an awaitable that needs no waiting; _NotReady if it would suspend."""
    steps = awaitable.__await__()
    try:
        steps.send(None)
    except StopIteration as stop:
        return stop.value
    steps.close()
    raise _NotReady


class FirstStatus:
    """The status a call first ended with (``value``), or None when the call object has
    no done callbacks or its status accessors really wait."""

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
            self.value = (code, details or "", tuple((k, v) for k, v in trailers or ()))


__all__ = ["FirstStatus", "Status"]
