#!/usr/bin/env python
"""Benchmarks of grpctunnel: direct gRPC against forward and reverse tunnels and the
command line (serve + expose).

    python benchmarks/run.py [--quick | --smoke] [--repeat N] [--json PATH]
                             [--paths direct,forward,reverse,cli,ssh] [--profile SCENARIO]
                             [--cli-tunnels N]

Every figure is measured between two processes, a *service process* (hosts the
services) and a *caller process* (makes and times the calls), plus on the cli path a
`grpctunnel serve` and a `grpctunnel expose` process between them; see workers.py. The
paths (how a call travels) are registered in paths.py, the scenarios below. Each
scenario is repeated (median reported); each tunnel figure is shown next to the
direct one with the ratio path ÷ direct. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import grpc  # noqa: E402
from paths import (  # noqa: E402
    BASELINE,
    CLI,
    PATHS,
    Pair,
    PathDef,
    descendants,
    grpctunnel_command,
)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

MiB = 1 << 20
DEFAULT_JSON = HERE / "results" / "latest.json"


# -- how much work each run does ------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    repeat: int
    latency_warmup: int
    latency_calls: int
    tput_concurrency: int
    tput_per_caller: int
    tput_warmup: int
    stream_count: int
    stream_size: int
    big_small: int
    big_large: int
    streams: int
    growth_warmup: int
    growth_calls: int


PROFILES: dict[str, Counts] = {
    "default": Counts(
        repeat=3,
        latency_warmup=200,
        latency_calls=2000,
        tput_concurrency=64,
        tput_per_caller=100,
        tput_warmup=5,
        stream_count=200,
        stream_size=MiB,
        big_small=8 * MiB,
        big_large=64 * MiB,
        streams=1000,
        growth_warmup=500,
        growth_calls=10_000,
    ),
    "quick": Counts(
        repeat=1,
        latency_warmup=100,
        latency_calls=500,
        tput_concurrency=64,
        tput_per_caller=30,
        tput_warmup=2,
        stream_count=50,
        stream_size=MiB,
        big_small=8 * MiB,
        big_large=64 * MiB,
        streams=1000,
        growth_warmup=200,
        growth_calls=2000,
    ),
    "smoke": Counts(
        repeat=1,
        latency_warmup=3,
        latency_calls=10,
        tput_concurrency=4,
        tput_per_caller=3,
        tput_warmup=1,
        stream_count=3,
        stream_size=64 * 1024,
        big_small=64 * 1024,
        big_large=512 * 1024,
        streams=10,
        growth_warmup=5,
        growth_calls=20,
    ),
}


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB and n % MiB == 0 else f"{n // 1024} KiB"


# -- scenarios ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str  # "lower", "higher", or "linear" (closer to the linear value is nicer)
    digits: int = 2
    ratio_floor: float = 0.0  # no ratio when the baseline's magnitude is below this


@dataclass
class RunContext:
    counts: Counts
    profile: str | None  # scenario whose caller-side run is profiled (cProfile)
    results_dir: Path


Runner = Callable[[Pair, PathDef, RunContext], dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: Callable[[Counts], str]
    pair: str  # "shared": one pair for every path; "isolated": a fresh pair per path
    metrics: Callable[[Counts], list[Metric]]
    run: Runner


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), seconds: the counters
    getrusage reports, read from /proc/<pid>/stat; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _labelled_pids(pair: Pair, path: PathDef) -> dict[str, int]:
    """Every process that does work on the path, by label: the service and the caller,
    and the path's own processes (serve/expose, sshd/ssh) and their children."""
    pids = {"service": pair.service.pid, "caller": pair.caller.pid}

    def add(label: str, pid: int) -> None:
        name, n = label, 2
        while name in pids:
            name, n = f"{label}{n}", n + 1
        pids[name] = pid

    for process in pair.processes.get(path.name, []):
        label = _process_label(process)
        add(label, process.pid)
        for child in descendants(process.pid):  # sshd's session process
            add(f"{label}_child", child)
    return pids


