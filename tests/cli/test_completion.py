"""Shell completion through the real executable, as bash, zsh and fish ask for it: commands,
options, and METHOD and SYMBOL names asked of a real server by reflection; nothing (and
quickly) when the server cannot answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .helpers import Result, run_cli

DEMO_METHODS = [
    "grpctunnel.demo.v1.Echo/Chat",
    "grpctunnel.demo.v1.Echo/Collect",
    "grpctunnel.demo.v1.Echo/Echo",
    "grpctunnel.demo.v1.Echo/Expand",
]
NO_DETECTION = {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}


async def bash(line: str, *, server: str | None = None) -> Result:
    """Complete the last word of `line` (a new, empty word when it ends with a space)."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    env = {"_GRPCTUNNEL_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(cword)}
    return await run_cli(server=server, env=env)


def offered(result: Result) -> list[str]:
    assert result.returncode == 0, result
    assert result.stderr == "", result.stderr
    return [line for line in result.lines if line]


async def test_bash_completes_commands_and_options() -> None:
    assert offered(await bash("grpctunnel ca")) == ["call"]
    assert "describe" in offered(await bash("grpctunnel "))
    assert offered(await bash("grpctunnel call --connect-t")) == ["--connect-timeout"]
    assert "--verbose" in offered(await bash("grpctunnel call -"))


async def test_bash_completes_methods_asked_of_the_server_given_with_s(backend: str) -> None:
    methods = offered(await bash(f"grpctunnel call -s {backend} "))
    assert set(DEMO_METHODS) <= set(methods)
    assert "grpc.health.v1.Health/Check" in methods
    assert offered(await bash(f"grpctunnel call -s {backend} grpctunnel.demo.v1.Echo/E")) == [
        "grpctunnel.demo.v1.Echo/Echo",
        "grpctunnel.demo.v1.Echo/Expand",
    ]
    # a unique short service name completes too
    assert offered(await bash(f"grpctunnel call --server {backend} Echo/C")) == [
        "Echo/Chat",
        "Echo/Collect",
    ]


async def test_the_server_may_come_from_the_environment(backend: str) -> None:
    methods = offered(await bash("grpctunnel call ", server=backend))
    assert set(DEMO_METHODS) <= set(methods)


async def test_ambiguous_short_names_are_not_offered(two_echo_backend: str) -> None:
    methods = offered(await bash(f"grpctunnel call -s {two_echo_backend} "))
    assert {"grpctunnel.demo.v1.Echo/Echo", "other.v1.Echo/Echo"} <= set(methods)
    assert offered(await bash(f"grpctunnel call -s {two_echo_backend} Echo/")) == []


async def test_bash_completes_symbols_of_describe(backend: str) -> None:
    symbols = offered(await bash(f"grpctunnel describe -s {backend} grpctunnel.demo.v1."))
    for name in (
        "grpctunnel.demo.v1.Echo",
        "grpctunnel.demo.v1.Echo.Expand",
        "grpctunnel.demo.v1.EchoRequest",
        "grpctunnel.demo.v1.ExpandRequest",
    ):
        assert name in symbols


async def test_zsh_and_fish_complete_methods(backend: str) -> None:
    zsh = await run_cli(
        env={
            "_GRPCTUNNEL_COMPLETE": "complete_zsh",
            "_TYPER_COMPLETE_ARGS": f"grpctunnel call -s {backend} grpctunnel.demo.v1.Echo/C",
        }
    )
    assert zsh.returncode == 0 and zsh.stderr == "", zsh
    assert '"grpctunnel.demo.v1.Echo/Chat"' in zsh.stdout
    assert '"grpctunnel.demo.v1.Echo/Collect"' in zsh.stdout
    fish = await run_cli(
        env={
            "_GRPCTUNNEL_COMPLETE": "complete_fish",
            "_TYPER_COMPLETE_FISH_ACTION": "get-args",
            "_TYPER_COMPLETE_ARGS": f"grpctunnel call -s {backend} grpctunnel.demo.v1.Echo/E",
        }
    )
    assert offered(fish) == ["grpctunnel.demo.v1.Echo/Echo", "grpctunnel.demo.v1.Echo/Expand"]


async def _timed(line: str) -> tuple[Result, float]:
    started = time.monotonic()
    result = await bash(line)
    return result, time.monotonic() - started


async def test_a_dead_server_offers_nothing_quickly(unused_port: int) -> None:
    result, elapsed = await _timed(f"grpctunnel call -s 127.0.0.1:{unused_port} ")
    assert offered(result) == []
    assert "Traceback" not in result.stdout + result.stderr
    assert elapsed < 5.0


async def test_a_server_without_reflection_offers_nothing(no_reflection_backend: str) -> None:
    assert offered(await bash(f"grpctunnel call -s {no_reflection_backend} ")) == []
    assert offered(await bash(f"grpctunnel describe -s {no_reflection_backend} ")) == []


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """A TCP server that accepts connections and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_server_that_never_answers_offers_nothing_within_the_bound(
    silent_server: str,
) -> None:
    result, elapsed = await _timed(f"grpctunnel call -s {silent_server} ")
    assert offered(result) == []
    assert elapsed < 5.0  # the completion's own bound is 1 s, start-up aside


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "_GRPCTUNNEL_COMPLETE=complete_bash"),
        ("zsh", "_GRPCTUNNEL_COMPLETE=complete_zsh"),
        ("fish", "_GRPCTUNNEL_COMPLETE=complete_fish"),
    ],
)
async def test_show_completion_prints_each_shells_script(shell: str, marker: str) -> None:
    result = await run_cli("--show-completion", shell, env=NO_DETECTION)
    assert result.returncode == 0, result
    assert marker in result.stdout


async def test_install_completion_installs_the_bash_script(tmp_path: Path) -> None:
    env = {**NO_DETECTION, "HOME": str(tmp_path)}
    result = await run_cli("--install-completion", "bash", env=env)
    assert result.returncode == 0, result
    assert "bash completion installed" in result.stdout
    scripts, bashrc = _installed(tmp_path)
    assert any("_GRPCTUNNEL_COMPLETE=complete_bash" in text for text in scripts), scripts
    assert "grpctunnel" in bashrc


def _installed(home: Path) -> tuple[list[str], str]:
    """The completion scripts installed under `home`, and its .bashrc."""
    scripts = [path.read_text() for path in home.rglob("grpctunnel*") if path.is_file()]
    return scripts, (home / ".bashrc").read_text()


async def test_methods_complete_from_proto_files_on_the_line(unused_port: int) -> None:
    """With --proto on the line, the names come from the file: no server is asked."""
    protos = Path(__file__).parent.parent / "protos"
    line = f"grpctunnel call -s 127.0.0.1:{unused_port} -I {protos} --proto kv/v1/kv.proto "
    methods = offered(await bash(line))
    assert "kvtest.v1.KV/Range" in methods, methods
    assert offered(await bash(line + "KV/R")) == ["KV/Range"]
