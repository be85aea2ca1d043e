#!/usr/bin/env python
"""Sampling profiles of every process on one path while a scenario runs over and over.

    python benchmarks/profile_path.py --path cli --scenario unary_throughput
                                      [--duration 8] [--rate 200] [--native]
                                      [--cli-tunnels N] [--out DIR]

Starts a service and a caller process (as run.py does), opens the path, and keeps the
caller running the scenario in a loop while ``py-spy record --format raw`` samples each
process of the path (service, caller, and the path's own: serve and expose on the cli
path) for ``--duration`` seconds. Then, for each process, it prints:

* its CPU use over the window (user + system time of all its threads, % of one core):
  the process near 100 % of one core is the one that limits the path;
* the functions with the most *own* samples (the leaf of the Python stack), and those
  present in the most samples (inclusive), by function and file.

Raw py-spy files (collapsed stacks, one line per stack with its count; open them with
e.g. speedscope or inferno) and the summary go to ``--out`` (default
``benchmarks/results/profiles``). py-spy samples only threads that are not idle, so
"samples" is the busy share of ``duration * rate``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from paths import CLI, PATHS, Pair  # noqa: E402

MiB = 1 << 20

# caller-side scenario and parameters for each run.py scenario (the default counts)
WORKLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "unary_latency": ("unary_latency", {"warmup": 10, "calls": 2000}),
    "unary_throughput": (
        "unary_throughput",
        {"concurrency": 64, "per_caller": 100, "warmup": 1},
    ),
    "stream_1mib": ("stream", {"count": 200, "size": MiB}),
    "big_unary": ("big_unary", {"small": 8 * MiB, "large": 64 * MiB}),
    "streams_1000": ("streams", {"streams": 1000}),
}
# what one run of each workload does, to give CPU per unit of work
WORK = {
    "unary_latency": ("calls", "call"),
    "unary_throughput": ("calls", "call"),
    "stream_1mib": ("mib", "MiB"),
}
HEADLINE = {
    "unary_latency": "p50_ms",
    "unary_throughput": "calls_per_s",
    "stream_1mib": "mib_per_s",
    "big_unary": "small_s",
    "streams_1000": "time_s",
}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def parse_raw(path: Path) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    """Own samples by frame (with line), own and inclusive samples by function (no
    line), and the total, from a py-spy raw (collapsed) file."""
    own_line: Counter[str] = Counter()
    own_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        own_line[frames[-1]] += count
        own_fn[_function(frames[-1])] += count
        for fn in {_function(f) for f in frames}:
            incl_fn[fn] += count
    return own_line, own_fn, incl_fn, total


def _function(frame: str) -> str:
    """``name (file:line)`` -> ``name (file)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarise(label: str, raw: Path, cpu_pct: float, expected: int, top: int) -> str:
    if not raw.exists():
        return f"== {label}: CPU {cpu_pct:.0f} % of one core; no profile (py-spy failed)"
    own_line, own_fn, incl_fn, total = parse_raw(raw)
    out = [
        f"== {label}: CPU {cpu_pct:.0f} % of one core; {total} busy samples "
        f"({100 * total / max(expected, 1):.0f} % of {expected}); raw: {raw.name}"
    ]
    if not total:
        return "\n".join(out)

    def block(title: str, counter: Counter[str]) -> None:
        out.append(f"  {title}")
        for name, count in counter.most_common(top):
            out.append(f"    {100 * count / total:5.1f} %  {name}")

    block("own time, by function", own_fn)
    block("own time, by line", own_line)
    block("inclusive, by function", incl_fn)
    return "\n".join(out)


def _work_in_window(
    scenario: str,
    results: list[dict[str, Any]],
    finished: list[float],
    start: float,
    end: float,
) -> tuple[float, str] | None:
    """How many calls (or MiB) were made inside [start, end]: each run's amount, in
    proportion to the part of its elapsed time that falls in the window."""
    if scenario not in WORK:
        return None
    key, unit = WORK[scenario]
    total = 0.0
    for result, done in zip(results, finished, strict=False):
        elapsed = float(result.get("elapsed_s") or 0.0)
        amount = float(result.get(key) or 0.0)
        if elapsed <= 0 or amount <= 0:
            continue
        begun = done - elapsed
        overlap = max(0.0, min(done, end) - max(begun, start))
        total += amount * overlap / elapsed
    return total, unit


