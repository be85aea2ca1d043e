"""Real `grpctunnel` processes for the security tests: a command run to its end
(`run_cli`), and, from tests/support, the launcher of long-running ones (read line by line
as they print, waited on for a line, never for a fixed time, signalled, and killed when the
test ends)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from support.launcher import GRPCTUNNEL, LISTENING, Launcher, clean_env, no_traceback
from support.processes import Proc

__all__ = [
    "GRPCTUNNEL",
    "LISTENING",
    "Launcher",
    "Proc",
    "Result",
    "assert_failure",
    "clean_env",
    "no_traceback",
    "run_cli",
]

CLI_TIMEOUT = 30.0


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
