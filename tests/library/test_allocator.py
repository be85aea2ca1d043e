"""The allocator tuning for large messages takes effect on glibc, and leaves a process
alone whose environment already chose its malloc thresholds."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.processes import clean_env

PROBE = "from grpctunnel.allocator import tune_for_large_messages as t; print(t())"


def _run(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tunes_glibc_when_the_environment_does_not() -> None:
    env = {k: v for k, v in clean_env().items() if not k.startswith("MALLOC_")}
    assert _run(env) == "True"


@pytest.mark.parametrize("name", ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"])
def test_an_environment_that_sets_a_threshold_is_left_alone(name: str) -> None:
    assert _run({**clean_env(), name: "1048576"}) == "False"
