"""Smoke test of benchmarks/run.py: a --smoke run (a few calls per scenario) finishes
and writes JSON with every scenario and every path, the cli path included (it runs the
`grpctunnel serve` and `grpctunnel expose` commands). No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.processes import clean_env

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "benchmarks" / "run.py"
GRPCTUNNEL = Path(sys.executable).parent / "grpctunnel"  # what the cli path runs
PATHS = {"direct", "forward", "reverse", "cli"}  # and ssh, where sshd is installed
SCENARIOS = {
    "unary_latency",
    "unary_throughput",
    "stream_1mib",
    "big_unary",
    "memory_growth",
    "streams_1000",
}
# scenarios a path leaves out on purpose (paths.PathDef.skips), with a reason in the JSON
SKIPPED: set[tuple[str, str]] = set()  # every path runs every scenario


def _run_py(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """benchmarks/run.py with ``args``, as a user runs it (bounded by ``timeout``)."""
    return subprocess.run(
        [sys.executable, str(RUN), *args],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_grpctunnel_executable_is_installed() -> None:
    assert GRPCTUNNEL.exists(), f"the cli path needs {GRPCTUNNEL} (pip install -e .)"


@pytest.mark.timeout(180)
def test_smoke_run_writes_every_scenario_and_path(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = _run_py("--quick", "--smoke", "--json", str(out), timeout=170)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(out.read_text())

    assert report["errors"] == []
    unavailable = report["unavailable_paths"]
    assert set(unavailable) <= {"ssh"}
    for reason in unavailable.values():
        assert "not installed" in reason or "/run/sshd" in reason
        assert "path ssh skipped: " + reason in " ".join(proc.stderr.split())
    paths = PATHS | ({"ssh"} - set(unavailable))
    assert set(report["paths"]) == paths
    machine = report["meta"]["machine"]
    for key in ("cpu_model", "usable_cores", "python", "grpcio"):
        assert machine[key]
    assert report["meta"]["cli"]["tunnels"] >= 1
    assert set(report["scenarios"]) == SCENARIOS
    for name, scenario in report["scenarios"].items():
        assert scenario["metrics"], name
        skipped = {path for (s, path) in SKIPPED if s == name}
        assert set(scenario["skipped"]) == skipped, name
        for path in skipped:
            assert scenario["skipped"][path], (name, path)  # a reason
        for key, metric in scenario["metrics"].items():
            assert set(metric["values"]) == paths, (name, key)
            for path, value in metric["values"].items():
                if path in skipped:
                    assert value["median"] is None and value["samples"] == [], (name, key, path)
                    continue
                assert value["median"] is not None, (name, key, path)
                assert len(value["samples"]) == 1, (name, key, path)
            assert set(metric["ratios"]) == paths - {"direct"}, (name, key)
            for path in skipped:
                assert metric["ratios"][path] is None, (name, key, path)

    # the cli path's server side is three processes: service, serve and expose
    streams = report["scenarios"]["streams_1000"]["details_median"]
    assert streams["path_processes_rss_mib"]["cli"] > 0
    assert streams["path_processes_rss_mib"]["direct"] == 0
    if "ssh" in paths:  # sshd and ssh (and the sshd child serving the forward)
        assert streams["path_processes_rss_mib"]["ssh"] > 0
    # CPU per call of every process, the path's own ones by name
    throughput = report["scenarios"]["unary_throughput"]
    assert "cpu_total_ms" in throughput["metrics"]
    assert set(throughput["details_median"]["cpu_serve_ms"]) >= {"cli"}
    assert throughput["details_median"]["cpu_expose_ms"]["cli"] is not None


@pytest.mark.timeout(120)
def test_many_tunnels_runs_from_run_py(tmp_path: Path) -> None:
    """The many-tunnel scenario is a program of its own, reachable by name from run.py."""
    out = tmp_path / "latest.json"
    proc = _run_py("--smoke", "--scenarios", "many_tunnels", "--json", str(out), timeout=110)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(out.read_text())
    assert report["errors"] == []
    assert report["scenarios"] == {}
    ran = report["external"]["many_tunnels"]
    assert ran["status"] == 0
    result = json.loads(Path(ran["json"]).read_text())
    assert result, "many_tunnels.py wrote its figures"


def test_unknown_scenario_is_refused_with_the_known_names(tmp_path: Path) -> None:
    proc = _run_py("--smoke", "--scenarios", "nope", "--json", str(tmp_path / "x"), timeout=60)
    assert proc.returncode == 2
    assert "unknown scenario" in proc.stderr and "many_tunnels" in proc.stderr
