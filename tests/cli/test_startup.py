"""A `grpctunnel call` starts fast: it imports only what the call needs, converts its options
without pydantic, and writes piped output without rich, byte for byte as before."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
import typer.main
from rich.console import Console
from rich.text import Text
from support.processes import clean_env
from typer._coercion import build_runtime_param

from grpctunnel_cli.app import COMMANDS, build_app, chosen_command
from grpctunnel_cli.coercion import QuickCoercion
from grpctunnel_cli.render import Renderer, _Output
from grpctunnel_demo.service import ECHO_SERVICE, EchoServicer, enable_reflection
from grpctunnel_demo.v1 import echo_pb2_grpc

from .helpers import GRPCTUNNEL, run_cli

# Modules a piped unary call must not import: the gateway, the metrics and cluster
# dependencies, the terminal drawing, pydantic (Typer's conversion of option values).
HEAVY = (
    "grpctunnel.gateway.server",
    "grpctunnel.gateway.gateway",
    "grpctunnel.session",
    "prometheus_client",
    "redis",
    "rich",
    "pydantic",
    "pygments",
)


def _command(name: str) -> Any:
    group: Any = typer.main.get_command(build_app(name))
    return group.commands[name]


def test_only_the_chosen_command_is_built_and_the_first_argument_chooses() -> None:
    assert chosen_command(["call", "-s", "x"]) == "call"
    assert chosen_command(["--help"]) is None
    assert chosen_command(["nope"]) is None
    assert chosen_command([]) is None
    group: Any = typer.main.get_command(build_app("list"))
    assert list(group.commands) == ["list"]
    whole: Any = typer.main.get_command(build_app())
    assert list(whole.commands) == list(COMMANDS)


# (command, parameter name, value) triples: what each parameter can receive from the parser,
# from its default or from the environment.
CASES = [
    ("call", "method", "Echo/Echo"),
    ("call", "data", None),
    ("call", "data", '{"msg": "hi"}'),
    ("call", "connection__server", "localhost:50051"),
    ("call", "connection__headers", None),
    ("call", "connection__headers", ()),
    ("call", "connection__headers", ("a: b", "c: d")),
    ("call", "connection__timeout", None),
    ("call", "connection__timeout", "2.5"),
    ("call", "connection__timeout", "1e3"),
    ("call", "connection__connect_timeout", 10.0),
    ("call", "connection__connect_timeout", 3),
    ("call", "security__token_file", None),
    ("call", "security__token_file", "/tmp/x"),
    ("serve", "port", 0),
    ("serve", "port", 65535),
    ("serve", "port", "8080"),
    ("serve", "relay__keepalive_interval", 0.1),
    ("serve", "relay__keepalive_interval", 30.0),
    ("serve", "log_format", "json"),
]


@pytest.mark.parametrize(("command", "name", "value"), CASES)
def test_quick_conversion_gives_what_typer_gives(command: str, name: str, value: Any) -> None:
    click_command = _command(command)
    param = next(p for p in click_command.params if p.name == name)
    quick = param._runtime_param
    assert isinstance(quick, QuickCoercion)
    ctx = click_command.make_context(command, ["--help"], resilient_parsing=True)
    expected = build_runtime_param(param.type_descriptor).coerce(value, param=param, ctx=ctx)
    got = quick.coerce(value, param=param, ctx=ctx)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("command", "name", "value"),
    [
        ("serve", "port", 70000),  # out of range: Typer's own error
        ("serve", "port", -1),
        ("serve", "relay__keepalive_interval", 0.01),
        ("call", "connection__timeout", "soon"),
        ("serve", "log_format", "xml"),
    ],
)
def test_values_the_quick_way_cannot_take_get_typers_error(
    command: str, name: str, value: Any
) -> None:
    click_command = _command(command)
    param = next(p for p in click_command.params if p.name == name)
    ctx = click_command.make_context(command, ["--help"], resilient_parsing=True)
    assert param._runtime_param.plain(value, multiple=False) == (False, None)
    with pytest.raises(typer.BadParameter) as quick:
        param._runtime_param.coerce(value, param=param, ctx=ctx)
    with pytest.raises(typer.BadParameter) as typers:
        build_runtime_param(param.type_descriptor).coerce(value, param=param, ctx=ctx)
    assert str(quick.value) == str(typers.value)


def test_every_parameter_of_every_command_converts_quickly() -> None:
    for name in COMMANDS:
        for param in _command(name).params:
            assert isinstance(param._runtime_param, QuickCoercion), (name, param.name)


@pytest.mark.parametrize(
    "text",
    [
        "ERROR: plain",
        "tabs\there\tand\tthere",
        "bell\x07 back\x08 vt\x0b ff\x0c cr\r end",
        "two\n  lines\twith tab",
        "[bold]not markup[/bold] :smile: http://x.y/z 12 True",
        "ünïcödé ✓ 表",
    ],
)
def test_plain_output_is_what_rich_writes_to_a_pipe(text: str) -> None:
    rich_file = io.StringIO()
    Console(file=rich_file, highlight=False, soft_wrap=True).print(
        Text.assemble(("ERROR:", "bold red"), " ", text)
    )
    plain_file = io.StringIO()
    output = _Output(plain_file)
    assert output.console is None
    output.print(("ERROR:", "bold red"), " ", text)
    assert plain_file.getvalue() == rich_file.getvalue()


def test_a_renderer_on_pipes_draws_nothing() -> None:
    renderer = Renderer(stdout=io.StringIO(), stderr=io.StringIO())
    assert not renderer.pretty
    assert not renderer.stderr_is_terminal


# Runs the real console script, writing the modules it imported to a file as it exits
# (The command ends with os._exit, skipping atexit: the listing is written just before.)
_LIST_MODULES = """
import json, os, runpy, sys
out, script = sys.argv[1], sys.argv[2]
exit_now = os._exit
def listed_exit(code):
    with open(out, "w") as listing:
        listing.write(json.dumps(sorted(sys.modules)))
    exit_now(code)
