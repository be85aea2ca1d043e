"""Regenerate every *_pb2.py / *_pb2_grpc.py / *.pyi in the repository from its .proto.

Run from anywhere: ``python scripts/gen_protos.py``. With ``--out DIR`` the files are
written below DIR instead of the repository (the freshness test uses this to compare).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import google.rpc  # locates the .proto files of googleapis-common-protos
import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent

# (include root relative to the repo, proto file relative to that root, output dir relative to the repo)
TARGETS: list[tuple[str, str, str]] = [
    ("proto", "grpctunnel/v1/tunnel.proto", "."),
    ("proto", "grpctunnel/admin/v1/admin.proto", "."),
    ("proto", "grpctunnel_demo/v1/echo.proto", "."),
    ("examples/forward_tunnel", "echo.proto", "examples/forward_tunnel"),
    ("examples/reverse_tunnel", "echo.proto", "examples/reverse_tunnel"),
]


def _include_dirs() -> list[str]:
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = Path(next(iter(google.rpc.__path__))).parent.parent
    return [str(well_known), str(googleapis)]


def generate(out_root: Path) -> None:
    for include, proto, out in TARGETS:
        out_dir = out_root / out
        out_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "grpc_tools.protoc",
            f"-I{ROOT / include}",
            *(f"-I{d}" for d in _include_dirs()),
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(ROOT / include / proto),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {proto}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write below")
    ns = parser.parse_args()
    generate(ns.out.resolve())


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    main()
