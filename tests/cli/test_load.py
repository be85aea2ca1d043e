"""Load mode of `call`: the statistics as pure functions, then the real executable against
real servers (counts, the JSON summary, failures counted by status, the exit status)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pty
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from support.processes import clean_env
from support.servers import serving

from grpctunnel_cli.errors import UsageError
from grpctunnel_cli.load import (
    Bucket,
    LoadPlan,
    exit_code,
    histogram,
    load_plan,
    percentile,
    summarize,
    summary_json,
    summary_lines,
)
from grpctunnel_demo.service import ECHO_SERVICE, EchoServicer, enable_reflection
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

from .helpers import GRPCTUNNEL, run_cli

# --- pure statistics ----------------------------------------------------------------------


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.9) == 90.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile(values, 0.0) == 1.0
    assert percentile([7.0], 0.5) == 7.0
    assert percentile([], 0.5) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0


def test_histogram_spreads_values_over_equal_buckets() -> None:
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    buckets = histogram(values, 10)
    assert len(buckets) == 10
    assert [b.count for b in buckets] == [1, 1, 1, 1, 1, 1, 1, 1, 1, 2]  # max in the last
    assert buckets[0].low == 0.0 and buckets[-1].high == 10.0
    assert all(a.high == pytest.approx(b.low) for a, b in itertools.pairwise(buckets))
    assert sum(b.count for b in histogram([0.001, 0.002, 0.5], 10)) == 3
    assert histogram([3.0, 3.0, 3.0]) == [Bucket(3.0, 3.0, 3)]
    assert histogram([]) == []


def test_exit_code_is_that_of_the_most_common_failure() -> None:
    assert exit_code(["OK", "OK"]) == 0
    assert exit_code([]) == 0
    assert exit_code(["OK", "NOT_FOUND", "UNAVAILABLE", "UNAVAILABLE"]) == 64 + 14
    # equally common: the one seen first
    assert exit_code(["OK", "NOT_FOUND", "UNAVAILABLE", "UNAVAILABLE", "NOT_FOUND"]) == 64 + 5
    assert exit_code(["DEADLINE_EXCEEDED"]) == 64 + 4


def test_summary_counts_rates_and_orders_statuses() -> None:
    results = [(0.001, "OK"), (0.002, "NOT_FOUND"), (0.003, "OK"), (0.010, "UNAVAILABLE")]
    summary = summarize("pkg.S/M", 2, results, elapsed=0.5)
    assert summary.calls == 4 and summary.errors == 2
    assert summary.rate == 8.0
    assert summary.latencies == (0.001, 0.002, 0.003, 0.010)
    assert list(summary.statuses.items()) == [("OK", 2), ("NOT_FOUND", 1), ("UNAVAILABLE", 1)]
    assert summary.exit_code == 64 + 5
    data = summary_json(summary)
    assert json.loads(json.dumps(data)) == data
    assert data["calls"] == 4 and data["ok"] == 2 and data["errors"] == 2
    assert data["latency_ms"]["p50"] == pytest.approx(2.0)
    assert data["latency_ms"]["max"] == pytest.approx(10.0)
    assert data["latency_ms"]["mean"] == pytest.approx(4.0)
    assert sum(b["count"] for b in data["histogram_ms"]) == 4
    text = "\n".join(summary_lines(summary))
    assert "calls        4 (2 OK, 2 errors), concurrency 2" in text
    assert "rate         8.0 calls/s" in text
    assert "p50 2.00 ms  p90 10.00 ms  p99 10.00 ms  max 10.00 ms" in text
    assert "  NOT_FOUND          1" in text


def test_a_summary_of_no_calls_is_still_a_summary() -> None:
    summary = summarize("pkg.S/M", 1, [], elapsed=0.0)
    assert summary.rate == 0.0 and summary.exit_code == 0
    assert summary_json(summary)["latency_ms"] == {}
    assert summary_lines(summary)[-1] == "status"


def test_load_plan_from_the_options() -> None:
    assert load_plan(None, None, None, False) is None
    assert load_plan(5, None, None, False) == LoadPlan(5, 1, None, False)
    assert load_plan(None, 4, None, True) == LoadPlan(1, 4, None, True)
    assert load_plan(None, None, 2.0, False) == LoadPlan(None, 1, 2.0, False)
    assert load_plan(10, 2, 2.0, False) == LoadPlan(10, 2, 2.0, False)
    with pytest.raises(UsageError, match="--json goes with"):
        load_plan(None, None, None, True)
    with pytest.raises(UsageError, match="--duration"):
        load_plan(None, None, 0.0, False)


# --- the real executable ------------------------------------------------------------------


async def test_unary_load_counts_every_call(backend: str) -> None:
    result = await run_cli(
        "call", "-s", backend, "Echo/Echo", '{"msg": "hi"}', "--repeat", "40", "--concurrency", "4"
    )
    assert result.returncode == 0, result
    assert result.stderr == ""
    assert "calls        40 (40 OK, 0 errors), concurrency 4" in result.stdout
    assert "histogram" in result.stdout and "  OK       40" in result.stdout
    assert '"msg"' not in result.stdout  # responses are not shown in load mode


async def test_the_json_summary_of_server_streaming_calls(backend: str) -> None:
    result = await run_cli(
        "call",
        "-s",
        backend,
        "grpctunnel.demo.v1.Echo/Expand",
        '{"msg": "x", "count": 3}',
        "--repeat",
        "12",
        "--concurrency",
        "3",
        "--json",
    )
    assert result.returncode == 0, result
    data = json.loads(result.stdout)
    assert set(data) == {
        "method",
        "calls",
        "ok",
        "errors",
        "concurrency",
        "elapsed_s",
        "calls_per_s",
        "latency_ms",
        "histogram_ms",
        "status",
        "exit_code",
    }
    assert data["method"] == "grpctunnel.demo.v1.Echo/Expand"
    assert (data["calls"], data["ok"], data["errors"], data["concurrency"]) == (12, 12, 0, 3)
    assert data["status"] == {"OK": 12} and data["exit_code"] == 0
    assert set(data["latency_ms"]) == {"min", "mean", "p50", "p90", "p99", "max"}
    latency = data["latency_ms"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
    assert latency["p99"] <= latency["max"]
    assert sum(bucket["count"] for bucket in data["histogram_ms"]) == 12
    assert data["calls_per_s"] > 0 and data["elapsed_s"] > 0


async def test_a_failing_method_is_counted_by_status_and_sets_the_exit_code(
    backend: str,
) -> None:
    result = await run_cli(
        "call",
        "-s",
        backend,
        "Echo/Echo",
        '{"msg": "error:NOT_FOUND:gone"}',
        "--repeat",
        "6",
        "--json",
    )
    assert result.returncode == 64 + 5, result
    data = json.loads(result.stdout)
    assert (data["calls"], data["ok"], data["errors"]) == (6, 0, 6)
    assert data["status"] == {"NOT_FOUND": 6}
    assert data["exit_code"] == 64 + 5


class _Flaky(EchoServicer):
    """Echo failing by call number: of each 5 calls, 2 UNAVAILABLE, 1 NOT_FOUND, 2 OK."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def Echo(self, request: Any, context: Any) -> echo_pb2.EchoReply:
        number, self.calls = self.calls, self.calls + 1
        if number % 5 in (1, 2):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "flaky")
        if number % 5 == 3:
            await context.abort(grpc.StatusCode.NOT_FOUND, "flaky")
        return echo_pb2.EchoReply(msg=request.msg)


