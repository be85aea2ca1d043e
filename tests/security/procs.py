"""Real `grpctunnel` processes for the security tests: start them, read their output line
by line as it comes, wait for a line (never for a fixed time), signal them, and kill every
one a test started when it ends."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

GRPCTUNNEL = Path(sys.executable).parent / "grpctunnel"
READY_TIMEOUT = 20.0
CLI_TIMEOUT = 30.0
LISTENING = r"tunnel server listening on (127\.0\.0\.1:\d+)"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a child: no server, token or colors inherited from ours."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GRPCTUNNEL_SERVER", "GRPCTUNNEL_TOKEN", "FORCE_COLOR")
    }
    env.update(extra)
    return env


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(*args: str, timeout: float = CLI_TIMEOUT, **env: str) -> Result:
    """Runs `grpctunnel ARGS...` to its end."""
    process = await asyncio.create_subprocess_exec(
        str(GRPCTUNNEL),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(**env),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"grpctunnel {' '.join(args)} did not end within {timeout}s") from None
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def assert_failure(result: Result, code: int, *fragments: str) -> None:
    """Ended with ``code``, an ``ERROR:`` message holding every fragment, no traceback."""
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("ERROR: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@dataclass
class Proc:
    """A running command; its stdout and stderr, interleaved, read in the background."""

    name: str
    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    eof: bool = False
    stopped: bool = False
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
        return len(self.lines)

    def count(self, pattern: str, *, after: int = 0) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in self.lines[after:] if regex.search(line))

    async def wait_for(
        self, pattern: str, *, after: int = 0, timeout: float = READY_TIMEOUT
    ) -> re.Match[str]:
        """The first line after ``after`` matching ``pattern``, waiting for it."""
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
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_count(
        self, pattern: str, n: int, *, after: int = 0, timeout: float = READY_TIMEOUT
    ) -> None:
        deadline = time.monotonic() + timeout
        while self.count(pattern, after=after) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                raise AssertionError(
                    f"{self.name}: {self.count(pattern, after=after)} lines match /{pattern}/, "
                    f"not {n}; its output:\n{self.output}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_exit(self, timeout: float = READY_TIMEOUT) -> int:
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s; its output:\n{self.output}"
            ) from None
        if self._reader is not None:
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        return code

    def signal(self, signum: int) -> None:
        if self.running:
            self.process.send_signal(signum)
            if signum == signal.SIGSTOP:
                self.stopped = True
            elif signum == signal.SIGCONT:
                self.stopped = False

    def rss_kib(self) -> int:
        """Resident memory of the process, from /proc (VmRSS, in KiB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for {self.pid}")

    async def kill(self) -> None:
        if self.running:
            if self.stopped:
                self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        finally:
            if self._reader is not None and not self._reader.done():
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)


class Launcher:
    """Starts `grpctunnel` processes and kills every one it started."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    async def start(self, *args: str, **env: str) -> Proc:
        process = await asyncio.create_subprocess_exec(
            str(GRPCTUNNEL),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=clean_env(**env),
        )
        proc = Proc(" ".join(("grpctunnel", *args)), process)
        proc.start_reading()
        self.procs.append(proc)
        return proc

    async def backend(self) -> str:
        """`demo-backend`; its address once it listens."""
        proc = await self.start("demo-backend", "--port", "0")
        found = await proc.wait_for(r"demo backend listening on (127\.0\.0\.1:\d+)")
        return found.group(1)

    async def server(self, *extra: str, **env: str) -> tuple[Proc, str]:
        """`serve` on a free loopback port; it and its address once it listens."""
        proc = await self.start("serve", "--port", "0", *extra, **env)
        found = await proc.wait_for(LISTENING)
        return proc, found.group(1)

    async def exposer(
        self, backend: str, server: tuple[Proc, str], name: str, *extra: str, **env: str
    ) -> Proc:
        """`expose` as NAME; returned once the server routes through its tunnel."""
        server_proc, address = server
        mark = server_proc.mark()
        proc = await self.start(
            "expose", backend, "--to", address, "--name", name, "--max-backoff", "1", *extra, **env
        )
        await proc.wait_for(rf"tunnel \d+ connected to {re.escape(address)} as '{re.escape(name)}'")
        await server_proc.wait_for(rf"tunnel opened: {re.escape(name)} from", after=mark)
        return proc

    async def close(self) -> None:
        await asyncio.gather(*(proc.kill() for proc in self.procs), return_exceptions=True)


def no_traceback(*procs: Proc) -> None:
    for proc in procs:
        assert "Traceback" not in proc.output, proc.output