def _in_caller(
    scenario: str,
    params: Callable[[Counts], dict[str, Any]],
    name: str,
    work: str | None = None,
) -> Runner:
    """A runner that runs one caller-side scenario (workers.SCENARIOS). With ``work``
    (the result's count of calls, or MiB), it also reports the CPU each process spent
    per unit of work: ``cpu_<process>_ms`` for each, ``cpu_path_ms`` for the path's own
    processes together, ``cpu_total_ms`` for all."""

    def run(pair: Pair, path: PathDef, ctx: RunContext) -> dict[str, Any]:
        profile = None
        if ctx.profile == name:
            profile = str(ctx.results_dir / f"profile-{name}-{path.name}.txt")
        pids = _labelled_pids(pair, path) if work else {}
        before = {label: cpu_seconds(pid) for label, pid in pids.items()}
        result: dict[str, Any] = pair.caller.request(
            "run", name=path.name, scenario=scenario, params=params(ctx.counts), profile=profile
        )
        if work and result.get(work):
            amount = float(result[work])
            spent: dict[str, float] = {}
            for label, pid in pids.items():
                start, end = before[label], cpu_seconds(pid)
                if start is not None and end is not None:
                    spent[label] = 1e3 * (end - start) / amount
            for label, ms in spent.items():
                result[f"cpu_{label}_ms"] = ms
            result["cpu_path_ms"] = sum(
                ms for label, ms in spent.items() if label not in ("service", "caller")
            )
            result["cpu_total_ms"] = sum(spent.values())
        return result

    return run


def _cpu_metrics(unit: str) -> list[Metric]:
    return [
        Metric("cpu_total_ms", f"CPU per {unit}, all processes (ms)", "lower", 3),
        Metric("cpu_service_ms", f"CPU per {unit}, service process (ms)", "lower", 3),
        Metric(
            "cpu_path_ms",
            f"CPU per {unit}, the path's own processes (ms)",
            "lower",
            3,
            ratio_floor=1e-9,
        ),
        Metric("cpu_caller_ms", f"CPU per {unit}, caller process (ms)", "lower", 3),
    ]


def _run_memory_growth(pair: Pair, path: PathDef, ctx: RunContext) -> dict[str, Any]:
    counts = ctx.counts
    run = {"name": path.name, "scenario": "unary_calls"}
    pair.caller.request("run", **run, params={"calls": counts.growth_warmup})
    pair.gc()
    server_before, client_before = pair.server_rss(path.name), pair.client_rss()
    result = pair.caller.request("run", **run, params={"calls": counts.growth_calls})
    pair.gc()
    server_after, client_after = pair.server_rss(path.name), pair.client_rss()
    calls = counts.growth_calls
    return {
        "server_growth_mib": (server_after - server_before) / MiB,
        "client_growth_mib": (client_after - client_before) / MiB,
        "server_bytes_per_call": (server_after - server_before) / calls,
        "client_bytes_per_call": (client_after - client_before) / calls,
        "server_rss_before_mib": server_before / MiB,
        "client_rss_before_mib": client_before / MiB,
        "elapsed_s": result["elapsed_s"],
    }


def _run_streams(pair: Pair, path: PathDef, ctx: RunContext) -> dict[str, Any]:
    pair.gc()
    server_before, client_before = pair.server_rss(path.name), pair.client_rss()
    result = _in_caller("streams", lambda c: {"streams": c.streams}, "streams_1000")(
        pair, path, ctx
    )
    server_after, client_after = pair.server_rss(path.name), pair.client_rss()
    service_after = pair.service.rss()
    return {
        **result,
        "server_rss_mib": server_after / MiB,
        # the service process alone; the rest of server_rss_mib is the path's own
        # processes (cli: serve + expose)
        "service_process_rss_mib": service_after / MiB,
        "path_processes_rss_mib": (server_after - service_after) / MiB,
        "client_rss_mib": client_after / MiB,
        "server_rss_delta_mib": (server_after - server_before) / MiB,
        "client_rss_delta_mib": (client_after - client_before) / MiB,
    }


