"""Starting real processes for the tests: `grpctunnel` commands (a backend, `serve`,
`expose`) or any other command, each read line by line as a :class:`Proc`, and every one
a test started killed when it ends."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from support.processes import Proc, clean_env

GRPCTUNNEL = Path(sys.executable).parent / "grpctunnel"
LISTENING = r"tunnel server listening on (127\.0\.0\.1:\d+)"


def free_port() -> int:
    """A loopback port free right now (for a process that must come back on the same one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Launcher:
    """Starts processes and kills every one it started."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    async def spawn(self, name: str, *argv: str, **env: str) -> Proc:
        """Runs ARGV (stdout and stderr read together, no stdin) as ``name``."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=clean_env(**env),
        )
        proc = Proc(name, process)
        proc.start_reading()
        self.procs.append(proc)
        return proc

    async def start(self, *args: str, **env: str) -> Proc:
        """`grpctunnel ARGS...`."""
        return await self.spawn(" ".join(("grpctunnel", *args)), str(GRPCTUNNEL), *args, **env)

    async def backend(self) -> str:
        """`demo-backend`; its address once it listens."""
        proc = await self.start("demo-backend", "--port", "0")
        found = await proc.wait_for(r"demo backend listening on (127\.0\.0\.1:\d+)")
        return found.group(1)

    async def server(self, *extra: str, port: int = 0, **env: str) -> tuple[Proc, str]:
        """`serve` on ``port`` (0: a free one); it and its address once it listens."""
        proc = await self.start("serve", "--port", str(port), *extra, **env)
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


CLI_TIMEOUT = 30.0


@dataclass(frozen=True)
class Result:
    """How a command that ran to its end ended, and what it wrote."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


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
