"""End-to-end: the installed `grpctunnel` executable against real servers.

Each test runs the console script in a subprocess (never ``python -m``) and checks its
stdout, stderr and exit status.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pty
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support.launcher import assert_failure

from .helpers import GRPCTUNNEL, cli_env, run_cli

COMPACT_LINE = re.compile(r"^\{\S*\}$")  # one JSON object, no whitespace outside strings


def _json_lines(stdout: str) -> list[dict[str, object]]:
    lines = stdout.splitlines()
    for line in lines:
        assert COMPACT_LINE.match(line.replace('" "', "").replace(" ", "")), line
        assert ": " not in line and ", " not in line, f"not compact: {line!r}"
    return [json.loads(line) for line in lines]


# --- the four kinds of call -------------------------------------------------------------------


async def test_unary(backend: str) -> None:
    result = await run_cli("call", "grpctunnel.demo.v1.Echo/Echo", '{"msg": "hi"}', server=backend)
    assert result.returncode == 0, result
    assert result.stdout == '{"msg":"hi"}\n'
    assert result.stderr == ""


async def test_server_streaming_prints_one_compact_line_per_message(backend: str) -> None:
    result = await run_cli("call", "Echo/Expand", '{"msg": "a b", "count": 3}', server=backend)
    assert result.returncode == 0, result
    assert result.lines == [
        '{"msg":"a b"}',
        '{"msg":"a b","index":1}',
        '{"msg":"a b","index":2}',
    ]


async def test_client_streaming_from_stdin(backend: str) -> None:
    stdin = '{"msg": "one"}\n{"msg": "two"}{"msg": "three"}\n'
    result = await run_cli("call", "Echo/Collect", "@-", server=backend, stdin=stdin)
    assert result.returncode == 0, result
    assert _json_lines(result.stdout) == [{"msg": "one two three"}]


async def test_bidi_streaming_from_file(backend: str, tmp_path: Path) -> None:
    data = tmp_path / "requests.json"
    data.write_text('{\n  "msg": "first"\n}\n{"msg": "second"}\n\n{"msg": "third"}\n')
    result = await run_cli("call", "Echo.Chat", f"@{data}", server=backend)
    assert result.returncode == 0, result
    assert _json_lines(result.stdout) == [
        {"msg": "first"},
        {"msg": "second", "index": 1},
        {"msg": "third", "index": 2},
    ]


async def test_unary_from_stdin(backend: str) -> None:
    result = await run_cli("call", "Echo/Echo", "@-", server=backend, stdin='{"msg": "in"}')
    assert result.returncode == 0, result
    assert result.stdout == '{"msg":"in"}\n'


async def test_no_data_is_an_empty_message(backend: str) -> None:
    result = await run_cli("call", "Echo/Echo", server=backend)
    assert (result.returncode, result.stdout) == (0, "{}\n")
    result = await run_cli("call", "Echo/Collect", server=backend)
    assert (result.returncode, result.stdout) == (0, "{}\n")  # no requests, one empty reply


async def test_emit_defaults(backend: str) -> None:
    result = await run_cli("call", "Echo/Expand", '{"count": 1}', "--emit-defaults", server=backend)
    assert result.returncode == 0, result
    assert result.stdout == '{"msg":"","index":0}\n'


async def test_proto_names_and_a_message_with_every_field_shape(two_echo_backend: str) -> None:
    thing = '{"tags": {"a": 1}, "id": 3, "note": "", "kinds": ["BIG"], "longName": "x"}'
    result = await run_cli("call", "other.v1.Echo/Inspect", thing, server=two_echo_backend)
    assert result.returncode == 0, result
    assert json.loads(result.stdout) == json.loads(thing)
    result = await run_cli(
        "call", "other.v1.Echo/Inspect", thing, "--proto-names", server=two_echo_backend
    )
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["long_name"] == "x"


async def test_server_option_overrides_environment(backend: str) -> None:
    result = await run_cli(
        "call", "--server", backend, "Echo/Echo", '{"msg":"x"}', server="127.0.0.1:1"
    )
    assert (result.returncode, result.stdout) == (0, '{"msg":"x"}\n')


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        "grpctunnel.demo.v1.Echo/Echo",
        "grpctunnel.demo.v1.Echo.Echo",
        "Echo/Echo",
        "Echo.Echo",
        "v1.Echo/Echo",
    ],
)
async def test_method_name_forms(backend: str, method: str) -> None:
    result = await run_cli("call", method, '{"msg":"n"}', server=backend)
    assert (result.returncode, result.stdout) == (0, '{"msg":"n"}\n')


async def test_ambiguous_short_name(two_echo_backend: str) -> None:
    result = await run_cli("call", "Echo/Echo", '{"msg":"x"}', server=two_echo_backend)
    assert_failure(
        result, 1, "ambiguous service 'Echo'", "grpctunnel.demo.v1.Echo", "other.v1.Echo"
    )
    assert result.stdout == ""
    full = await run_cli("call", "other.v1.Echo/Echo", '{"msg":"x"}', server=two_echo_backend)
    assert (full.returncode, full.stdout) == (0, '{"msg":"other:x"}\n')


async def test_ambiguous_symbol_in_describe(backend: str) -> None:
    result = await run_cli("describe", "ServerReflection", server=backend)
    assert_failure(
        result,
        1,
        "ambiguous",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    )


async def test_unknown_service_and_method(backend: str) -> None:
    result = await run_cli("call", "Nope/Echo", server=backend)
    assert_failure(result, 1, "unknown service 'Nope'", "grpctunnel.demo.v1.Echo")
    result = await run_cli("call", "Echo/Nope", server=backend)
    assert_failure(result, 1, "no method 'Nope'", "Expand", "Chat")
    result = await run_cli("call", "Echo", server=backend)
    assert_failure(result, 1, "is a service", "grpctunnel.demo.v1.Echo/Echo")


async def test_list(backend: str) -> None:
    result = await run_cli("list", server=backend)
    assert result.returncode == 0, result
    assert result.lines == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpctunnel.demo.v1.Echo",
    ]
    result = await run_cli("list", "Echo", server=backend)
    assert result.returncode == 0, result
    assert result.lines == [
        "grpctunnel.demo.v1.Echo.Echo",
        "grpctunnel.demo.v1.Echo.Expand",
        "grpctunnel.demo.v1.Echo.Collect",
        "grpctunnel.demo.v1.Echo.Chat",
    ]


async def test_list_with_v1alpha_only(v1alpha_backend: str) -> None:
    result = await run_cli("list", server=v1alpha_backend)
    assert result.returncode == 0, result
    assert "grpctunnel.demo.v1.Echo" in result.lines


async def test_without_reflection(no_reflection_backend: str) -> None:
    result = await run_cli("call", "Echo/Echo", server=no_reflection_backend)
    assert_failure(result, 1, "does not offer reflection")


async def test_describe(backend: str) -> None:
    result = await run_cli("describe", "Echo", server=backend)
    assert result.returncode == 0, result
    assert result.lines[0] == "grpctunnel.demo.v1.Echo is a service:"
    assert (
        "  rpc Chat ( stream .grpctunnel.demo.v1.EchoRequest ) returns"
        " ( stream .grpctunnel.demo.v1.EchoReply );" in result.lines
    )
    result = await run_cli("describe", "Echo/Expand", server=backend)
    assert result.lines == [
        "grpctunnel.demo.v1.Echo.Expand is a method:",
        "rpc Expand ( .grpctunnel.demo.v1.ExpandRequest ) returns"
        " ( stream .grpctunnel.demo.v1.EchoReply );",
    ]
    result = await run_cli("describe", "grpctunnel.demo.v1.ExpandRequest", server=backend)
    assert result.lines == [
        "grpctunnel.demo.v1.ExpandRequest is a message:",
        "message ExpandRequest {",
        "  string msg = 1;",
        "  int32 count = 2;",
        "}",
    ]
    result = await run_cli("describe", "ServingStatus", server=backend)
    assert result.lines[0] == "grpc.health.v1.HealthCheckResponse.ServingStatus is an enum:"
    assert "  SERVING = 1;" in result.lines


async def test_describe_everything(backend: str) -> None:
    result = await run_cli("describe", server=backend)
    assert result.returncode == 0, result
    assert "grpctunnel.demo.v1.Echo is a service:" in result.lines
    assert "grpc.health.v1.Health is a service:" in result.lines


# --- metadata ---------------------------------------------------------------------------------


async def test_headers_are_echoed_and_verbose_shows_trailers(backend: str) -> None:
    raw = b"\x00\x01binary"
    result = await run_cli(
        "call",
        "Echo/Echo",
        '{"msg":"h"}',
        "-H",
        "echo-trace: abc123",
        "-H",
        f"echo-data-bin: {base64.b64encode(raw).decode()}",
        "-H",
        "other: not-echoed",
        "-v",
        server=backend,
    )
    assert result.returncode == 0, result
    assert result.stdout == '{"msg":"h"}\n'  # verbose output never goes to stdout
    err = result.stderr
    sections = {
        title: err.index(title)
        for title in (
            "Request metadata to send:",
            "Response headers received:",
            "Response trailers received:",
            "Status: OK",
        )
    }
    assert list(sections.values()) == sorted(sections.values()), err
    headers = err[sections["Response headers received:"] : sections["Response trailers received:"]]
    trailers = err[sections["Response trailers received:"] : sections["Status: OK"]]
    for part in (headers, trailers):
        assert "echo-trace: abc123" in part
        assert f"echo-data-bin: {base64.b64encode(raw).decode()}" in part
        assert "other" not in part
    assert "other: not-echoed" in err[: sections["Response headers received:"]]
    assert re.search(r"Status: OK after [0-9.]+ ms; sent 1 request, received 1 response", err)


async def test_trailers_of_a_streaming_call(backend: str) -> None:
    result = await run_cli(
        "call", "Echo/Chat", "@-", "-H", "echo-t: 1", "-v", server=backend, stdin='{"msg":"a"}\n'
    )
    assert result.returncode == 0, result
    trailers = result.stderr.split("Response trailers received:")[1]
    assert "echo-t: 1" in trailers


async def test_invalid_header(backend: str) -> None:
    result = await run_cli("call", "Echo/Echo", "-H", "no-colon", server=backend)
    assert_failure(result, 1, "invalid header")


# --- error statuses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "number"),
    [("NOT_FOUND", 5), ("INVALID_ARGUMENT", 3), ("PERMISSION_DENIED", 7), ("UNAVAILABLE", 14)],
)
async def test_error_status_exit_code(backend: str, code: str, number: int) -> None:
    request = json.dumps({"msg": f"error:{code}:it failed"})
    result = await run_cli("call", "Echo/Echo", request, server=backend)
    assert_failure(result, 64 + number)
    assert result.stderr == f"ERROR: {code}: it failed\n"
    assert result.stdout == ""


async def test_error_details_are_shown(backend: str) -> None:
    request = json.dumps({"msg": "error-details:NOT_FOUND:nope"})
    result = await run_cli("call", "Echo/Echo", request, server=backend)
    assert_failure(result, 69)
    lines = result.stderr.splitlines()
    assert lines[0] == "ERROR: NOT_FOUND: nope"
    assert lines[1].startswith("  detail google.rpc.ErrorInfo: ")
    detail = json.loads(lines[1].split(": ", 1)[1])
    assert detail["reason"] == "DEMO_ERROR"


async def test_error_in_the_middle_of_a_stream(backend: str) -> None:
    stdin = '{"msg": "a"}\n{"msg": "error:ABORTED:stop here"}\n{"msg": "b"}\n'
    result = await run_cli("call", "Echo/Chat", "@-", server=backend, stdin=stdin)
    assert_failure(result, 64 + 10, "ERROR: ABORTED: stop here")
    assert result.stdout == '{"msg":"a"}\n'


async def test_timeout(backend: str) -> None:
    # Collect waits for the end of the requests; stdin stays open, so only the deadline ends it.
    process = await asyncio.create_subprocess_exec(
        str(GRPCTUNNEL),
        "call",
        "Echo/Collect",
        "@-",
        "--timeout",
        "0.5",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(backend),
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        out, err = await asyncio.wait_for(
            asyncio.gather(process.stdout.read(), process.stderr.read()), 30
        )
        assert await process.wait() == 64 + 4
        assert err.decode() == (
            "ERROR: DEADLINE_EXCEEDED: Deadline Exceeded\n  hint: the call did not end within "
            "--timeout 0.5s (which bounds connecting, reflection and the call)\n"
        )
        assert out == b""
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        assert process.stdin is not None
        process.stdin.close()


# --- bad input --------------------------------------------------------------------------------


async def test_bad_json(backend: str) -> None:
    result = await run_cli("call", "Echo/Echo", '{"msg": ', server=backend)
    assert_failure(result, 1, "invalid JSON in request data at line 1")


async def test_bad_json_on_stdin_names_the_line(backend: str) -> None:
    stdin = '{"msg": "a"}\n{"msg": oops}\n'
    result = await run_cli("call", "Echo/Collect", "@-", server=backend, stdin=stdin)
    assert_failure(result, 1, "invalid JSON in stdin at line 2, column 9")


async def test_unknown_field(backend: str) -> None:
    result = await run_cli("call", "Echo/Echo", '{"mesage": "x"}', server=backend)
    assert_failure(result, 1, "request 1: unknown field 'mesage' in grpctunnel.demo.v1.EchoRequest")


async def test_unknown_field_in_a_stream(backend: str) -> None:
    stdin = '{"msg": "a"}\n{"nope": 1}\n'
    result = await run_cli("call", "Echo/Chat", "@-", server=backend, stdin=stdin)
    assert_failure(result, 1, "request 2: unknown field 'nope'")


async def test_wrong_value_type(backend: str) -> None:
    result = await run_cli("call", "Echo/Expand", '{"count": "lots"}', server=backend)
    assert_failure(result, 1, 'request 1: field count: expected a 32-bit integer, got "lots"')


async def test_two_messages_for_a_unary_method(backend: str) -> None:
    result = await run_cli("call", "Echo/Echo", '{"msg":"a"}{"msg":"b"}', server=backend)
    assert_failure(result, 1, "exactly one")


async def test_missing_file(backend: str, tmp_path: Path) -> None:
    result = await run_cli("call", "Echo/Echo", f"@{tmp_path / 'missing.json'}", server=backend)
    assert_failure(result, 1, "cannot read request data", "missing.json")


async def test_usage_error_exit_code() -> None:
    result = await run_cli("call")
    assert result.returncode == 2
    result = await run_cli("call", "Echo/Echo", "--timeout", "0")
    assert result.returncode == 2
    result = await run_cli("call", "Echo/Echo", "--no-such-option")
    assert result.returncode == 2


async def test_help_documents_exit_codes() -> None:
    for args in (("--help",), ("call", "--help")):
        result = await run_cli(*args)
        assert result.returncode == 0, result
        text = " ".join(result.stdout.split())
        assert "64 + N" in text, text
        assert "1 local failure" in text


# --- connecting -------------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections (in the backlog) but never speaks HTTP/2."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


async def test_connection_refused_fails_fast(closed_port: int) -> None:
    started = time.monotonic()
    result = await run_cli("call", "Echo/Echo", server=f"127.0.0.1:{closed_port}")
    assert_failure(result, 1, f"cannot connect to 127.0.0.1:{closed_port}")
    assert time.monotonic() - started < 8  # well under the 10 s default connect timeout


async def test_unresponsive_server_hits_the_connect_timeout(silent_listener: int) -> None:
    started = time.monotonic()
    result = await run_cli("list", "--connect-timeout", "1", server=f"127.0.0.1:{silent_listener}")
    assert_failure(result, 1, "no connection within 1s", "--connect-timeout")
    assert time.monotonic() - started < 8


# --- output on a terminal -----------------------------------------------------------------------


async def test_terminal_output_is_pretty(backend: str) -> None:
    controller, terminal = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            str(GRPCTUNNEL),
            "call",
            "Echo/Echo",
            '{"msg":"tty"}',
            stdin=asyncio.subprocess.DEVNULL,
            stdout=terminal,
            stderr=asyncio.subprocess.PIPE,
            env=cli_env(backend, TERM="xterm-256color"),
        )
        os.close(terminal)
        terminal = -1
        chunks: list[bytes] = []
        loop = asyncio.get_running_loop()
        while True:
            try:
                chunk = await asyncio.wait_for(
                    loop.run_in_executor(None, os.read, controller, 4096), 30
                )
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    text = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode()).replace("\r\n", "\n")
    assert text == '{\n  "msg": "tty"\n}\n'
    assert b"\x1b[" in b"".join(chunks)  # colored


# --- the demo-backend command -------------------------------------------------------------------


@pytest.fixture
async def demo_backend_process() -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    process = await asyncio.create_subprocess_exec(
        str(GRPCTUNNEL),
        "demo-backend",
        "--port",
        "0",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    try:
        assert process.stderr is not None
        line = await asyncio.wait_for(process.stderr.readline(), 30)
        found = re.search(r"listening on (127\.0\.0\.1:\d+)", line.decode())
        assert found, line
        yield process, found.group(1)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_demo_backend_command(
    demo_backend_process: tuple[asyncio.subprocess.Process, str],
) -> None:
    process, address = demo_backend_process
    result = await run_cli("call", "Echo/Expand", '{"msg":"d","count":2}', server=address)
    assert result.lines == ['{"msg":"d"}', '{"msg":"d","index":1}']
    health = await run_cli("call", "grpc.health.v1.Health/Check", server=address)
    assert health.stdout == '{"status":"SERVING"}\n'
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_demo_backend_port_in_use(backend: str) -> None:
    port = backend.rsplit(":", 1)[1]
    result = await run_cli("demo-backend", "--port", port)
    assert_failure(result, 1, f"cannot listen on 127.0.0.1:{port}")
