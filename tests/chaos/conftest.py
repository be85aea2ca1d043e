"""Fixtures of the chaos suite: a launcher that kills what it started, and a place for the
figures of a run, which the end of the pytest session prints (so they are in the output
of every run, CI's included, not only with -s)."""

from __future__ import annotations

from typing import Any

import pytest

FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> list[str]:
    """Lines for the session's end: what the chaos run did and measured."""
    return request.config.stash.setdefault(FIGURES, [])


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("chaos figures")
        for line in lines:
            terminalreporter.write_line(line)
