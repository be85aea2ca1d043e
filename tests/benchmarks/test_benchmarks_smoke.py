"""Smoke test of benchmarks/run.py: a --smoke run (a few calls per scenario) finishes
and writes JSON with every scenario and every path. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "benchmarks" / "run.py"
PATHS = {"direct", "forward", "reverse"}
SCENARIOS = {
    "unary_latency",
    "unary_throughput",
    "stream_1mib",
    "big_unary",
    "memory_growth",
    "streams_1000",
}


@pytest.mark.timeout(180)
def test_smoke_run_writes_every_scenario_and_path(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(out.read_text())

    assert report["errors"] == []
    assert set(report["paths"]) >= PATHS
    machine = report["meta"]["machine"]
    for key in ("cpu_model", "usable_cores", "python", "grpcio"):
        assert machine[key]
    assert set(report["scenarios"]) == SCENARIOS
    for name, scenario in report["scenarios"].items():
        assert scenario["metrics"], name
        for key, metric in scenario["metrics"].items():
            assert set(metric["values"]) == set(report["paths"]), (name, key)
            for path, value in metric["values"].items():
                assert value["median"] is not None, (name, key, path)
                assert len(value["samples"]) == 1, (name, key, path)
            assert set(metric["ratios"]) == set(report["paths"]) - {"direct"}, (name, key)
