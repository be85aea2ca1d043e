"""End-to-end runs of the examples in examples/, as a user would run them.

Each test starts ``server.py`` and ``client.py`` of one example as separate processes
(this interpreter, the example folder as working directory, a free port through
``--port`` or ``GRPCTUNNEL_EXAMPLE_PORT``), waits for the server's "listening" line by
reading its output, and compares what both print with the output the example's
README shows, timestamps aside. Servers are then stopped with SIGTERM and must exit 0
with nothing on stderr that looks like a traceback.
"""

from __future__ import annotations

import asyncio
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from support.processes import clean_env

from grpctunnel import PendingChannel, TunnelServiceStub

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="stops the example servers with SIGTERM"
)

ROOT = Path(__file__).resolve().parents[2]
FORWARD = ROOT / "examples" / "forward_tunnel"
REVERSE = ROOT / "examples" / "reverse_tunnel"

STARTUP_TIMEOUT = 20.0  # seconds for a process to print an awaited line
EXIT_TIMEOUT = 15.0  # seconds for a process to exit once it should

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} - ")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def normalized(line: str) -> str:
    """A log line with its timestamp replaced by ``<ts>``; other lines unchanged."""
    return TIMESTAMP.sub("<ts> - ", line)


class Example:
    """One example script running as a subprocess, its output read line by line."""

    def __init__(self, folder: Path, script: str, *args: str, env: dict[str, str]) -> None:
        self.name = f"{folder.name}/{script}"
        self.proc = subprocess.Popen(
            [sys.executable, script, *args],
            cwd=folder,
            env=clean_env(PYTHONIOENCODING="utf-8", **env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._pending: queue.Queue[str | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, True)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, False)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    def _read(self, stream, lines: list[str], announce: bool) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))
            if announce:
                self._pending.put(lines[-1])
        if announce:
            self._pending.put(None)  # end of output

    def describe(self) -> str:
        return (
            f"{self.name} (exit code {self.proc.poll()})\n--- stdout:\n"
            + "\n".join(self.stdout)
            + "\n--- stderr:\n"
            + "\n".join(self.stderr)
        )

    def wait_for_line(self, text: str, timeout: float = STARTUP_TIMEOUT) -> None:
        """Returns once a line containing ``text`` was printed."""
        while True:
            try:
                line = self._pending.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no line with {text!r} in time from {self.describe()}"
                ) from None
            if line is None:
                raise AssertionError(f"{text!r} never printed by {self.describe()}")
            if text in line:
                return

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Waits for the process to exit and for all its output to be read."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"did not exit in time: {self.describe()}") from None
        for reader in self._readers:
            reader.join(timeout)
        return code

    def terminate(self) -> int:
        """Sends SIGTERM, as a service manager (or Ctrl+C's cousin) would."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def lines(self) -> list[str]:
        return [normalized(line) for line in self.stdout]

    def assert_no_traceback(self) -> None:
        output = "\n".join(self.stdout + self.stderr)
        assert "Traceback" not in output, self.describe()
        assert "Exception ignored" not in output, self.describe()


@contextmanager
def running(folder: Path, script: str, *args: str, port: int, **env: str) -> Iterator[Example]:
    """Runs an example script; kills it if the test left it running."""
    example = Example(folder, script, *args, env={"GRPCTUNNEL_EXAMPLE_PORT": str(port), **env})
    try:
        yield example
    finally:
        if example.proc.poll() is None:
            example.proc.kill()
            example.proc.wait(EXIT_TIMEOUT)
        for stream in (example.proc.stdout, example.proc.stderr):
            if stream is not None:
                stream.close()


def run_client(folder: Path, *args: str, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "client.py", *args],
        cwd=folder,
        env=clean_env(PYTHONIOENCODING="utf-8", GRPCTUNNEL_EXAMPLE_PORT=str(port)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=30,
    )


def log(message: str, level: str = "INFO") -> str:
    return f"<ts> - {level} - {message}"


# -- forward tunnel ------------------------------------------------------------------


def forward_server_startup(port: int) -> list[str]:
    return [
        log("Starting Forward Tunnel Server..."),
        log("Registered Echo service"),
        log(f"✓ Server listening on port {port}"),
        log("Waiting for clients to connect..."),
    ]


def forward_client_output(port: int, calls: int = 5) -> list[str]:
    lines = [
        log(f"Connecting to server at localhost:{port}..."),
        log("Creating forward tunnel..."),
        log("✓ Forward tunnel established"),
        "",
        "--- Making RPC calls through tunnel ---",
    ]
    for i in range(1, calls + 1):
        lines += [
            log(f"Sending: Hello from client #{i}"),
            log(f"Received: Echo: Hello from client #{i}"),
        ]
    return [*lines, "", "✓ All calls completed successfully!"]


def test_forward_tunnel_example() -> None:
    port = free_port()
    # The port goes by --port here (and by the environment in the reverse test).
    with running(FORWARD, "server.py", "--port", str(port), port=port + 1) as server:
        server.wait_for_line("Server listening on port")

        # Two clients in a row: the server keeps serving after the first one leaves.
        for _ in range(2):
            client = run_client(FORWARD, "--port", str(port), port=port + 1)
            assert client.returncode == 0, client.stdout + client.stderr
            lines = [normalized(line) for line in client.stdout.splitlines()]
            assert lines == forward_client_output(port)
            assert "Traceback" not in client.stderr, client.stderr

        assert server.terminate() == 0, server.describe()
        assert server.lines() == [
            *forward_server_startup(port),
            log("Shutting down..."),
            log("Server stopped"),
        ]
        server.assert_no_traceback()


def test_forward_server_stops_cleanly_with_a_tunnel_open() -> None:
    port = free_port()
    with running(FORWARD, "server.py", port=port) as server:
        server.wait_for_line("Server listening on port")

        async def stop_server_under_open_tunnel() -> int:
            async with grpc.aio.insecure_channel(f"localhost:{port}") as channel:
                tunnel = await PendingChannel(TunnelServiceStub(channel)).start(timeout=10)
                assert tunnel.get_state() == grpc.ChannelConnectivity.READY
                code = await asyncio.get_running_loop().run_in_executor(None, server.terminate)
                # The tunnel ends with the server.
                await asyncio.wait_for(
                    tunnel.wait_for_state_change(grpc.ChannelConnectivity.READY), EXIT_TIMEOUT
                )
                assert tunnel.get_state() == grpc.ChannelConnectivity.SHUTDOWN
                await tunnel.close()
                return code

        assert asyncio.run(stop_server_under_open_tunnel()) == 0, server.describe()
        assert server.lines()[-2:] == [log("Shutting down..."), log("Server stopped")]
        server.assert_no_traceback()


def test_forward_client_without_server_fails_cleanly() -> None:
    port = free_port()  # nothing listens there
    client = run_client(FORWARD, port=port)
    assert client.returncode == 1, client.stdout + client.stderr
    lines = [normalized(line) for line in client.stdout.splitlines()]
    assert lines[:2] == [
        log(f"Connecting to server at localhost:{port}..."),
        log("Creating forward tunnel..."),
    ]
    assert lines[2].startswith(
        log(f"Could not open a tunnel to localhost:{port}: UNAVAILABLE: ", "ERROR")
    ), lines
    assert len(lines) == 3, lines
    assert "Traceback" not in client.stdout + client.stderr


def test_server_reports_a_busy_port() -> None:
    port = free_port()
    with running(FORWARD, "server.py", port=port) as first:
        first.wait_for_line("Server listening on port")
        with running(FORWARD, "server.py", port=port) as second:
            assert second.wait() == 1, second.describe()
            assert second.lines()[-1].startswith(log(f"Cannot listen on port {port}: ", "ERROR")), (
                second.describe()
            )
            second.assert_no_traceback()
        assert first.terminate() == 0, first.describe()


# -- reverse tunnel ------------------------------------------------------------------


def reverse_server_output(port: int, calls: int = 5) -> list[str]:
    lines = [
        log("Starting Reverse Tunnel Server..."),
        log(f"✓ Server listening on port {port}"),
        log("Waiting for client to connect with reverse tunnel..."),
        log("✓ Reverse tunnel established"),
        "",
        "--- Making RPC calls to client ---",
    ]
    for i in range(1, calls + 1):
        lines += [
            log(f"Sending to client: Hello from server #{i}"),
            log(f"Client responded: Echo: Hello from server #{i}"),
        ]
    return [*lines, "", "✓ All calls to client completed successfully!"]


def reverse_client_output(port: int, calls: int = 5) -> list[str]:
    return [
        log(f"Connecting to server at localhost:{port}..."),
        log("Registered Echo service on client"),
        log("Opening reverse tunnel to server..."),
        log("✓ Reverse tunnel established"),
        log("Waiting for calls from server..."),
        *(log(f"Client received request: Hello from server #{i}") for i in range(1, calls + 1)),
    ]


def test_reverse_tunnel_example() -> None:
    port = free_port()
    with running(REVERSE, "server.py", port=port) as server:
        server.wait_for_line("Server listening on port")

        # The first client leaves by itself (SIGTERM, as with Ctrl+C); the server
        # then waits for the next client and calls it in turn.
        with running(REVERSE, "client.py", port=port) as client:
            server.wait_for_line("All calls to client completed successfully!")
            client.wait_for_line("Client received request: Hello from server #5")
            assert client.terminate() == 0, client.describe()
            assert client.lines() == [
                *reverse_client_output(port),
                log("Closing reverse tunnel..."),
                log("Reverse tunnel closed"),
            ]
            client.assert_no_traceback()
        server.wait_for_line("Waiting for client to connect with reverse tunnel...")

        # The second client stays until the server stops, and then exits 0 on its own.
        with running(REVERSE, "client.py", port=port) as client:
            server.wait_for_line("All calls to client completed successfully!")
            client.wait_for_line("Client received request: Hello from server #5")
            assert server.terminate() == 0, server.describe()
            assert client.wait() == 0, client.describe()
            lines = client.lines()
            assert lines[:-1] == reverse_client_output(port)
            assert lines[-1] == log(
                "Reverse tunnel closed (tunnel lost: tunnel server shutting down); exiting"
            ), client.describe()
            client.assert_no_traceback()

        round_ = reverse_server_output(port)
        assert server.lines() == [
            *round_,
            log("Client disconnected"),
            *round_[2:],  # "Waiting for client ..." again, then the second round
            log("Shutting down..."),
            log("Server stopped"),
        ]
        server.assert_no_traceback()


def test_reverse_client_without_server_fails_cleanly() -> None:
    port = free_port()  # nothing listens there
    client = run_client(REVERSE, "--port", str(port), port=port + 1)
    assert client.returncode == 1, client.stdout + client.stderr
    lines = [normalized(line) for line in client.stdout.splitlines()]
    assert lines[:3] == reverse_client_output(port)[:3]
    assert lines[3].startswith(
        log(f"Could not open a reverse tunnel to localhost:{port}: UNAVAILABLE: ", "ERROR")
    ), lines
    assert len(lines) == 4, lines
    assert "Traceback" not in client.stdout + client.stderr


# -- the pages' code snippets ----------------------------------------------------------


def test_page_snippets_work_as_written() -> None:
    """The pages' snippets, including the reverse server's ``asyncio.sleep(2.0)``."""
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("page_snippets.py"))],
        cwd=REVERSE,
        env=clean_env(PYTHONPATH=str(REVERSE)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "OK"
