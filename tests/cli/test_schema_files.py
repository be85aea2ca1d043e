"""Schemas from files instead of reflection: `call`, `list` and `describe` with --proto,
--import-path and --protoset against a real backend that has no reflection, the protoc
cache, --protoset-out, and every way the files can be wrong.

Each command is the installed `grpctunnel` executable; the backend is a real grpc.aio
server (tests/cli/kv_backend.py) whose schema is tests/protos/kv/v1/kv.proto.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from support.launcher import assert_failure

from .helpers import Result, run_cli
from .kv_backend import KV_PROTO, KV_SERVICE, PROTOS

pytestmark = pytest.mark.timeout(90)

NOT_FOUND = 64 + 5
RANGE_FOO = '{"key": "Zm9v"}'  # base64 of b"foo"
KV_FILES = ("--proto", KV_PROTO, "--import-path", str(PROTOS))
NOWHERE = "127.0.0.1:1"  # no server: commands that need none must not try one


async def grpctunnel(*args: str, cache: Path, server: str | None = None) -> Result:
    """The command with its own protoc cache."""
    return await run_cli(*args, server=server, env={"GRPCTUNNEL_CACHE_DIR": str(cache)})


def list_dir(path: Path) -> list[Path]:
    return sorted(path.iterdir())


def read_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


def assert_foo(result: Result) -> None:
    assert result.returncode == 0, result
    reply = json.loads(result.stdout)
    assert reply == {
        "kvs": [{"key": "Zm9v", "value": "YmFy", "modTime": "2023-11-14T22:13:20Z"}],
        "count": "1",
    }


# --- call -----------------------------------------------------------------------------------


async def test_call_with_proto_files_reaches_a_backend_without_reflection(
    kv_backend: str, tmp_path: Path
) -> None:
    without = await grpctunnel("call", "KV/Range", RANGE_FOO, server=kv_backend, cache=tmp_path)
    assert_failure(without, 1, "does not offer reflection", "--proto or --protoset")

    full = await grpctunnel(
        "call", *KV_FILES, f"{KV_SERVICE}/Range", RANGE_FOO, server=kv_backend, cache=tmp_path
    )
    assert_foo(full)
    short = await grpctunnel(
        "call", "-I", str(PROTOS), "--proto", KV_PROTO, "KV/Range", RANGE_FOO,
        server=kv_backend, cache=tmp_path,
    )  # fmt: skip
    assert_foo(short)

    watched = await grpctunnel(
        "call", *KV_FILES, "KV.Watch", '{"key": "Zm9v", "count": 3}',
        server=kv_backend, cache=tmp_path,
    )  # fmt: skip
    assert watched.returncode == 0, watched
    assert [json.loads(line)["seq"] for line in watched.lines] == [1, 2, 3]

    empty = await grpctunnel("call", *KV_FILES, "KV/Ping", server=kv_backend, cache=tmp_path)
    assert (empty.returncode, empty.stdout.strip()) == (0, "{}"), empty

    missing = await grpctunnel(
        "call", *KV_FILES, "KV/Range", '{"key": "bm9uZQ=="}', server=kv_backend, cache=tmp_path
    )
    assert missing.returncode == NOT_FOUND, missing
    assert "NOT_FOUND: no key b'none'" in missing.stderr


async def test_a_proto_file_by_path_needs_no_import_path_when_it_imports_only_well_known_types(
    kv_backend: str, tmp_path: Path
) -> None:
    single = tmp_path / "single.proto"
    single.write_text(
        'syntax = "proto3";\npackage kvtest.v1;\nimport "google/protobuf/empty.proto";\n'
        "service KV { rpc Ping(google.protobuf.Empty) returns (google.protobuf.Empty); }\n"
    )
    result = await grpctunnel(
        "call", "--proto", str(single), "KV/Ping", server=kv_backend, cache=tmp_path / "cache"
    )
    assert (result.returncode, result.stdout.strip()) == (0, "{}"), result


async def test_call_with_a_protoset(kv_backend: str, kv_protoset: Path, tmp_path: Path) -> None:
    result = await grpctunnel(
        "call", "--protoset", str(kv_protoset), "KV/Range", RANGE_FOO,
        server=kv_backend, cache=tmp_path,
    )  # fmt: skip
    assert_foo(result)
    assert not list_dir(tmp_path), "a protoset needs no protoc and caches nothing"


async def test_the_files_are_the_only_schema(kv_backend: str, tmp_path: Path) -> None:
    """A name the files do not define is unknown, even if the server could resolve it."""
    result = await grpctunnel(
        "call", *KV_FILES, "grpctunnel.demo.v1.Echo/Echo", server=kv_backend, cache=tmp_path
    )
    assert_failure(result, 1, "unknown service 'grpctunnel.demo.v1.Echo'", KV_SERVICE)
    method = await grpctunnel("call", *KV_FILES, "KV/Delete", server=kv_backend, cache=tmp_path)
    assert_failure(method, 1, "has no method 'Delete'", "Range", "Watch")


# --- list and describe ------------------------------------------------------------------------


async def test_list_and_describe_from_files_ask_no_server(tmp_path: Path) -> None:
    listed = await grpctunnel("list", *KV_FILES, server=NOWHERE, cache=tmp_path)
    assert (listed.returncode, listed.lines) == (0, [KV_SERVICE]), listed
    methods = await grpctunnel("list", *KV_FILES, "KV", server=NOWHERE, cache=tmp_path)
    assert methods.lines == [f"{KV_SERVICE}.Range", f"{KV_SERVICE}.Watch", f"{KV_SERVICE}.Ping"]

    service = await grpctunnel("describe", *KV_FILES, "KV", server=NOWHERE, cache=tmp_path)
    assert service.returncode == 0, service
    assert f"{KV_SERVICE} is a service:" in service.stdout
    assert (
        "rpc Watch ( .kvtest.v1.WatchRequest ) returns ( stream .kvtest.v1.WatchResponse );"
        in service.stdout
    )

    message = await grpctunnel("describe", *KV_FILES, "KeyValue", server=NOWHERE, cache=tmp_path)
    assert "kvtest.v1.KeyValue is a message:" in message.stdout, message
    assert ".google.protobuf.Timestamp mod_time = 3;" in message.stdout

    everything = await grpctunnel("describe", *KV_FILES, server=NOWHERE, cache=tmp_path)
    assert everything.returncode == 0, everything
    assert f"{KV_SERVICE} is a service:" in everything.stdout
    assert everything.stderr == ""


async def test_protoc_runs_once_then_the_cache_answers_until_a_source_changes(
    tmp_path: Path,
) -> None:
    protos = tmp_path / "protos"
    shutil.copytree(PROTOS, protos)
    cache = tmp_path / "cache"
    files = ("--proto", KV_PROTO, "-I", str(protos))

    started = time.monotonic()
    first = await grpctunnel("describe", *files, "KeyValue", server=NOWHERE, cache=cache)
    compiled = time.monotonic() - started
    assert first.returncode == 0, first
    (entry,) = list_dir(cache)
    stored = (entry / "set.pb").stat().st_mtime_ns

    started = time.monotonic()
    second = await grpctunnel("describe", *files, "KeyValue", server=NOWHERE, cache=cache)
    cached = time.monotonic() - started
    assert second.stdout == first.stdout
    assert [entry] == list_dir(cache)
    assert (entry / "set.pb").stat().st_mtime_ns == stored, "the cached set was not reused"
    print(f"describe with --proto: {compiled:.2f}s compiling, {cached:.2f}s from the cache")

    # an import (not a given file) changes: the entry no longer applies
    types = protos / "kv" / "v1" / "types.proto"
    types.write_text(types.read_text().replace("}\n", "  string note = 4;\n}\n"))
    third = await grpctunnel("describe", *files, "KeyValue", server=NOWHERE, cache=cache)
    assert "string note = 4;" in third.stdout, third


# --- --protoset-out ---------------------------------------------------------------------------


async def test_protoset_out_from_files_round_trips(kv_backend: str, tmp_path: Path) -> None:
    out = tmp_path / "used.protoset"
    written = await grpctunnel(
        "call", *KV_FILES, "--protoset-out", str(out), "KV/Range", RANGE_FOO,
        server=kv_backend, cache=tmp_path,
    )  # fmt: skip
    assert_foo(written)
    names = [f.name for f in read_set(out).file]
    assert names == [
        "google/protobuf/empty.proto",
        "google/protobuf/timestamp.proto",
        "kv/v1/types.proto",
        "kv/v1/kv.proto",
    ]
    again = await grpctunnel(
        "call", "--protoset", str(out), "KV/Range", RANGE_FOO, server=kv_backend, cache=tmp_path
    )
    assert_foo(again)


async def test_protoset_out_from_reflection_serves_a_backend_without_it(
    backend: str, no_reflection_backend: str, tmp_path: Path
) -> None:
    out = tmp_path / "echo.protoset"
    described = await grpctunnel(
        "describe", "--protoset-out", str(out), "Echo", server=backend, cache=tmp_path
    )
    assert described.returncode == 0, described
    result = await grpctunnel(
        "call", "--protoset", str(out), "Echo/Echo", '{"msg": "hi"}',
        server=no_reflection_backend, cache=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["msg"] == "hi"


async def test_protoset_out_that_cannot_be_written(tmp_path: Path) -> None:
    result = await grpctunnel(
        "describe", *KV_FILES, "--protoset-out", str(tmp_path / "no" / "such" / "dir.pb"), "KV",
        server=NOWHERE, cache=tmp_path,
    )  # fmt: skip
    assert_failure(result, 1, "cannot write --protoset-out", "No such file or directory")


# --- wrong files ------------------------------------------------------------------------------


async def test_a_proto_that_does_not_compile_is_one_line_naming_file_and_line(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.proto"
    bad.write_text('syntax = "proto3";\npackage bad;\nmessage X {\n  int32 a = 1\n}\n')
    result = await grpctunnel("list", "--proto", str(bad), server=NOWHERE, cache=tmp_path)
    assert_failure(result, 1, "cannot compile bad.proto", "bad.proto:5:1", 'Expected ";"')
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "cache").exists()


async def test_a_missing_import_is_named(tmp_path: Path) -> None:
    lonely = tmp_path / "lonely.proto"
    lonely.write_text('syntax = "proto3";\nimport "kv/v1/types.proto";\n')
    result = await grpctunnel("list", "--proto", str(lonely), server=NOWHERE, cache=tmp_path)
    assert_failure(result, 1, "kv/v1/types.proto: File not found")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--proto", "nothere.proto"), ("cannot read --proto nothere.proto: no such file",)),
        (
            ("--proto", "kv/v1/nothere.proto", "-I", str(PROTOS)),
            ("cannot read --proto kv/v1/nothere.proto", f"--import-path {PROTOS}"),
        ),
        (("--protoset", "nothere.pb"), ("cannot read protoset nothere.pb",)),
        (("-I", str(PROTOS)), ("--import-path is for --proto files",)),
        (
            ("--proto", KV_PROTO, "-I", "/no/such/dir"),
            ("--import-path /no/such/dir is not a directory",),
        ),
    ],
)
async def test_files_that_cannot_be_read(
    args: tuple[str, ...], fragments: tuple[str, ...], tmp_path: Path
) -> None:
    for command in ("list", "describe"):
        result = await grpctunnel(command, *args, server=NOWHERE, cache=tmp_path)
        assert_failure(result, 1, *fragments)


async def test_a_protoset_that_is_not_one(kv_protoset: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\xff\xff\xff not a descriptor set")
    result = await grpctunnel("list", "--protoset", str(garbage), server=NOWHERE, cache=tmp_path)
    assert_failure(result, 1, f"{garbage} is not a protoset")

    # a set written without --include_imports lacks the files it imports
    alone = read_set(kv_protoset)
    partial = descriptor_pb2.FileDescriptorSet(file=[f for f in alone.file if f.name == KV_PROTO])
    lacking = tmp_path / "lacking.pb"
    lacking.write_bytes(partial.SerializeToString())
    result = await grpctunnel("list", "--protoset", str(lacking), server=NOWHERE, cache=tmp_path)
    assert_failure(result, 1, "kv/v1/kv.proto imports", "--include_imports")