SCENARIOS: list[Scenario] = [
    Scenario(
        "unary_latency",
        lambda c: f"Unary 16-byte echo, sequential ({c.latency_calls} calls)",
        "shared",
        lambda c: [
            Metric("p50_ms", "p50 latency (ms)", "lower", 3),
            Metric("p99_ms", "p99 latency (ms)", "lower", 3),
        ],
        _in_caller(
            "unary_latency",
            lambda c: {"warmup": c.latency_warmup, "calls": c.latency_calls},
            "unary_latency",
        ),
    ),
    Scenario(
        "unary_throughput",
        lambda c: (
            f"Unary 16-byte echo, {c.tput_concurrency} concurrent callers "
            f"({c.tput_concurrency * c.tput_per_caller} calls)"
        ),
        "shared",
        lambda c: [
            Metric("calls_per_s", "throughput (calls/s)", "higher", 0),
            *_cpu_metrics("call"),
        ],
        _in_caller(
            "unary_throughput",
            lambda c: {
                "concurrency": c.tput_concurrency,
                "per_caller": c.tput_per_caller,
                "warmup": c.tput_warmup,
            },
            "unary_throughput",
            work="calls_all",
        ),
    ),
    Scenario(
        "stream_1mib",
        lambda c: (
            f"Server streaming, {c.stream_count} x {_size(c.stream_size)} "
            f"({_size(c.stream_count * c.stream_size)})"
        ),
        "shared",
        lambda c: [
            Metric("mib_per_s", "throughput (MiB/s)", "higher", 1),
            *_cpu_metrics("MiB"),
        ],
        _in_caller(
            "stream",
            lambda c: {"count": c.stream_count, "size": c.stream_size},
            "stream_1mib",
            work="mib_all",
        ),
    ),
    Scenario(
        "big_unary",
        lambda c: f"One large unary message (request echoed back: {_size(c.big_large)} each way)",
        "shared",
        lambda c: [
            Metric("small_s", f"{_size(c.big_small)} round trip (s)", "lower", 3),
            Metric("large_s", f"{_size(c.big_large)} round trip (s)", "lower", 3),
            Metric(
                "scaling",
                f"scaling {_size(c.big_large)}/{_size(c.big_small)} (linear = "
                f"{c.big_large / c.big_small:g})",
                "linear",
                2,
            ),
        ],
        _in_caller(
            "big_unary", lambda c: {"small": c.big_small, "large": c.big_large}, "big_unary"
        ),
    ),
    Scenario(
        "memory_growth",
        lambda c: f"Memory growth over {c.growth_calls:,} sequential unary calls (fresh pair)",
        "isolated",
        lambda c: [
            Metric("server_growth_mib", "server RSS growth (MiB)", "lower", 2, ratio_floor=1.0),
            Metric("client_growth_mib", "client RSS growth (MiB)", "lower", 2, ratio_floor=1.0),
        ],
        _run_memory_growth,
    ),
    Scenario(
        "streams_1000",
        lambda c: f"{c.streams} concurrent bidi streams, 2 round trips each (fresh pair)",
        "isolated",
        lambda c: [
            Metric("time_s", "open + 2 round trips + close (s)", "lower", 3),
            Metric("server_rss_mib", "server RSS after (MiB)", "lower", 1),
            Metric("client_rss_mib", "client RSS after (MiB)", "lower", 1),
        ],
        _run_streams,
    ),
]


# -- machine information ------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    mem_total = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_total = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        import google.protobuf

        protobuf = google.protobuf.__version__
    except Exception:
        protobuf = "unknown"
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "mem_total_gib": mem_total,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "grpcio": grpc.__version__,
        "protobuf": protobuf,
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }


# -- running ------------------------------------------------------------------------------


def grpctunnel_command_or_none() -> list[str]:
    try:
        return grpctunnel_command()
    except FileNotFoundError:
        return []


def _process_label(process: Any) -> str:
    """``serve``/``expose`` for the cli path's processes (the command's first word),
    ``sshd``/``ssh`` for the ssh path's."""
    args = process.args if isinstance(process.args, list | tuple) else [str(process.args)]
    program = Path(str(args[0])).name
    if program in ("sshd", "ssh"):
        return program
    words = [str(a) for a in args[1:] if not str(a).startswith("-")]
    return words[0] if words else Path(str(args[0])).name


