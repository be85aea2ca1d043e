"""Log lines whose number someone else controls, rate-limited: refused tunnel attempts.

Every tunnel a server refuses (a bad token, a name it may not use, a full limit) is worth
a line in its log, but a peer that retries without end, or a flood of bad tunnels, must not
be able to fill a disk with them. A :class:`RateLimitedLog` logs the first line of each
reason in full, counts the lines of a reason already logged lately instead, and writes at
most one summary line per interval with those counts::

    refused 1234 more tunnels in the last 10s: UNAUTHENTICATED: invalid token (1200),
    PERMISSION_DENIED: credential 'a' may not expose services (34)

At most ``max_full`` full lines per interval too (reasons can carry what the peer sent,
so there may be any number of them), and at most ``max_reasons`` reasons named in a
summary; so, whatever the flood, about ``max_full + 1`` lines per interval.
:data:`REFUSED_TUNNELS` is the one the tunnel handler and the gateway's token checks
share. The summary is written by a timer of the running event loop at the end of the
interval; without a running loop, by the next line logged after it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_INTERVAL = 10.0  # seconds between two summary lines, at least
DEFAULT_MAX_FULL = 10  # full lines per interval, at most
DEFAULT_MAX_REASONS = 10  # reasons named in one summary line (the rest lumped together)
_REMEMBERED = 1024  # reasons remembered as logged lately (the oldest forgotten first)


class RateLimitedLog:
    """Logs to ``logger`` at ``level``: each reason in full the first time (again once
    it has not been seen for ``interval`` seconds), the rest as counts in one summary
    line per ``interval``, worded by ``summary`` (``{count}``, ``{seconds}`` and
    ``{reasons}`` are filled in). Safe to call from any thread."""

    def __init__(
        self,
        logger: logging.Logger,
        summary: str,
        *,
        level: int = logging.INFO,
        interval: float = DEFAULT_INTERVAL,
        max_full: int = DEFAULT_MAX_FULL,
        max_reasons: int = DEFAULT_MAX_REASONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.summary = summary
        self.level = level
        self.interval = interval
        self.max_full = max_full
        self.max_reasons = max_reasons
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._full_lines = 0  # full lines written in this interval
        self._counts: dict[str, int] = {}  # lines counted in this interval, by reason
        self._other = 0  # ... of reasons beyond max_reasons
        self._seen: OrderedDict[str, float] = OrderedDict()  # reason -> last seen
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def log(self, reason: str, message: str, *args: object) -> bool:
        """One occurrence of ``reason``: ``message % args`` is logged if the reason is
        new (and this interval's full lines are not used up), else counted. Returns
        whether it was logged in full."""
        with self._lock:
            now = self._clock()
            self._roll(now)
            last = self._seen.pop(reason, None)
            self._seen[reason] = now
            if len(self._seen) > _REMEMBERED:
                self._seen.popitem(last=False)
            if (last is None or now - last > self.interval) and self._full_lines < self.max_full:
                self._full_lines += 1
                self.logger.log(self.level, message, *args)
                return True
            if reason in self._counts or len(self._counts) < self.max_reasons:
                self._counts[reason] = self._counts.get(reason, 0) + 1
            else:
                self._other += 1
            self._schedule(now)
            return False

    def flush(self) -> None:
        """Writes the summary of what was counted so far (if anything) and starts a new
        interval."""
        with self._lock:
            self._timer = None
            self._emit(self._clock())

    @property
    def pending(self) -> int:
        """How many lines were counted and not yet summarised."""
        return sum(self._counts.values()) + self._other

    def _roll(self, now: float) -> None:
        if now - self._window_start >= self.interval:
            self._emit(now)

    def _emit(self, now: float) -> None:
        count = self.pending
        if count:
            ranked = sorted(self._counts.items(), key=lambda item: -item[1])
            reasons = ", ".join(f"{reason} ({n})" for reason, n in ranked)
            if self._other:
                reasons += f", other reasons ({self._other})"
            seconds = max(1, round(now - self._window_start))
            self.logger.log(
                self.level, self.summary.format(count=count, seconds=seconds, reasons=reasons)
            )
        self._counts.clear()
        self._other = 0
        self._full_lines = 0
        self._window_start = now

    def _schedule(self, now: float) -> None:
        """Makes the running loop (if any) write the summary when the interval ends."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # the next line logged after the interval writes it
        if self._timer is not None and self._timer_loop is loop and not loop.is_closed():
            return
        delay = max(0.0, self._window_start + self.interval - now)
        self._timer = loop.call_later(delay, self.flush)
        self._timer_loop = loop


# the refused tunnel attempts of this process: grpctunnel.handler and the gateway's
# token checks (grpctunnel.gateway.auth) log theirs here
REFUSED_TUNNELS = RateLimitedLog(
    logging.getLogger("grpctunnel"),
    "refused {count} more tunnels in the last {seconds}s: {reasons}",
)


__all__ = ["DEFAULT_INTERVAL", "REFUSED_TUNNELS", "RateLimitedLog"]
