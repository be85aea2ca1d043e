"""Real `grpctunnel` processes for the security tests, from tests/support: a command run
to its end (`run_cli`), and the launcher of long-running ones (read line by line
as they print, waited on for a line, never for a fixed time, signalled, and killed when the
test ends)."""

from __future__ import annotations

from support.launcher import (
    GRPCTUNNEL,
    LISTENING,
    Launcher,
    Result,
    assert_failure,
    clean_env,
    no_traceback,
    run_cli,
)
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