os._exit = listed_exit
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


async def test_a_piped_call_imports_none_of_the_heavy_modules(backend: str, tmp_path: Path) -> None:
    listing = tmp_path / "modules.json"
    args = ("call", "-s", backend, "Echo/Echo", '{"msg": "quick"}')
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _LIST_MODULES,
        str(listing),
        str(GRPCTUNNEL),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert out.decode() == '{"msg":"quick"}\n'
    imported = set(json.loads(listing.read_text()))
    assert {"grpc", "grpctunnel_cli.cmd_call", "grpctunnel_cli.render"} <= imported
    heavy = sorted(m for m in imported if m.startswith(HEAVY))
    assert heavy == []
    commands = sorted(m for m in imported if m.startswith("grpctunnel_cli.cmd_"))
    assert commands == ["grpctunnel_cli.cmd_call"]


class _Counting(grpc.aio.ServerInterceptor):
    """Counts the calls of each method a server receives."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.calls[details.method] += 1
        return await continuation(details)


@pytest.mark.parametrize(
    ("method", "questions"),
    [("grpctunnel.demo.v1.Echo/Echo", 1), ("Echo/Echo", 2), ("grpctunnel.demo.v1.Echo.Echo", 1)],
)
async def test_a_full_method_name_costs_one_reflection_question(
    method: str, questions: int
) -> None:
    counting = _Counting()
    server = grpc.aio.server(interceptors=[counting])
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)  # type: ignore[no-untyped-call]
    enable_reflection(server, [ECHO_SERVICE])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        result = await run_cli("call", "-s", f"127.0.0.1:{port}", method, '{"msg": "x"}')
    finally:
        await server.stop(None)
    assert result.returncode == 0, result
    assert result.stdout == '{"msg":"x"}\n'
    reflection = sum(n for name, n in counting.calls.items() if "ServerReflection" in name)
    assert reflection == questions, counting.calls
    assert counting.calls["/grpctunnel.demo.v1.Echo/Echo"] == 1


@pytest.mark.parametrize(
    ("code", "status", "stderr"),
    [
        ("None", 0, ""),
        ("0", 0, ""),
        ("3", 3, ""),
        ("69", 69, ""),
        ("'went wrong'", 1, "went wrong\n"),
    ],
)
async def test_exit_now_exits_as_sys_exit_would_with_the_output_flushed(
    code: str, status: int, stderr: str
) -> None:
    script = (
        "import sys; from grpctunnel_cli.app import exit_now; "
        f"sys.stdout.write('written, not flushed'); exit_now({code})"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == status
    assert out == b"written, not flushed"
    assert err.decode() == stderr
