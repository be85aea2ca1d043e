"""A running `grpctunnel` process whose output the tests watch line by line: wait for a
line to appear, count lines, signal, stop, kill, read its memory."""

from __future__ import annotations

import asyncio
import os
import re
import signal as signals
import time
from dataclasses import dataclass, field
from pathlib import Path

# What a child never inherits from the test run: our server, tokens and colors, and asyncio's
# debug mode (the children run as a user runs them; debug mode's slow-callback warnings
# would be output no user sees).
NOT_INHERITED = (
    "GRPCTUNNEL_SERVER",
    "GRPCTUNNEL_TOKEN",
    "GRPCTUNNEL_CLUSTER_TOKEN",
    "FORCE_COLOR",
    "PYTHONASYNCIODEBUG",
)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: ours, less what it must not inherit, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update(extra)
    return env


READY_TIMEOUT = 20.0  # a process saying what it is waiting for to be said
EXIT_TIMEOUT = 20.0  # a process asked to stop, stopping


@dataclass
class Proc:
    """A running command; its stdout and stderr, interleaved, read in the background."""

    name: str
    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    eof: bool = False
    stopped: bool = False  # SIGSTOPped
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    def start_reading(self) -> None:
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        try:
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    break
                self.lines.append(line.decode(errors="replace").rstrip("\n"))
                self._changed.set()
        finally:
            self.eof = True
            self._changed.set()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def mark(self) -> int:
        """A position in the output: later waits can look only at lines after it."""
        return len(self.lines)

    def count(self, pattern: str, *, after: int = 0) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in self.lines[after:] if regex.search(line))

    async def _wait_changed(self, remaining: float) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), remaining)
        except asyncio.TimeoutError:
            pass

    async def wait_for(
        self, pattern: str, *, after: int = 0, timeout: float = READY_TIMEOUT
    ) -> re.Match[str]:
        """The first line after ``after`` that matches ``pattern`` (a regex), waiting for it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = after
        while True:
            for line in self.lines[seen:]:
                found = regex.search(line)
                if found:
                    return found
            seen = max(seen, len(self.lines))
            if self.eof:
                raise AssertionError(
                    f"{self.name} ended (exit {self.process.returncode}) before printing "
                    f"/{pattern}/; its output:\n{self.output}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name} did not print /{pattern}/ within {timeout}s; its output:\n"
                    f"{self.output}"
                )
            await self._wait_changed(remaining)

    async def wait_count(
        self, pattern: str, n: int, *, after: int = 0, timeout: float = READY_TIMEOUT
    ) -> int:
        """Waits until at least ``n`` lines after ``after`` match; returns how many do."""
        deadline = time.monotonic() + timeout
        while self.count(pattern, after=after) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                raise AssertionError(
                    f"{self.name}: {self.count(pattern, after=after)} lines match /{pattern}/, "
                    f"not {n}; its output:\n{self.output}"
                )
            await self._wait_changed(remaining)
        return self.count(pattern, after=after)

    async def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s; its output:\n{self.output}"
            ) from None
        if self._reader is not None:  # let the reader take the last lines
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        return code

    def signal(self, signum: int) -> None:
        if self.running:
            self.process.send_signal(signum)
            if signum == signals.SIGSTOP:
                self.stopped = True
            elif signum == signals.SIGCONT:
                self.stopped = False

    async def stop(self, signum: int = signals.SIGTERM, timeout: float = EXIT_TIMEOUT) -> int:
        self.signal(signum)
        return await self.wait_exit(timeout)

    async def write(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())
        await self.process.stdin.drain()

    def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    def rss_kib(self) -> int:
        """Resident memory of the process, from /proc (VmRSS, in KiB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for {self.pid}")

    async def kill(self) -> None:
        if self.running:
            if self.stopped:
                self.process.send_signal(signals.SIGCONT)
            self.process.kill()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        finally:
            if self._reader is not None and not self._reader.done():
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)
            if self.process.stdin is not None:
                self.process.stdin.close()