def _rotated(paths: list[PathDef], k: int) -> list[PathDef]:
    k %= len(paths)
    return paths[k:] + paths[:k]


class Runner_:
    def __init__(
        self, paths: list[PathDef], scenarios: list[Scenario], ctx: RunContext, log: Console
    ):
        self.paths = paths
        self.scenarios = scenarios
        self.ctx = ctx
        self.log = log
        self.samples: dict[str, dict[str, list[dict[str, Any]]]] = {
            s.name: {p.name: [] for p in paths} for s in scenarios
        }
        self.errors: list[dict[str, Any]] = []

    def _error(self, rep: int, scenario: str, path: str, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc))
        self.errors.append({"repeat": rep, "scenario": scenario, "path": path, "error": text})
        last = text.strip().splitlines()[-1] if text.strip() else repr(exc)
        self.log.print(f"[red]  ! {scenario} / {path}: {last}[/]")

    def _measure(self, rep: int, pair: Pair, scenario: Scenario, path: PathDef) -> None:
        if scenario.name in path.skips:
            if rep == 0:
                self.log.print(
                    f"  {scenario.name:<17} {path.name:<8} [dim]skipped: not on this path[/]"
                )
            return
        started = time.monotonic()
        try:
            result = scenario.run(pair, path, self.ctx)
        except Exception as e:
            self._error(rep, scenario.name, path.name, e)
            return
        self.samples[scenario.name][path.name].append(result)
        shown = ", ".join(
            f"{m.key}={result[m.key]:.{max(m.digits, 1)}f}"
            for m in scenario.metrics(self.ctx.counts)
            if m.key in result
        )
        self.log.print(
            f"  {scenario.name:<17} {path.name:<8} {shown}  "
            f"[dim]({time.monotonic() - started:.1f} s)[/]"
        )

    def _with_pair(self, rep: int, paths: list[PathDef], scenarios: list[Scenario]) -> None:
        """Starts a pair, opens ``paths`` on it, runs ``scenarios`` (scenario by scenario,
        path by path), stops it."""
        try:
            pair = Pair.start()
        except Exception as e:
            for s in scenarios:
                for p in paths:
                    self._error(rep, s.name, p.name, e)
            return
        self.log.print(f"  [dim]service pid {pair.service.pid}, caller pid {pair.caller.pid}[/]")
        try:
            opened: list[PathDef] = []
            for path in paths:
                try:
                    pair.open_path(path)
                    opened.append(path)
                    extra = pair.processes.get(path.name, [])
                    if extra:
                        shown = ", ".join(f"{_process_label(p)} pid {p.pid}" for p in extra)
                        self.log.print(f"  [dim]{path.name}: {shown}[/]")
                except Exception as e:
                    for s in scenarios:
                        self._error(rep, s.name, path.name, e)
            for scenario in scenarios:
                for path in opened:
                    self._measure(rep, pair, scenario, path)
            for path in opened:
                try:
                    pair.close_path(path)
                except Exception as e:
                    self._error(rep, "close", path.name, e)
        finally:
            pair.stop()

    def run(self, repeat: int) -> None:
        shared = [s for s in self.scenarios if s.pair == "shared"]
        isolated = [s for s in self.scenarios if s.pair == "isolated"]
        for rep in range(repeat):
            order = _rotated(self.paths, rep)
            self.log.rule(f"run {rep + 1}/{repeat}: path order {', '.join(p.name for p in order)}")
            if shared:
                self.log.print("[bold]shared pair[/] (one service + one caller process)")
                self._with_pair(rep, order, shared)
            if isolated:
                for path in order:
                    self.log.print(f"[bold]fresh pair[/] for {path.name}")
                    self._with_pair(rep, [path], isolated)


