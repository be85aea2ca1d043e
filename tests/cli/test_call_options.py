"""End-to-end: the grpcurl-like options of call/list/describe, the deadline of the whole
command, and errors a person can act on, with the real `grpctunnel` executable against
real grpc.aio servers on 127.0.0.1 (TLS with certificates the tests make, a Unix socket,
a socket that never answers, stalling and oversized backends) and real serve/expose
processes."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from rich.console import Console
from security.certs import Certs, make_certs
from support.launcher import Launcher, assert_failure
from support.servers import serving

from grpctunnel.gateway.exposer import ExposeConfig, ExposeStats
from grpctunnel_cli.cmd_expose import _status_table
from grpctunnel_demo.service import ECHO_SERVICE, EchoServicer, enable_reflection
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

from .helpers import Result, run_cli

pytestmark = pytest.mark.timeout(60)

DEADLINE_EXCEEDED = 64 + 4
PERMISSION_DENIED = 64 + 7
RESOURCE_EXHAUSTED = 64 + 8
INSECURE_WARNING = "WARNING: --insecure: the server's TLS certificate is not verified\n"


def _one_error(result: Result, code: int, line: str) -> None:
    """Failed with `code`, and stderr is exactly ``ERROR: <line>``."""
    assert result.returncode == code, result
    assert result.stderr == f"ERROR: {line}\n", result.stderr


# --- test servers -------------------------------------------------------------------------------


class _Backend(EchoServicer):
    """Echo, plus: ``size:N`` answers a message of N characters; ``stall`` never answers."""

    async def Echo(
        self,
        request: echo_pb2.EchoRequest,
        context: grpc.aio.ServicerContext[echo_pb2.EchoRequest, echo_pb2.EchoReply],
    ) -> echo_pb2.EchoReply:
        if request.msg.startswith("size:"):
            return echo_pb2.EchoReply(msg="x" * int(request.msg[5:]))
        if request.msg == "stall":
            await asyncio.Event().wait()  # until the caller's deadline cancels the call
        return await super().Echo(request, context)


async def _serve(
    server: grpc.aio.Server, address: str = "127.0.0.1:0", credentials: Any = None
) -> int:
    echo_pb2_grpc.add_EchoServicer_to_server(_Backend(), server)  # type: ignore[no-untyped-call]
    enable_reflection(server, [ECHO_SERVICE])
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    await server.start()
    return port


@pytest.fixture
async def backend() -> AsyncIterator[str]:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", -1)])
    port = await _serve(server)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def tls_backend(certs: Certs) -> AsyncIterator[str]:
    """The backend over TLS, its certificate (signed by ``certs.ca``) for localhost and
    127.0.0.1 only."""
    server = grpc.aio.server()
    pair = (certs.server.key.read_bytes(), certs.server.cert.read_bytes())
    port = await _serve(server, credentials=grpc.ssl_server_credentials([pair]))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A listening socket that never accepts: TCP connects, HTTP/2 never starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def _refusing(code: grpc.StatusCode, details: str, streaming: bool) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, details)

    if streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class _HeaderRule(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Reflection requires ``x-reflect: yes`` and refuses ``x-rpc``; every other call
    requires ``x-rpc: yes`` and refuses ``x-reflect``."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        got = dict(details.invocation_metadata or ())
        reflection = "ServerReflection" in details.method
        wanted, unwanted = ("x-reflect", "x-rpc") if reflection else ("x-rpc", "x-reflect")
        if got.get(wanted) != "yes" or unwanted in got:
            return _refusing(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{details.method} wants {wanted} and not {unwanted}",
                reflection,
            )
        return await continuation(details)


@pytest.fixture
async def header_backend() -> AsyncIterator[str]:
    server = grpc.aio.server(interceptors=[_HeaderRule()])
    port = await _serve(server)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def _stalled_reflection(request: Any, context: Any) -> None:
    await asyncio.Event().wait()  # never answers


@pytest.fixture
async def stalled_reflection_backend() -> AsyncIterator[str]:
    """Echo, with a reflection service (both versions) that never answers."""
    server = grpc.aio.server()
    echo_pb2_grpc.add_EchoServicer_to_server(_Backend(), server)  # type: ignore[no-untyped-call]
    handler = grpc.stream_stream_rpc_method_handler(_stalled_reflection)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                f"grpc.reflection.{version}.ServerReflection", {"ServerReflectionInfo": handler}
            )
            for version in ("v1", "v1alpha")
        ]
    )
    async with serving(server) as target:
        yield target


# --- TLS: --servername, --insecure, https:// --------------------------------------------------


async def test_servername_is_the_name_the_certificate_must_hold(
    tls_backend: str, certs: Certs
) -> None:
    ca = ("--ca-cert", str(certs.ca))
    good = await run_cli(
        "call",
        "-s",
        tls_backend,
        "Echo/Echo",
        "<'msg':'x'>".replace("'", '"'),
        *ca,
        "--servername",
        "localhost",
    )
    assert (good.returncode, good.stdout, good.stderr) == (0, '{"msg":"x"}\n', ""), good
    wrong = await run_cli("list", "-s", tls_backend, *ca, "--servername", "wrong.example")
    assert_failure(
        wrong,
        1,
        f"cannot connect to {tls_backend}: the server's certificate does not hold the name "
        "'wrong.example' (--servername, or --authority, names the one to verify)",
    )
    empty = await run_cli("list", "-s", tls_backend, *ca, "--servername", " ")
    _one_error(empty, 2, "--servername is empty")


async def test_authority_is_sent_and_verified(tls_backend: str, backend: str, certs: Certs) -> None:
    ca = ("--ca-cert", str(certs.ca))
    # grpc verifies the certificate against the authority when no --servername is given
    good = await run_cli("call", "-s", tls_backend, "Echo/Echo", *ca, "--authority", "localhost")
    assert (good.returncode, good.stdout) == (0, "{}\n"), good
    wrong = await run_cli("list", "-s", tls_backend, *ca, "--authority", "wrong.example")
    assert_failure(wrong, 1, "does not hold the name 'wrong.example'")
    both = await run_cli(
        "list", "-s", tls_backend, *ca, "--authority", "wrong.example", "--servername", "localhost"
    )
    assert both.returncode == 0 and "grpctunnel.demo.v1.Echo" in both.lines, both
    plain = await run_cli(
        "call", "-s", backend, "Echo/Echo", '{"msg":"a"}', "--authority", "x.test"
    )
    assert (plain.returncode, plain.stdout) == (0, '{"msg":"a"}\n'), plain


async def test_insecure_trusts_any_certificate_and_says_so(
    tls_backend: str, backend: str, certs: Certs
) -> None:
    untrusted = await run_cli("list", "-s", tls_backend, "--tls")
    assert_failure(untrusted, 1, "the server's TLS certificate is not trusted")
    listed = await run_cli("list", "-s", tls_backend, "--insecure")
    assert listed.returncode == 0, listed
    assert "grpctunnel.demo.v1.Echo" in listed.lines
    assert listed.stderr == INSECURE_WARNING
    called = await run_cli(
        "call",
        "-s",
        tls_backend,
        "--insecure",
        "--servername",
        "other.example",
        "Echo/Echo",
        '{"msg":"i"}',
    )
    assert (called.returncode, called.stdout, called.stderr) == (
        0,
        '{"msg":"i"}\n',
        INSECURE_WARNING,
    ), called
    plaintext = await run_cli("list", "-s", backend, "--insecure")
    assert plaintext.returncode == 1, plaintext
    assert plaintext.stderr.startswith(
        f"{INSECURE_WARNING}ERROR: cannot connect to {backend}: the server does not speak "
        "TLS: drop --insecure"
    ), plaintext.stderr
    both = await run_cli("list", "-s", tls_backend, "--insecure", "--ca-cert", str(certs.ca))
    _one_error(both, 2, "give either --insecure or --ca-cert, not both")


async def test_server_schemes(backend: str, tls_backend: str, certs: Certs) -> None:
    for scheme in ("http", "grpc"):
        result = await run_cli("call", "-s", f"{scheme}://{backend}/", "Echo/Echo", '{"msg":"s"}')
        assert (result.returncode, result.stdout) == (0, '{"msg":"s"}\n'), result
    secure = await run_cli("list", "-s", f"https://{tls_backend}", "--ca-cert", str(certs.ca))
    assert secure.returncode == 0 and "grpctunnel.demo.v1.Echo" in secure.lines, secure
    implied = await run_cli("list", "-s", f"grpcs://{backend}")
    assert_failure(implied, 1, "the server does not speak TLS")
    unknown = await run_cli("list", "-s", f"ftp://{backend}")
    _one_error(
        unknown,
        2,
        f"--server 'ftp://{backend}': unknown scheme 'ftp://'; give HOST:PORT, unix:///PATH, "
        "or http://, https://, grpc://, grpcs:// before HOST:PORT",
    )
    path = await run_cli("list", "-s", f"http://{backend}/grpctunnel.demo.v1.Echo")
    _one_error(
        path,
        2,
        f"--server 'http://{backend}/grpctunnel.demo.v1.Echo': give HOST:PORT after http:// "
        "(no path: gRPC methods are named by the command)",
    )


async def test_unix_socket() -> None:
    folder = Path(tempfile.mkdtemp(prefix="gt-"))  # short: a socket path has a small limit
    path = folder / "echo.sock"
    server = grpc.aio.server()
    await _serve(server, f"unix://{path}")
    try:
        called = await run_cli("call", "-s", f"unix://{path}", "Echo/Echo", '{"msg":"u"}')
        assert (called.returncode, called.stdout) == (0, '{"msg":"u"}\n'), called
        listed = await run_cli("list", "-s", f"unix:{path}")
        assert "grpctunnel.demo.v1.Echo" in listed.lines, listed
        missing = await run_cli(
            "list", "-s", f"unix://{folder}/missing.sock", "--connect-timeout", "2"
        )
        assert_failure(missing, 1, f"cannot connect to unix://{folder}/missing.sock")
    finally:
        await server.stop(None)
        shutil.rmtree(folder, ignore_errors=True)


# --- headers for the call, for reflection, for both ------------------------------------------


async def test_rpc_header_and_reflect_header_go_where_they_say(header_backend: str) -> None:
    call = ("call", "-s", header_backend, "Echo/Echo", '{"msg":"h"}')
    both = await run_cli(*call, "--rpc-header", "x-rpc: yes", "--reflect-header", "x-reflect: yes")
    assert (both.returncode, both.stdout, both.stderr) == (0, '{"msg":"h"}\n', ""), both
    # -H goes to both: reflection gets x-rpc, which it refuses
    shared = await run_cli(*call, "-H", "x-rpc: yes", "--reflect-header", "x-reflect: yes")
    _one_error(
        shared,
        PERMISSION_DENIED,
        "PERMISSION_DENIED: /grpc.reflection.v1.ServerReflection/ServerReflectionInfo wants "
        "x-reflect and not x-rpc",
    )
    no_reflect = await run_cli(*call, "--rpc-header", "x-rpc: yes")
    assert no_reflect.returncode == PERMISSION_DENIED, no_reflect
    assert "ServerReflectionInfo wants x-reflect" in no_reflect.stderr
    no_rpc = await run_cli(*call, "--reflect-header", "x-reflect: yes")
    _one_error(
        no_rpc,
        PERMISSION_DENIED,
        "PERMISSION_DENIED: /grpctunnel.demo.v1.Echo/Echo wants x-rpc and not x-reflect",
    )
    listed = await run_cli("list", "-s", header_backend, "--reflect-header", "x-reflect: yes")
    assert listed.returncode == 0 and "grpctunnel.demo.v1.Echo" in listed.lines, listed
    bad = await run_cli(*call, "--rpc-header", "no colon")
    _one_error(bad, 1, "invalid header 'no colon': expected 'key: value'")


# --- request data and output formats ----------------------------------------------------------


async def test_format_text_in_and_out(backend: str) -> None:
    expanded = await run_cli(
        "call", "-s", backend, "Echo/Expand", 'msg: "t" count: 2', "--format", "text"
    )
    assert expanded.returncode == 0, expanded
    assert expanded.lines == ['msg: "t"', 'msg: "t" index: 1']
    collected = await run_cli(
        "call",
        "-s",
        backend,
        "Echo/Collect",
        "@-",
        "--format",
        "text",
        stdin='msg: "a"\x1emsg: "b"\n\x1e',
    )
    assert (collected.returncode, collected.stdout) == (0, 'msg: "a b"\n'), collected
    bad = await run_cli("call", "-s", backend, "Echo/Echo", 'mesage: "t"', "--format", "text")
    _one_error(
        bad,
        1,
        "request 1 is not a valid grpctunnel.demo.v1.EchoRequest in text format: 1:1 : "
        'Message type "grpctunnel.demo.v1.EchoRequest" has no field named "mesage".',
    )
    other = await run_cli("call", "-s", backend, "Echo/Echo", "--format", "yaml")
    assert other.returncode == 2 and "yaml" in other.stderr, other


async def test_angle_brackets_for_the_outer_braces(backend: str) -> None:
    one = await run_cli("call", "-s", backend, "Echo/Echo", '<"msg":"hi">')
    assert (one.returncode, one.stdout) == (0, '{"msg":"hi"}\n'), one
    nested = await run_cli(
        "call",
        "-s",
        backend,
        "Echo/Collect",
        "@-",
        stdin='<"msg": "a<b>">\n{"msg": "c"}\n<"msg":"d">',
    )
    assert (nested.returncode, nested.stdout) == (0, '{"msg":"a<b> c d"}\n'), nested
    unclosed = await run_cli("call", "-s", backend, "Echo/Echo", '<"msg":"hi"')
    assert_failure(unclosed, 1, "invalid JSON in request data at line 1")


async def test_allow_unknown_fields(backend: str) -> None:
    data = '{"msg":"k","later":{"x":1}}'
    refused = await run_cli("call", "-s", backend, "Echo/Echo", data)
    _one_error(
        refused,
        1,
        "request 1: unknown field 'later' in grpctunnel.demo.v1.EchoRequest (its fields: msg; "
        "--allow-unknown-fields ignores unknown fields)",
    )
    allowed = await run_cli("call", "-s", backend, "Echo/Echo", data, "--allow-unknown-fields")
    assert (allowed.returncode, allowed.stdout) == (0, '{"msg":"k"}\n'), allowed


@pytest.mark.parametrize(
    ("method", "data", "line"),
    [
        (
            "Echo/Echo",
            '[{"msg":"a"}]',
            "request 1: expected a JSON object (grpctunnel.demo.v1.EchoRequest), got an array",
        ),
        ("Echo/Echo", '{"msg":1}', "request 1: field msg: expected a string, got 1"),
        ("Echo/Echo", '{"msg":{"a":1}}', "request 1: field msg: expected a string, got an object"),
        (
            "Echo/Expand",
            '{"count":true}',
            "request 1: field count: expected a 32-bit integer, got true",
        ),
        (
            "Echo/Expand",
            '{"count":1.5}',
            "request 1: field count: expected a 32-bit integer, got 1.5",
        ),
        (
            "Echo/Expand",
            '{"count":4294967296}',
            "request 1: field count: 4294967296 is out of range for a 32-bit integer",
        ),
        (
            "Echo/Echo",
            '"hi"',
            'request 1: expected a JSON object (grpctunnel.demo.v1.EchoRequest), got "hi"',
        ),
    ],
)
async def test_json_that_does_not_fit_says_where_and_what(
    backend: str, method: str, data: str, line: str
) -> None:
    _one_error(await run_cli("call", "-s", backend, method, data), 1, line)


async def test_json_that_does_not_fit_in_a_stream_names_the_request(backend: str) -> None:
    result = await run_cli(
        "call", "-s", backend, "Echo/Collect", "@-", stdin='{"msg":"a"}\n{"msg":["b"]}\n'
    )
    assert (result.returncode, result.stdout) == (1, ""), result
    assert result.stderr == "ERROR: request 2: field msg: expected a string, got an array\n"


# --- --timeout bounds the whole command --------------------------------------------------------


@pytest.mark.parametrize("command", [("list",), ("describe", "Echo"), ("call", "Echo/Echo")])
async def test_timeout_while_connecting(black_hole: str, command: tuple[str, ...]) -> None:
    result = await run_cli(*command, "-s", black_hole, "--timeout", "0.5", timeout=10)
    _one_error(
        result,
        DEADLINE_EXCEEDED,
        f"DEADLINE_EXCEEDED: --timeout 0.5s expired while connecting to {black_hole}",
    )


async def test_connect_timeout_still_says_connect_timeout(black_hole: str) -> None:
    result = await run_cli("list", "-s", black_hole, "--connect-timeout", "0.5", "--timeout", "20")
    _one_error(
        result,
        1,
        f"cannot connect to {black_hole}: no connection within 0.5s (see --connect-timeout)",
    )


@pytest.mark.parametrize("command", [("list",), ("describe",), ("call", "Echo/Echo")])
async def test_timeout_while_asking_reflection(
    stalled_reflection_backend: str, command: tuple[str, ...]
) -> None:
    result = await run_cli(
        *command, "-s", stalled_reflection_backend, "--timeout", "0.5", timeout=10
    )
    _one_error(
        result,
        DEADLINE_EXCEEDED,
        "DEADLINE_EXCEEDED: --timeout 0.5s expired while asking the server's reflection",
    )


async def test_timeout_during_the_call(backend: str) -> None:
    result = await run_cli("call", "-s", backend, "Echo/Echo", '{"msg":"stall"}', "--timeout", "1")
    assert (result.returncode, result.stdout) == (DEADLINE_EXCEEDED, ""), result
    assert result.stderr == (
        "ERROR: DEADLINE_EXCEEDED: Deadline Exceeded\n"
        "  hint: the call did not end within --timeout 1s (which bounds connecting, "
        "reflection and the call)\n"
    )


async def test_a_tiny_timeout_is_never_success(backend: str) -> None:
    for command in (("list",), ("describe", "Echo"), ("call", "Echo/Echo")):
        result = await run_cli(*command, "-s", backend, "--timeout", "0.000001")
        assert result.returncode == DEADLINE_EXCEEDED, result
        assert result.stderr.startswith("ERROR: DEADLINE_EXCEEDED: --timeout 1e-06s expired "), (
            result
        )


# --- message limits: which hop, and the flag that raises it ------------------------------------


async def test_call_receives_large_messages_and_names_its_own_limit(backend: str) -> None:
    big = await run_cli("call", "-s", backend, "Echo/Echo", '{"msg":"size:5000000"}')
    assert big.returncode == 0, big.stderr
    assert len(big.stdout) == len('{"msg":""}\n') + 5_000_000
    limited = await run_cli(
        "call", "-s", backend, "Echo/Echo", '{"msg":"size:2000000"}', "--max-msg-mib", "1"
    )
    _one_error(
        limited,
        RESOURCE_EXHAUSTED,
        "RESOURCE_EXHAUSTED: call: response of 2000004 bytes exceeds --max-msg-mib 1 of "
        "`grpctunnel call`",
    )
    bad = await run_cli("call", "-s", backend, "Echo/Echo", "--max-msg-mib", "0")
    assert bad.returncode == 2 and "--max-msg-mib" in bad.stderr, bad


async def test_relay_limits_name_the_hop_and_its_flag(
    backend: str, launcher: Launcher, tmp_path: Path
) -> None:
    # (a limit below the tunnel's own frames, up to 1 MiB each, fails the call, not the
    # tunnel: the next call through it works)
    request = ("Echo/Echo", '{"msg":"size:3000000"}')
    small_serve = await launcher.server("--max-message-mib", "1")
    await launcher.exposer(backend, small_serve, "big")
    for size, encoded in ((3000000, 3000005), (1500000, 1500004)):  # field tag and length
        through_serve = await run_cli(
            "call", "-s", small_serve[1], "Echo/Echo", f'{{"msg":"size:{size}"}}'
        )
        _one_error(
            through_serve,
            RESOURCE_EXHAUSTED,
            f"RESOURCE_EXHAUSTED: serve: response of {encoded} bytes exceeds --max-message-mib "
            "1 of `grpctunnel serve`",
        )
    below = await run_cli("call", "-s", small_serve[1], "Echo/Echo", '{"msg":"size:1000000"}')
    assert below.returncode == 0 and len(below.stdout) == 1000011, below.stderr
    big_request = tmp_path / "big.json"
    big_request.write_text(json.dumps({"msg": "x" * 1500000}))
    too_big = await run_cli("call", "-s", small_serve[1], "Echo/Echo", f"@{big_request}")
    assert too_big.returncode == 64 + 8, too_big.stderr  # RESOURCE_EXHAUSTED
    assert "Traceback" not in too_big.stderr, too_big.stderr
    serve = await launcher.server()
    await launcher.exposer(backend, serve, "small", "--max-message-mib", "2")
    through_expose = await run_cli("call", "-s", serve[1], *request)
    _one_error(
        through_expose,
        RESOURCE_EXHAUSTED,
        "RESOURCE_EXHAUSTED: expose: response of 3000005 bytes exceeds --max-message-mib 2 of "
        "`grpctunnel expose`",
    )
    fits = await run_cli("call", "-s", serve[1], "Echo/Echo", '{"msg":"size:1000"}')
    assert fits.returncode == 0 and len(fits.stdout) == 1011, fits


# --- hints that name this server ---------------------------------------------------------------


async def test_not_a_method_name_gives_an_example_of_this_server(launcher: Launcher) -> None:
    _, address = await launcher.server()
    result = await run_cli("call", "-s", address, "Nothing")
    _one_error(
        result,
        1,
        "'Nothing' is not a method name; write SERVICE/METHOD, e.g. "
        "grpc.health.v1.Health/Check or Health/Check",
    )


# --- expose -------------------------------------------------------------------------------------


async def test_expose_connect_timeout_is_per_attempt() -> None:
    result = await run_cli("expose", "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0
    assert "Time each attempt to open a tunnel may take" in result.stdout
    refused = await run_cli("expose", "127.0.0.1:1", "--to", "127.0.0.1:2", "--insecure")
    _one_error(
        refused,
        2,
        "--insecure and --servername are options of call, list and describe; expose verifies "
        "the server with --ca-cert",
    )


def _table_text(stats: ExposeStats) -> str:
    config = ExposeConfig(backend="127.0.0.1:1", server="127.0.0.1:2", name="n")
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(_status_table(config, stats))
    text: str = console.file.getvalue()  # type: ignore[attr-defined]
    return text


def test_expose_live_state_names_the_backend_when_it_is_down() -> None:
    down = ExposeStats(state="reconnecting", last_error="cannot reach backend 127.0.0.1:1: x")
    assert "state       waiting for backend 127.0.0.1:1 (0/1 tunnels up)" in _table_text(down)
    server_down = ExposeStats(state="reconnecting", last_error="cannot reach server 127.0.0.1:2")
    assert "state       reconnecting (0/1 tunnels up)" in _table_text(server_down)


async def test_expose_logs_say_the_backend_is_down(launcher: Launcher) -> None:
    server = await launcher.server()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: refused
        proc = await launcher.start("expose", dead, "--to", server[1], "--name", "d")
        await proc.wait_for(rf"WARNING cannot reach backend {re.escape(dead)}: UNAVAILABLE")
