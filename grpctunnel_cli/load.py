"""Load mode of `call`: the same call made many times, some at once, and a summary of them.

``--repeat N`` calls, ``--concurrency C`` of them in flight at any time, or as many as fit in
``--duration SECONDS``. A streaming call counts as one call, from its start to its status.
Responses are not shown; what is shown, on stdout, is the summary: how many calls, how many
failed, how long it all took, calls per second, latency percentiles and a histogram, and
the calls by status code (``--json``: the same as one JSON object). On a terminal, a
progress bar on stderr shows the calls made so far.

Exit status: 0 when every call ended OK; otherwise 64 + the code of the most common
failure (the one seen first among equally common ones), as a single call failing so
would exit.

The statistics (`summarize` and what it uses) are pure functions of the latencies and
status codes; `run_load` makes the calls.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from grpctunnel_cli.errors import InputError, UsageError
from grpctunnel_cli.invoke import (
    CallStatus,
    invoke,
    json_values,
    method_path,
    request_messages,
    status_exit_code,
)

if TYPE_CHECKING:
    from google.protobuf.descriptor import MethodDescriptor
    from google.protobuf.message import Message

    from grpctunnel_cli.client import Connection
    from grpctunnel_cli.metadata import Metadata
    from grpctunnel_cli.render import Renderer

__all__ = [
    "HISTOGRAM_BUCKETS",
    "Bucket",
    "LoadPlan",
    "LoadSummary",
    "exit_code",
    "histogram",
    "load_plan",
    "percentile",
    "run_load",
    "run_load_command",
    "summarize",
    "summary_json",
    "summary_lines",
]

HISTOGRAM_BUCKETS = 10
_BAR_WIDTH = 40


# --- the plan -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPlan:
    """How many calls (None: as many as `duration` allows), how many at once, for how long."""

    repeat: int | None
    concurrency: int
    duration: float | None
    json: bool


def load_plan(
    repeat: int | None, concurrency: int | None, duration: float | None, json: bool
) -> LoadPlan | None:
    """The load plan the options ask for; None for an ordinary call (none of them given)."""
    if repeat is None and concurrency is None and duration is None:
        if json:
            raise UsageError("--json goes with --repeat, --concurrency or --duration")
        return None
    if duration is not None and not duration > 0:
        raise UsageError("--duration must be a positive number of seconds")
    if repeat is None:
        repeat = None if duration is not None else 1
    return LoadPlan(repeat=repeat, concurrency=concurrency or 1, duration=duration, json=json)


# --- pure statistics ----------------------------------------------------------------------


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values (`fraction` in [0, 1]); 0.0 if none."""
    if not ordered:
        return 0.0
    rank = math.ceil(fraction * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


@dataclass(frozen=True)
class Bucket:
    """Latencies in [low, high) seconds (the last bucket includes its high end)."""

    low: float
    high: float
    count: int


def histogram(values: Sequence[float], buckets: int = HISTOGRAM_BUCKETS) -> list[Bucket]:
    """`buckets` equal-width buckets from the lowest value to the highest (one bucket when
    every value is the same; none for no values)."""
    if not values:
        return []
    low, high = min(values), max(values)
    if high == low:
        return [Bucket(low, high, len(values))]
    width = (high - low) / buckets
    counts = [0] * buckets
    for value in values:
        counts[min(int((value - low) / width), buckets - 1)] += 1
    return [
        Bucket(low + i * width, high if i == buckets - 1 else low + (i + 1) * width, count)
        for i, count in enumerate(counts)
    ]


def exit_code(statuses: Sequence[str]) -> int:
    """0 when every status is OK, else 64 + the code of the most common failure (the first
    seen among equally common ones)."""
    failures = Counter(name for name in statuses if name != "OK")
    if not failures:
        return 0
    most = max(failures.values())
    name = next(name for name in statuses if failures.get(name) == most)
    return status_exit_code(grpc.StatusCode[name])


@dataclass(frozen=True)
class LoadSummary:
    """What a load run did."""

    method: str
    concurrency: int
    calls: int
    errors: int
    elapsed: float  # seconds, from the first call's start to the last one's end
    latencies: tuple[float, ...]  # seconds, sorted
    statuses: dict[str, int]  # status code name -> calls, most common first
    exit_code: int
    histogram: list[Bucket] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Calls per second."""
        return self.calls / self.elapsed if self.elapsed > 0 else 0.0

    def latency(self, fraction: float) -> float:
        return percentile(self.latencies, fraction)


def summarize(
    method: str,
    concurrency: int,
    results: Sequence[tuple[float, str]],
    elapsed: float,
) -> LoadSummary:
    """The summary of calls given as (latency in seconds, status code name) pairs."""
    latencies = tuple(sorted(latency for latency, _ in results))
    names = [name for _, name in results]
    counted = Counter(names)
    first_seen = {name: i for i, name in reversed(list(enumerate(names)))}
    order = sorted(counted, key=lambda name: (-counted[name], first_seen[name]))
    return LoadSummary(
        method=method,
        concurrency=concurrency,
        calls=len(results),
        errors=len(results) - counted.get("OK", 0),
        elapsed=elapsed,
        latencies=latencies,
        statuses={name: counted[name] for name in order},
        exit_code=exit_code(names),
        histogram=histogram(latencies),
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def summary_lines(summary: LoadSummary) -> list[str]:
    """The summary as text, one line each."""
    ok = summary.calls - summary.errors
    lines = [
        f"method       {summary.method}",
        f"calls        {summary.calls} ({ok} OK, {summary.errors} errors), "
        f"concurrency {summary.concurrency}",
        f"elapsed      {summary.elapsed:.3f} s",
        f"rate         {summary.rate:.1f} calls/s",
    ]
    if summary.latencies:
        lines.append(
            "latency      "
            + "  ".join(
                f"{label} {_ms(summary.latency(fraction))}"
                for label, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
            )
            + f"  max {_ms(summary.latencies[-1])}"
        )
        lines.append("histogram")
        most = max(bucket.count for bucket in summary.histogram)
        for bucket in summary.histogram:
            bar = "#" * (math.ceil(bucket.count / most * _BAR_WIDTH) if bucket.count else 0)
            lines.append(
                f"  {bucket.low * 1000:9.2f} - {bucket.high * 1000:9.2f} ms "
                f"{bucket.count:>8} {bar}".rstrip()
            )
    lines.append("status")
    width = max(len(name) for name in summary.statuses) if summary.statuses else 0
    lines += [f"  {name:<{width}} {count:>8}" for name, count in summary.statuses.items()]
    return lines


def summary_json(summary: LoadSummary) -> dict[str, Any]:
    """The summary as one JSON object (times in seconds and milliseconds, as named)."""
    latency: dict[str, float] = {}
    if summary.latencies:
        values = summary.latencies
        latency = {
            "min": values[0] * 1000,
            "mean": sum(values) / len(values) * 1000,
            "p50": summary.latency(0.5) * 1000,
            "p90": summary.latency(0.9) * 1000,
            "p99": summary.latency(0.99) * 1000,
            "max": values[-1] * 1000,
        }
    return {
        "method": summary.method,
        "calls": summary.calls,
        "ok": summary.calls - summary.errors,
        "errors": summary.errors,
        "concurrency": summary.concurrency,
        "elapsed_s": summary.elapsed,
        "calls_per_s": summary.rate,
        "latency_ms": latency,
        "histogram_ms": [
            {"from": b.low * 1000, "to": b.high * 1000, "count": b.count} for b in summary.histogram
        ],
        "status": summary.statuses,
        "exit_code": summary.exit_code,
    }


# --- making the calls ---------------------------------------------------------------------


async def _replay(messages: Sequence[Message]) -> Any:
    for message in messages:
        yield message


async def _one_call(
    channel: grpc.aio.Channel,
    method: MethodDescriptor,
    messages: Sequence[Message],
    metadata: Metadata,
    timeout: float | None,
) -> tuple[float, str]:
    """One call, its responses read and dropped: (latency, status code name)."""
    started = time.monotonic()
    status: CallStatus | None = None
    async for event in invoke(
        channel, method, _replay(messages), metadata=metadata, timeout=timeout
    ):
        if isinstance(event, CallStatus):
            status = event
    assert status is not None  # invoke always ends with the status
    return time.monotonic() - started, status.code.name


async def run_load(
    plan: LoadPlan,
    channel: grpc.aio.Channel,
    method: MethodDescriptor,
    messages: Sequence[Message],
    *,
    metadata: Metadata = (),
    timeout: float | None = None,
    on_call: Callable[[], None] | None = None,
) -> tuple[list[tuple[float, str]], float]:
    """Make the calls of `plan`; each call's (latency, status name), and the time it took.
    `on_call` is called as each call ends."""
    results: list[tuple[float, str]] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + plan.duration if plan.duration is not None else None
    begun = 0

    def another() -> bool:
        nonlocal begun
        if plan.repeat is not None and begun >= plan.repeat:
            return False
        if deadline is not None and loop.time() >= deadline:
            return False
        begun += 1
        return True

    async def worker() -> None:
        while another():
            results.append(await _one_call(channel, method, messages, metadata, timeout))
            if on_call is not None:
                on_call()

    workers = plan.concurrency if plan.repeat is None else min(plan.concurrency, plan.repeat)
    await asyncio.gather(*(worker() for _ in range(max(workers, 1))))
    return results, loop.time() - started


async def run_load_command(
    plan: LoadPlan,
    connected: Connection,
    method: MethodDescriptor,
    data: str | None,
    renderer: Renderer,
    timeout: float | None,
) -> int:
    """`call` in load mode: read DATA once, make the calls, print the summary; the exit
    status (see the module)."""
    pool = connected.source.pool
    messages = [m async for m in request_messages(json_values(data), method.input_type, pool=pool)]
    if not method.client_streaming and len(messages) > 1:
        raise InputError(
            f"this method takes exactly one {method.input_type.full_name}, but the request "
            "data holds more than one"
        )
    with renderer.progress(plan.repeat) as step:
        results, elapsed = await run_load(
            plan,
            connected.channel,
            method,
            messages,
            metadata=connected.metadata,
            timeout=timeout,
            on_call=step,
        )
    summary = summarize(method_path(method).lstrip("/"), plan.concurrency, results, elapsed)
    if plan.json:
        renderer.lines([json.dumps(summary_json(summary))])
    else:
        renderer.lines(summary_lines(summary))
    return summary.exit_code