def main(argv: list[str] | None = None) -> int:
    # only when run as a program: importing this module must not change the environment
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", default="cli", choices=list(PATHS))
    parser.add_argument("--scenario", default="unary_throughput", choices=list(WORKLOADS))
    parser.add_argument("--duration", type=float, default=8.0, help="seconds sampled")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument(
        "--native",
        action="store_true",
        help="py-spy --native (C frames; pauses each process while sampling, so slower)",
    )
    parser.add_argument("--cli-tunnels", type=int, default=CLI.tunnels, metavar="N")
    parser.add_argument(
        "--cpu-only",
        action="store_true",
        help="no py-spy: only the CPU use of each process (no profiler overhead)",
    )
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "profiles")
    args = parser.parse_args(argv)
    CLI.tunnels = args.cli_tunnels
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists() and not args.cpu_only:
        parser.error(f"py-spy not found at {py_spy} (pip install py-spy)")
    args.out.mkdir(parents=True, exist_ok=True)

    scenario, params = WORKLOADS[args.scenario]
    path = PATHS[args.path]
    pair = Pair.start()
    results: list[dict[str, Any]] = []
    finished: list[float] = []  # when each run of ``results`` ended (monotonic)
    errors: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        try:
            while not stop.is_set():
                results.append(
                    pair.caller.request("run", name=path.name, scenario=scenario, params=params)
                )
                finished.append(time.monotonic())
        except BaseException as e:
            errors.append(e)

    try:
        pair.open_path(path)
        processes = {"service": pair.service.pid, "caller": pair.caller.pid}
        for process in pair.processes.get(path.name, []):
            processes[str(process.args[1])] = process.pid
        print(
            f"{args.path} / {args.scenario}: "
            + ", ".join(f"{name} pid {pid}" for name, pid in processes.items()),
            file=sys.stderr,
        )
        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        time.sleep(1.5)  # warm-up
        stem = f"{args.path}-{args.scenario}"
        raws = {name: args.out / f"{stem}-{name}.raw.txt" for name in processes}
        before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        started = time.monotonic()
        spies = (
            []
            if args.cpu_only
            else [
                subprocess.Popen(
                    [
                        str(py_spy),
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(int(args.duration)),
                        "--rate",
                        str(args.rate),
                        "--format",
                        "raw",
                        # --native must pause the process while it samples
                        *(["--native"] if args.native else ["--nonblocking"]),
                        "-o",
                        str(raws[name]),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                for name, pid in processes.items()
            ]
        )
        for spy in spies:
            _, err = spy.communicate(timeout=args.duration + 60)
            if spy.returncode != 0:
                print(err.decode(errors="replace"), file=sys.stderr)
        if args.cpu_only:
            time.sleep(args.duration)
        window = time.monotonic() - started
        after = {name: cpu_seconds(pid) for name, pid in processes.items()}
        stop.set()
        worker.join(300)
        if errors:
            raise errors[0]
    finally:
        stop.set()
        try:
            pair.close_path(path)
        finally:
            pair.stop()

    key = HEADLINE[args.scenario]
    figures = sorted(r[key] for r in results if key in r)
    lines = [
        f"{args.path} / {args.scenario}, {args.duration:g} s at {args.rate} Hz"
        + (f", expose --tunnels {CLI.tunnels}" if args.path == "cli" else "")
        + f"; {key} per run while sampled: "
        + ", ".join(f"{v:.3g}" for v in figures)
    ]
    expected = int(args.duration * args.rate)
    work = _work_in_window(args.scenario, results, finished, started, started + window)
    if work is not None:
        amount, unit = work
        lines.append(f"{amount:,.0f} {unit}s in the {window:.1f} s window")
    for name in processes:
        cpu_pct = 100 * (after[name] - before[name]) / window
        per = ""
        if work is not None and work[0] > 0:
            per = f"; {1e3 * (after[name] - before[name]) / work[0]:.3f} ms CPU per {work[1]}"
        if args.cpu_only:
            lines.append(f"== {name}: CPU {cpu_pct:.0f} % of one core{per}")
        else:
            lines.append(summarise(name, raws[name], cpu_pct, expected, args.top) + per)
    text = "\n\n".join(lines) + "\n"
    suffix = "cpu" if args.cpu_only else "summary"
    (args.out / f"{stem}-{suffix}.txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