# -- aggregation, table, JSON -------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def aggregate(runner: Runner_, counts: Counts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario in runner.scenarios:
        skipped = {p.name: p.skips[scenario.name] for p in runner.paths if scenario.name in p.skips}
        per_path = runner.samples[scenario.name]
        metrics: dict[str, Any] = {}
        for metric in scenario.metrics(counts):
            values: dict[str, Any] = {}
            for path, results in per_path.items():
                samples = [r[metric.key] for r in results if metric.key in r]
                values[path] = {"median": _median(samples), "samples": samples}
            base = values.get(BASELINE, {}).get("median")
            ratios: dict[str, float | None] = {}
            for path in per_path:
                if path == BASELINE:
                    continue
                value = values[path]["median"]
                usable = base is not None and value is not None and base != 0
                if usable and metric.ratio_floor and abs(base) < metric.ratio_floor:
                    usable = False
                ratios[path] = value / base if usable else None
            metrics[metric.key] = {
                "label": metric.label,
                "better": metric.better,
                "values": values,
                "ratios": ratios,
            }
        extra_keys = sorted(
            {k for results in per_path.values() for r in results for k in r}
            - {m.key for m in scenario.metrics(counts)}
        )
        details = {
            key: {
                path: _median([r[key] for r in results if isinstance(r.get(key), int | float)])
                for path, results in per_path.items()
            }
            for key in extra_keys
        }
        out[scenario.name] = {
            "title": scenario.title(counts),
            "pair": scenario.pair,
            "metrics": metrics,
            "details_median": details,
            "skipped": skipped,
            "runs": per_path,
        }
    return out


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _ratio_cell(ratio: float | None, better: str) -> str:
    if ratio is None:
        return "[dim]n/a[/]"
    text = f"{ratio:.2f}"
    if better == "linear":
        return text
    worse_by = ratio if better == "lower" else (1 / ratio if ratio > 0 else float("inf"))
    if worse_by <= 1.05:
        verdict, color = ("≈" if worse_by >= 0.95 else "better"), "green"
    elif worse_by <= 1.25:
        verdict, color = "worse", "yellow"
    else:
        verdict, color = "worse", "red"
    return f"[{color}]{text} {verdict}[/]"


def build_table(report: dict[str, Any], paths: list[PathDef], caption: str) -> Table:
    table = Table(title="grpctunnel benchmarks (medians)", caption=caption, caption_justify="left")
    table.add_column("scenario / figure", no_wrap=True)
    table.add_column("better", no_wrap=True)
    for path in paths:
        table.add_column(path.label, justify="right", no_wrap=True)
        if path.name != BASELINE:
            table.add_column(f"{path.label} ÷ {BASELINE}", justify="right", no_wrap=True)
    digits_of = {(s.name, m.key): m.digits for s in SCENARIOS for m in s.metrics(report["_counts"])}
    for name, scenario in report["scenarios"].items():
        table.add_row(f"[bold cyan]{scenario['title']}[/]", *([""] * (len(table.columns) - 1)))
        metrics = list(scenario["metrics"].items())
        for i, (key, metric) in enumerate(metrics):
            digits = digits_of.get((name, key), 2)
            better = {"lower": "lower", "higher": "higher", "linear": "≈ linear"}[metric["better"]]
            cells = [f"  {metric['label']}", better]
            for path in paths:
                if path.name in scenario.get("skipped", {}):
                    cells.append("[dim]skipped[/]")
                    if path.name != BASELINE:
                        cells.append("[dim]n/a[/]")
                    continue
                cells.append(_fmt(metric["values"][path.name]["median"], digits))
                if path.name != BASELINE:
                    cells.append(_ratio_cell(metric["ratios"].get(path.name), metric["better"]))
            table.add_row(*cells, end_section=i == len(metrics) - 1)
    return table


