"""The committed *_pb2 modules are exactly what scripts/gen_protos.py makes from the
committed .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        timeout=60,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "the generator wrote nothing"
    stale = [
        str(rel) for rel in generated if (ROOT / rel).read_bytes() != (tmp_path / rel).read_bytes()
    ]
    assert not stale, f"regenerate with `python scripts/gen_protos.py`: stale {stale}"


def test_public_api_of_the_examples_is_importable() -> None:
    import grpctunnel

    for name in (
        "TunnelServiceHandler",
        "TunnelServiceHandlerOptions",
        "PendingChannel",
        "ReverseTunnelServer",
        "TunnelServiceStub",
        "add_TunnelServiceServicer_to_server",
    ):
        assert hasattr(grpctunnel, name), name