@pytest.fixture
async def flaky_backend() -> AsyncIterator[str]:
    server = grpc.aio.server()
    echo_pb2_grpc.add_EchoServicer_to_server(_Flaky(), server)  # type: ignore[no-untyped-call]
    enable_reflection(server, [ECHO_SERVICE])
    async with serving(server) as target:
        yield target


async def test_mixed_outcomes_are_counted_and_the_most_common_failure_decides(
    flaky_backend: str,
) -> None:
    result = await run_cli(
        "call", "-s", flaky_backend, "Echo/Echo", "{}", "--repeat", "40", "--concurrency", "5"
    )
    assert result.returncode == 64 + 14, result  # UNAVAILABLE is the most common failure
    assert "calls        40 (16 OK, 24 errors), concurrency 5" in result.stdout
    statuses = result.stdout.split("status\n", 1)[1].split()
    assert statuses == ["UNAVAILABLE", "16", "OK", "16", "NOT_FOUND", "8"] or statuses == [
        "OK",
        "16",
        "UNAVAILABLE",
        "16",
        "NOT_FOUND",
        "8",
    ]


async def test_duration_bounds_the_run(backend: str) -> None:
    result = await run_cli(
        "call",
        "-s",
        backend,
        "Echo/Echo",
        "{}",
        "--duration",
        "0.3",
        "--concurrency",
        "2",
        "--json",
    )
    assert result.returncode == 0, result
    data = json.loads(result.stdout)
    assert data["calls"] >= 2 and data["errors"] == 0
    assert 0.3 <= data["elapsed_s"] < 5.0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--json",), 2, "--json goes with --repeat, --concurrency or --duration"),
        (("--duration", "0"), 2, "--duration must be a positive number"),
        (("--repeat", "0"), 2, "--repeat"),
        (("--concurrency", "-3"), 2, "--concurrency"),
        (("--repeat", "many"), 2, "--repeat"),
    ],
)
async def test_bad_load_options_are_usage_errors(
    backend: str, args: tuple[str, ...], code: int, message: str
) -> None:
    result = await run_cli("call", "-s", backend, "Echo/Echo", "{}", *args)
    assert result.returncode == code, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


async def test_too_many_requests_for_a_unary_method_fail_before_any_call(backend: str) -> None:
    result = await run_cli(
        "call", "-s", backend, "Echo/Echo", '{"msg": "a"} {"msg": "b"}', "--repeat", "3"
    )
    assert result.returncode == 1, result
    assert result.stderr.startswith("ERROR: this method takes exactly one")
    assert result.stdout == ""


async def test_a_progress_bar_is_drawn_on_a_terminal_and_the_summary_stays_on_stdout(
    backend: str,
) -> None:
    controller, terminal = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            str(GRPCTUNNEL),
            "call",
            "-s",
            backend,
            "Echo/Echo",
            "{}",
            "--repeat",
            "30",
            "--json",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=terminal,
            env=clean_env(COLUMNS="80", TERM="xterm"),
        )
        os.close(terminal)
        terminal = -1
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        drawn = await asyncio.to_thread(_read_all, controller)
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert process.returncode == 0
    assert json.loads(out)["calls"] == 30
    assert "30/30" in drawn  # the bar's count, drawn on the terminal


def _read_all(fd: int) -> str:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
