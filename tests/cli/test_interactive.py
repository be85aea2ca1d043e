"""`call METHOD @-` typed at a terminal: through a pseudo-terminal as the real executable's
stdin and stdout, each request goes out as it is entered and each response comes back
before the next is typed; bad input is reported and skipped; Ctrl-D ends the call."""

from __future__ import annotations

import asyncio
import os
import pty
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from support.processes import clean_env

from .helpers import GRPCTUNNEL

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
WAIT = 15.0  # for one response to show on the terminal
CTRL_D = b"\x04"


@dataclass
class Terminal:
    """The controlling side of a pseudo-terminal a `grpctunnel call` reads and writes."""

    fd: int
    process: asyncio.subprocess.Process
    seen: str = ""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child's side is closed
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(self.fd)
        self.seen += ANSI.sub("", chunk.decode(errors="replace")).replace("\r\n", "\n")
        self._changed.set()

    def type(self, text: bytes) -> None:
        os.write(self.fd, text)

    async def shows(self, pattern: str) -> str:
        """Wait until the terminal shows `pattern` (a regex) after what was last waited for."""
        regex = re.compile(pattern)

        async def until() -> str:
            while (found := regex.search(self.seen)) is None:
                self._changed.clear()
                await self._changed.wait()
            self.seen = self.seen[found.end() :]
            return found.group(0)

        return await asyncio.wait_for(until(), WAIT)


@asynccontextmanager
async def terminal_call(backend: str, method: str, *extra: str) -> AsyncIterator[Terminal]:
    """`grpctunnel call METHOD @- EXTRA...` with a terminal as stdin and stdout, stderr
    piped."""
    controller, child = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        str(GRPCTUNNEL),
        "call",
        "-s",
        backend,
        method,
        "@-",
        *extra,
        stdin=child,
        stdout=child,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(TERM="xterm", COLUMNS="80"),
    )
    os.close(child)
    os.set_blocking(controller, False)
    terminal = Terminal(controller, process)
    asyncio.get_running_loop().add_reader(controller, terminal._readable)
    try:
        yield terminal
    finally:
        asyncio.get_running_loop().remove_reader(controller)
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.close(controller)


@pytest.fixture
async def chat(backend: str) -> AsyncIterator[Terminal]:
    """The bidi method Chat, typed at a terminal."""
    async with terminal_call(backend, "Echo/Chat") as terminal:
        yield terminal


async def _ended(terminal: Terminal) -> tuple[int, str]:
    assert terminal.process.stderr is not None
    stderr = await asyncio.wait_for(terminal.process.stderr.read(), WAIT)
    code = await asyncio.wait_for(terminal.process.wait(), WAIT)
    return code, stderr.decode()


async def test_each_request_is_answered_before_the_next_is_typed(chat: Terminal) -> None:
    chat.type(b'{"msg": "one"}\n')
    await chat.shows(r'"msg": "one"')
    chat.type(b'{"msg": "two"}\n')
    await chat.shows(r'"msg": "two",\s*"index": 1')
    chat.type(b'{"msg":\n')  # a value over two lines goes out once complete
    chat.type(b' "three"}\n')
    await chat.shows(r'"msg": "three",\s*"index": 2')
    chat.type(CTRL_D)
    code, stderr = await _ended(chat)
    assert code == 0, stderr
    assert stderr.startswith("Reading requests for /grpctunnel.demo.v1.Echo/Chat")
    assert "Ctrl-D ends the requests" in stderr
    assert "ERROR" not in stderr and "Traceback" not in stderr


async def test_bad_input_is_reported_and_the_call_goes_on(chat: Terminal) -> None:
    chat.type(b'{"msg": "one"}\n')
    await chat.shows(r'"msg": "one"')
    chat.type(b'{"msg": oops}\n')
    chat.type(b'{"nope": 1}\n')
    chat.type(b'{"msg": "two"}\n')
    await chat.shows(r'"msg": "two",\s*"index": 1')  # the bad ones were not sent
    chat.type(CTRL_D)
    code, stderr = await _ended(chat)
    assert code == 0, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 2, stderr
    assert "invalid JSON in stdin at line 2" in errors[0]
    assert "(not sent; type it again)" in errors[0]
    assert "unknown field 'nope' in grpctunnel.demo.v1.EchoRequest" in errors[1]
    assert "Traceback" not in stderr


async def test_ctrl_d_at_once_ends_the_call_with_no_requests(chat: Terminal) -> None:
    chat.type(CTRL_D)  # nothing typed at all
    code, stderr = await _ended(chat)
    assert code == 0, stderr
    assert "ERROR" not in stderr


async def test_an_error_status_from_the_server_ends_the_call_with_its_code(
    chat: Terminal,
) -> None:
    chat.type(b'{"msg": "fine"}\n')
    await chat.shows(r'"msg": "fine"')
    chat.type(b'{"msg": "error:ABORTED:stop here"}\n')
    code, stderr = await _ended(chat)
    assert code == 64 + 10, stderr
    assert "ERROR: ABORTED: stop here" in stderr


async def test_a_unary_request_typed_at_a_terminal_is_sent_by_ctrl_d(backend: str) -> None:
    async with terminal_call(backend, "Echo/Echo") as echo:
        echo.type(b'{"msg": "typed"}\n')
        echo.type(CTRL_D)
        await echo.shows(r'"msg": "typed"')
        code, stderr = await _ended(echo)
    assert code == 0, stderr
    assert stderr.startswith("Reading the request for /grpctunnel.demo.v1.Echo/Echo")
    assert "Ctrl-D sends it" in stderr


async def test_unknown_fields_typed_are_ignored_when_allowed(backend: str) -> None:
    async with terminal_call(backend, "Echo/Chat", "--allow-unknown-fields") as chat:
        chat.type(b'{"msg": "kept", "nope": 1}\n')
        await chat.shows(r'"msg": "kept"')
        chat.type(CTRL_D)
        code, stderr = await _ended(chat)
    assert code == 0, stderr
    assert "ERROR" not in stderr, stderr
