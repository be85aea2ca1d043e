"""The deadline of a client command (``--timeout``): one clock for connecting, asking
reflection and the call, so that the whole command ends in time.

`Deadline.within` bounds one step; a step that outlives the deadline ends the command
with DEADLINE_EXCEEDED (exit 68), saying which step it was in. The call itself is given
`Deadline.remaining` as its gRPC deadline, so that the server learns it too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

import grpc

from grpctunnel_cli.errors import StatusError

__all__ = ["Deadline"]

T = TypeVar("T")


class Deadline:
    """``timeout`` seconds from now (None: no deadline)."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left (never below 0); None without a deadline."""
        if self._end is None:
            return None
        return max(0.0, self._end - time.monotonic())

    def expired(self, step: str) -> StatusError:
        """The error of a command whose deadline passed during ``step``."""
        return StatusError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"--timeout {self.timeout:g}s expired while {step}",
        )

    async def within(self, step: Awaitable[T], what: str, *, grace: float = 0.0) -> T:
        """``step``'s result, or the `expired` error once the deadline (and ``grace``
        seconds more: a step that ends itself at the deadline, as a gRPC call does,
        then says why) passes."""
        remaining = self.remaining()
        if remaining is None:
            return await step
        try:
            return await asyncio.wait_for(step, remaining + grace)
        except asyncio.TimeoutError:
            raise self.expired(what) from None
