"""How long the `grpctunnel` command takes to start and make one call, next to its floors.

Starts the demo backend (`grpctunnel demo-backend --port 0`), then times, by wall clock,
N runs (default 20) of each of: an empty Python, Python importing grpc (the floor no
grpc client in Python can go under), `grpctunnel --help`, a unary `grpctunnel call` to
the backend, and the same call with `grpcurl` when a `grpcurl` binary is on PATH. Each
run's output goes to a pipe, as in a script. Prints the median and p90 of the wall-clock
time of each, and the median of its CPU time (user + system: less sensitive than wall time
to other processes sharing the machine), as a Markdown table (the one in
benchmarks/README.md).

    .venv/bin/python benchmarks/startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
GRPCTUNNEL = str(BIN / "grpctunnel") if (BIN / "grpctunnel").exists() else "grpctunnel"
METHOD = "grpctunnel.demo.v1.Echo/Echo"
REQUEST = '{"msg":"hi"}'
READY = re.compile(rb"listening on \S+:(\d+)")


def child_env() -> dict[str, str]:
    """Our environment, less what would change what the command does or prints."""
    dropped = ("GRPCTUNNEL_SERVER", "GRPCTUNNEL_TOKEN", "FORCE_COLOR", "PYTHONASYNCIODEBUG")
    return {k: v for k, v in os.environ.items() if k not in dropped}


def start_backend() -> tuple[subprocess.Popen[bytes], str]:
    """The demo backend on a free port, and its address once it listens."""
    process = subprocess.Popen(
        [GRPCTUNNEL, "demo-backend", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    found = READY.search(line)
    if found is None:
        process.kill()
        raise SystemExit(f"the demo backend did not start: {line.decode(errors='replace')}")
    return process, f"127.0.0.1:{found.group(1).decode()}"


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def time_runs(command: list[str], runs: int) -> tuple[list[float], list[float]]:
    """Wall-clock seconds of each run, and CPU seconds (user + system, every thread) of
    each; a failing run ends the benchmark."""
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
        )
        assert process.stdout is not None and process.stderr is not None
        process.stdout.read()  # stderr is small: read after stdout, it cannot fill its pipe
        errors = process.stderr.read().decode(errors="replace").strip()
        _, status, usage = os.wait4(process.pid, 0)  # reaped here, with its resource use
        walls.append(time.perf_counter() - started)
        cpus.append(usage.ru_utime + usage.ru_stime)
        process.returncode = code = os.waitstatus_to_exitcode(status)
        process.stdout.close()
        process.stderr.close()
        if code != 0:
            raise SystemExit(f"{' '.join(command)} failed ({code}): {errors}")
    return walls, cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (20)")
    args = parser.parse_args()
    backend, address = start_backend()
    try:
        cases: list[tuple[str, list[str]]] = [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ('python -c "import grpc"', [sys.executable, "-c", "import grpc"]),
            ("grpctunnel --help", [GRPCTUNNEL, "--help"]),
            ("grpctunnel call (unary)", [GRPCTUNNEL, "call", "-s", address, METHOD, REQUEST]),
        ]
        grpcurl = shutil.which("grpcurl")
        if grpcurl is None:
            print("(no grpcurl on PATH: its row is skipped)", file=sys.stderr)
        else:
            cases.append(
                ("grpcurl (unary)", [grpcurl, "-plaintext", "-d", REQUEST, address, METHOD])
            )
        print(
            f"| command ({args.runs} runs, output piped) | median (s) | p90 (s) | CPU median (s) |"
        )
        print("|---|---|---|---|")
        for label, command in cases:
            walls, cpus = time_runs(command, args.runs)
            median, p90 = statistics.median(walls), percentile(walls, 0.9)
            cpu = statistics.median(cpus)
            print(f"| `{label}` | {median:.3f} | {p90:.3f} | {cpu:.3f} |", flush=True)
    finally:
        backend.send_signal(signal.SIGTERM)
        try:
            backend.wait(10)
        except subprocess.TimeoutExpired:
            backend.kill()
            backend.wait()


if __name__ == "__main__":
    main()