def caption_text(
    machine: dict[str, Any], repeat: int, profile: str, report: dict[str, Any] | None = None
) -> str:
    text = (
        f"{machine['cpu_model']} · {machine['usable_cores']} cores · Python {machine['python']} · "
        f"grpcio {machine['grpcio']} · profile {profile} · median of {repeat} run(s)"
        f" · malloc {(report or {}).get('meta', {}).get('malloc', 'default')}\n"
        f"ratio = path ÷ {BASELINE}. 'better' says which way is good: for 'lower' rows a ratio "
        f"above 1 means the tunnel is slower/bigger; for 'higher' rows a ratio below 1 means "
        f"the tunnel is slower. ≈: within 5 %; yellow: up to 25 % worse; red: more."
    )
    if report is not None and "cli" in report.get("paths", {}):
        tunnels = report["meta"].get("cli", {}).get("tunnels")
        text += (
            f"\ncli: `grpctunnel expose --tunnels {tunnels}`; its server RSS is the service "
            f"process plus the serve and expose processes."
        )
    skipped = {
        (path, reason)
        for scenario in (report or {}).get("scenarios", {}).values()
        for path, reason in scenario.get("skipped", {}).items()
    }
    for path, reason in sorted(skipped):
        text += f"\nskipped on {path}: {reason}"
    return text


# scenarios that are programs of their own (their own processes, their own table), run
# after the table when named with --scenarios: name -> script, and its arguments per
# profile (default, quick, smoke)
EXTERNAL: dict[str, tuple[str, dict[str, list[str]]]] = {
    "cluster": (
        "cluster.py",
        {
            "default": [],
            "quick": ["--calls", "1000", "--repeat", "1"],
            "smoke": ["--calls", "50", "--tunnels", "1", "--repeat", "1"],
        },
    ),
    "many_tunnels": (
        "many_tunnels.py",
        {
            "default": [],
            "quick": ["--tunnels", "10,1000", "--seconds", "2"],
            "smoke": ["--tunnels", "2,10", "--seconds", "0.5"],
        },
    ),
}


def run_external(name: str, profile: str, results_dir: Path, log: Console) -> dict[str, Any]:
    """Runs one of the EXTERNAL scenarios as its own process (its output shown as it
    comes); its JSON goes to ``results_dir/<name>.json``."""
    script, arguments = EXTERNAL[name]
    json_out = results_dir / f"{name}.json"
    command = [sys.executable, str(HERE / script), *arguments[profile], "--json", str(json_out)]
    log.rule(f"{name}: {' '.join(command[1:])}")
    status = subprocess.run(command, stdin=subprocess.DEVNULL, check=False).returncode
    return {"status": status, "json": str(json_out), "command": command[1:]}


