"""The collector tuning for processes that hold many tunnels: the `grpctunnel` command's
relaying processes run with it, and a process that turned the collector off keeps it off."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = (
    "import gc, sys; from grpctunnel.collector import tune_for_many_tunnels as t; "
    "off = sys.argv[1] == 'off'; gc.disable() if off else None; t(); "
    "print(gc.get_threshold(), gc.isenabled())"
)

pytestmark = pytest.mark.timeout(60)


def _probe(mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_young_generation_is_made_large() -> None:
    assert _probe("on") == "(50000, 20, 10) True"


def test_a_disabled_collector_is_left_alone() -> None:
    assert _probe("off") == "(700, 10, 10) False"
