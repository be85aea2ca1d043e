"""Process handles and the registry of *paths* (ways a call can travel from the caller
process to the services).

A :class:`Pair` is the service process plus the caller process (see workers.py). A
:class:`PathDef` says how one path is set up on a pair: ``open(pair)`` prepares whatever
the path needs outside the caller (a reverse tunnel, extra processes) and returns the
*channel spec* the caller process turns into a channel (``workers.CHANNEL_KINDS``);
``close(pair)`` undoes it. Processes a path starts (``pair.add_process``) are stopped with
it and their RSS is counted on the server side.

To add a path, write a PathDef and call :func:`register_path`; run.py measures every
registered path (or those named with ``--paths``) against ``direct``. A sketch of a
future ``cli`` path, through a ``grpctunnel serve`` process and an ``expose`` process::

    def _open_cli(pair: Pair) -> dict[str, Any]:
        serve_port = free_port()
        pair.add_process("cli", subprocess.Popen(
            [GRPCTUNNEL, "serve", "--listen", f"127.0.0.1:{serve_port}"]))
        pair.add_process("cli", subprocess.Popen(
            [GRPCTUNNEL, "expose", "--server", f"127.0.0.1:{serve_port}",
             "--backend", f"127.0.0.1:{pair.service_port}"]))
        wait_for_port(serve_port)
        return {"kind": "grpc", "target": f"127.0.0.1:{serve_port}"}

    register_path(PathDef("cli", "CLI", "serve + expose processes", _open_cli))

(the command-line flags above are placeholders for whatever the CLI offers).
"""

from __future__ import annotations

import multiprocessing
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import workers

REQUEST_TIMEOUT = 300.0


class WorkerError(RuntimeError):
    """A command failed inside a worker process (the message is its traceback)."""


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Worker:
    """A benchmark process started with multiprocessing ("spawn") that obeys commands."""

    def __init__(self, name: str, target: Callable[[Any], None]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child,), name=name, daemon=True)
        self.process.start()
        child.close()
        self.ready: dict[str, Any] = self._receive(120.0)

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def request(self, cmd: str, timeout: float = REQUEST_TIMEOUT, **kwargs: Any) -> Any:
        self._conn.send({"cmd": cmd, **kwargs})
        return self._receive(timeout)

    def _receive(self, timeout: float) -> Any:
        if not self._conn.poll(timeout):
            raise TimeoutError(f"{self.name}: no answer within {timeout:.0f} s")
        message = self._conn.recv()
        if not message["ok"]:
            raise WorkerError(f"{self.name}: {message['error']}")
        return message["result"]

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self.request("stop", timeout=15.0)
            except Exception:
                pass
        self.process.join(10.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        self._conn.close()


@dataclass
class Pair:
    """The service process and the caller process, plus processes paths started."""

    service: Worker
    caller: Worker
    processes: dict[str, list[subprocess.Popen[Any]]] = field(default_factory=dict)

    @classmethod
    def start(cls) -> Pair:
        service = Worker("bench-service", workers.service_main)
        try:
            caller = Worker("bench-caller", workers.caller_main)
        except BaseException:
            service.stop()
            raise
        return cls(service, caller)

    @property
    def service_port(self) -> int:
        return int(self.service.ready["port"])

    @property
    def caller_port(self) -> int:
        return int(self.caller.ready["port"])

    def add_process(self, path: str, process: subprocess.Popen[Any]) -> None:
        self.processes.setdefault(path, []).append(process)

    def open_path(self, path: PathDef) -> None:
        spec = path.open(self)
        self.caller.request("open", name=path.name, spec=spec, timeout=60.0)

    def close_path(self, path: PathDef) -> None:
        try:
            self.caller.request("close", name=path.name, timeout=60.0)
            path.close(self)
        finally:
            for process in self.processes.pop(path.name, []):
                _stop_process(process)

    def server_pids(self, path: str) -> list[int]:
        """The processes on the serving side of a path: the service process and any
        process the path started."""
        return [self.service.pid, *(p.pid for p in self.processes.get(path, []))]

    def server_rss(self, path: str) -> int:
        return sum(rss_bytes(pid) for pid in self.server_pids(path))

    def client_rss(self) -> int:
        return self.caller.rss()

    def gc(self) -> None:
        self.service.request("gc", timeout=60.0)
        self.caller.request("gc", timeout=60.0)

    def stop(self) -> None:
        for processes in self.processes.values():
            for process in processes:
                _stop_process(process)
        self.processes.clear()
        self.caller.stop()
        self.service.stop()


def _stop_process(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)


def _no_op(pair: Pair) -> None:
    return None


@dataclass(frozen=True)
class PathDef:
    name: str
    label: str
    description: str
    open: Callable[[Pair], dict[str, Any]]
    close: Callable[[Pair], None] = _no_op


PATHS: dict[str, PathDef] = {}
BASELINE = "direct"


def register_path(path: PathDef) -> PathDef:
    PATHS[path.name] = path
    return path


# -- the built-in paths -------------------------------------------------------------------


def _open_direct(pair: Pair) -> dict[str, Any]:
    return {"kind": "grpc", "target": f"127.0.0.1:{pair.service_port}"}


def _open_forward(pair: Pair) -> dict[str, Any]:
    return {"kind": "forward", "target": f"127.0.0.1:{pair.service_port}"}


def _open_reverse(pair: Pair) -> dict[str, Any]:
    pair.service.request(
        "open_reverse", name="reverse", target=f"127.0.0.1:{pair.caller_port}", timeout=60.0
    )
    return {"kind": "reverse"}


def _close_reverse(pair: Pair) -> None:
    pair.service.request("close_reverse", name="reverse", timeout=60.0)


register_path(
    PathDef(
        "direct",
        "direct",
        "plain gRPC: the caller's grpc.aio channel to the service process's grpc.aio server",
        _open_direct,
    )
)
register_path(
    PathDef(
        "forward",
        "forward",
        "forward tunnel: PendingChannel in the caller over one OpenTunnel stream to the "
        "service process's TunnelServiceHandler, which serves the services",
        _open_forward,
    )
)
register_path(
    PathDef(
        "reverse",
        "reverse",
        "reverse tunnel: the service process's ReverseTunnelServer dials the caller's "
        "TunnelServiceHandler; the caller calls through handler.as_channel()",
        _open_reverse,
        _close_reverse,
    )
)

__all__ = ["BASELINE", "PATHS", "Pair", "PathDef", "Worker", "WorkerError", "register_path"]