def main(argv: list[str] | None = None) -> int:
    # only when run as a program: importing this module must not change the environment
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # inherited by the worker processes
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run, smaller counts (< ~60 s)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few calls per scenario (for tests; wins over --quick)",
    )
    parser.add_argument("--repeat", type=int, help="runs per scenario (default 3; --quick: 1)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument(
        "--paths",
        default=",".join(PATHS),
        help=f"comma-separated paths to measure (registered: {', '.join(PATHS)})",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(s.name for s in SCENARIOS),
        help="comma-separated scenarios to run (also: "
        + ", ".join(EXTERNAL)
        + ", programs of their own run after the table)",
    )
    parser.add_argument(
        "--profile",
        metavar="SCENARIO",
        help="cProfile the caller process during this scenario (e.g. unary_throughput); "
        "writes profile-SCENARIO-PATH.txt next to the JSON",
    )
    parser.add_argument(
        "--cli-tunnels",
        type=int,
        default=CLI.tunnels,
        metavar="N",
        help=f"reverse tunnels `grpctunnel expose` keeps open on the cli path (default {CLI.tunnels})",
    )
    parser.add_argument(
        "--tuned-malloc",
        action="store_true",
        help="run the service and caller processes with glibc's malloc tuned for large "
        "messages, as the grpctunnel command tunes itself (grpctunnel.allocator)",
    )
    args = parser.parse_args(argv)
    if args.tuned_malloc:  # inherited by the worker processes, spawned after this
        from grpctunnel.allocator import DEFAULT_MMAP_THRESHOLD, DEFAULT_TRIM_THRESHOLD

        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(DEFAULT_MMAP_THRESHOLD)
        os.environ["MALLOC_TRIM_THRESHOLD_"] = str(DEFAULT_TRIM_THRESHOLD)
    if not 1 <= args.cli_tunnels <= 64:
        parser.error("--cli-tunnels must be between 1 and 64")
    CLI.tunnels = args.cli_tunnels

    profile_name = "smoke" if args.smoke else "quick" if args.quick else "default"
    counts = PROFILES[profile_name]
    repeat = args.repeat if args.repeat is not None else counts.repeat
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    counts = replace(counts, repeat=repeat)

    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    unknown = [n for n in names if n not in PATHS]
    if unknown:
        parser.error(f"unknown path(s) {unknown}; registered: {list(PATHS)}")
    if BASELINE not in names:
        names.insert(0, BASELINE)
    names.sort(key=lambda n: (n != BASELINE, list(PATHS).index(n)))
    unavailable: dict[str, str] = {}
    for name in names:
        reason = PATHS[name].unavailable()
        if reason is not None:
            unavailable[name] = reason
    paths = [PATHS[n] for n in names if n not in unavailable]
    wanted = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    by_name = {s.name: s for s in SCENARIOS}
    if any(n not in by_name and n not in EXTERNAL for n in wanted):
        parser.error(f"unknown scenario in {wanted}; known: {[*by_name, *EXTERNAL]}")
    scenarios = [by_name[n] for n in wanted if n in by_name]
    external = [n for n in wanted if n in EXTERNAL]

    json_path: Path = args.json
    json_path.parent.mkdir(parents=True, exist_ok=True)
    console = Console(width=None if sys.stdout.isatty() else 200)
    log = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

    for name, reason in unavailable.items():
        log.print(f"[yellow]path {name} skipped: {reason}[/]")

    machine = machine_info()
    ctx = RunContext(counts, args.profile, json_path.parent)
    started = time.monotonic()
    runner = Runner_(paths, scenarios, ctx, log)
    external_results: dict[str, Any] = {}
    try:
        if scenarios:
            runner.run(repeat)
        for name in external:
            external_results[name] = run_external(name, profile_name, json_path.parent, log)
            if external_results[name]["status"] != 0:
                runner.errors.append(
                    {
                        "repeat": None,
                        "scenario": name,
                        "path": None,
                        "error": f"{name} exited with status {external_results[name]['status']}",
                    }
                )
    except KeyboardInterrupt:
        log.print("[red]interrupted: reporting what was measured[/]")
        runner.errors.append(
            {"repeat": None, "scenario": None, "path": None, "error": "interrupted"}
        )
    elapsed = time.monotonic() - started
    machine["loadavg_end"] = list(os.getloadavg())

    scenarios_out = aggregate(runner, counts)
    report = {
        "meta": {
            "machine": machine,
            "profile": profile_name,
            "repeat": repeat,
            "counts": asdict(counts),
            "duration_s": round(elapsed, 1),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime()),
            "argv": sys.argv[1:] if argv is None else argv,
            "baseline": BASELINE,
            "cli": {"tunnels": CLI.tunnels, "command": " ".join(grpctunnel_command_or_none())},
            # glibc malloc of the service and caller processes: "default", or "tuned" as
            # the grpctunnel command tunes its own (--tuned-malloc)
            "malloc": "tuned" if args.tuned_malloc else "default",
            "ratio": f"path / {BASELINE}; see each metric's 'better' (lower/higher/linear)",
        },
        "paths": {p.name: {"label": p.label, "description": p.description} for p in paths},
        "unavailable_paths": unavailable,
        "scenarios": scenarios_out,
        "external": external_results,
        "errors": runner.errors,
    }
    json_path.write_text(json.dumps(report, indent=2) + "\n")

    caption = caption_text(machine, repeat, profile_name, report)
    for name, reason in unavailable.items():
        caption += f"\npath {name} not measured: {reason}"
    if scenarios:
        console.print(build_table({**report, "_counts": counts}, paths, caption))
    for name, result in external_results.items():
        console.print(f"{name}: exit status {result['status']}, results in {result['json']}")
    console.print(f"total {elapsed:.0f} s · JSON: {json_path}")
    if runner.errors:
        console.print(f"[red]{len(runner.errors)} error(s); see 'errors' in the JSON[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
