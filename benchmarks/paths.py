"""Process handles and the registry of *paths* (ways a call can travel from the caller
process to the services).

A :class:`Pair` is the service process plus the caller process (see workers.py). A
:class:`PathDef` says how one path is set up on a pair: ``open(pair)`` prepares whatever
the path needs outside the caller (a reverse tunnel, extra processes) and returns the
*channel spec* the caller process turns into a channel (``workers.CHANNEL_KINDS``);
``close(pair)`` undoes it. Processes a path starts (``pair.add_process``) are stopped with
it and their RSS is counted on the server side.

To add a path, write a PathDef and call :func:`register_path`; run.py measures every
registered path (or those named with ``--paths``) against ``direct``. The ``cli`` path
below is the worked example of a path that starts processes of its own.

A path may leave out a scenario that cannot run on it (``PathDef.skips``: scenario name ->
reason); the table then shows "n/a" and the JSON records the reason under ``skipped``.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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
    state: dict[str, Any] = field(default_factory=dict)  # what paths keep between open/close
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # run by stop()

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

    def path_pids(self, path: str) -> list[int]:
        """The processes a path started (cli: serve and expose; ssh: sshd and ssh), and
        their children (the sshd process serving the forward's connection)."""
        pids = [p.pid for p in self.processes.get(path, [])]
        return pids + [c for pid in pids for c in descendants(pid)]

    def server_rss(self, path: str) -> int:
        return sum(
            rss_bytes(pid)
            for pid in [self.service.pid, *self.path_pids(path)]
            if os.path.exists(f"/proc/{pid}")
        )

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
        while self.cleanups:
            self.cleanups.pop()()


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
    skips: dict[str, str] = field(default_factory=dict)  # scenario -> why it is left out
    # why the path cannot run on this machine at all (None: it can), e.g. a missing tool
    unavailable: Callable[[], str | None] = lambda: None


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


# -- the cli path: `grpctunnel serve` + `grpctunnel expose` processes ------------------------


@dataclass
class CliSettings:
    """How the cli path runs the command line (run.py sets ``tunnels`` from
    ``--cli-tunnels``)."""

    tunnels: int = 2
    start_timeout: float = 30.0


CLI = CliSettings()
# what the service process offers; named with `expose --service` because Bench (raw
# bytes) has no descriptor to list; Echo's method kinds are learnt by reflection
CLI_SERVICES = ("grpctunnel.demo.v1.Echo", "grpctunnel.bench.v1.Bench")
CLI_MAX_MESSAGE_MIB = 128  # `serve --max-message-mib`, as bench_service.MAX_MESSAGE


def grpctunnel_command() -> list[str]:
    """The `grpctunnel` console script next to this interpreter (the virtualenv's)."""
    script = Path(sys.executable).parent / "grpctunnel"
    if script.exists():
        return [str(script)]
    found = shutil.which("grpctunnel")
    if found is None:
        raise FileNotFoundError(f"no grpctunnel executable next to {sys.executable} or on PATH")
    return [found]


_LISTENING = re.compile(r"tunnel server listening on \S+:(\d+)")
_TUNNEL_OPENED = "tunnel opened:"  # serve's log, once per reverse tunnel
_TUNNEL_CONNECTED = re.compile(r"tunnel \d+ connected")  # expose's log, likewise


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _wait_for_log(
    process: subprocess.Popen[Any],
    log: Path,
    what: str,
    found: Callable[[str], Any],
    timeout: float,
    shown: tuple[Path, ...] = (),
) -> Any:
    """Polls ``log`` until ``found(text)`` returns something; fails when ``process``
    exits or ``timeout`` seconds pass, with the end of ``shown`` (default: ``log``) in
    the message."""
    deadline = time.monotonic() + timeout

    def tails() -> str:
        return "\n".join(f"--- {p.name}:\n{_tail(p)}" for p in shown or (log,))

    while True:
        result = found(log.read_text(errors="replace") if log.exists() else "")
        if result:
            return result
        if process.poll() is not None:
            raise RuntimeError(
                f"{what}: process exited with status {process.returncode}:\n{tails()}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready within {timeout:.0f} s:\n{tails()}")
        time.sleep(0.05)


def _open_cli(pair: Pair) -> dict[str, Any]:
    """Starts `grpctunnel serve` on a free port and `grpctunnel expose` of the service
    process's port to it with ``CLI.tunnels`` reverse tunnels; ready when serve has
    logged every tunnel as opened. The caller then calls serve with a plain channel."""
    command = grpctunnel_command()
    logs = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    pair.state["cli_logs"] = logs
    pair.cleanups.append(lambda: shutil.rmtree(logs, ignore_errors=True))
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    serve_log = logs / "serve.log"
    with open(serve_log, "wb") as out:
        serve = subprocess.Popen(
            [
                *command,
                "serve",
                "--port",
                "0",
                "--host",
                "127.0.0.1",
                "--grace",
                "1",
                "--max-message-mib",
                str(CLI_MAX_MESSAGE_MIB),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=env,
        )
    pair.add_process("cli", serve)

    def listening(text: str) -> int | None:
        match = _LISTENING.search(text)
        return int(match.group(1)) if match else None

    port = _wait_for_log(serve, serve_log, "grpctunnel serve", listening, CLI.start_timeout)
    pair.state["cli_serve_pid"] = serve.pid
    expose_log = logs / "expose.log"
    services = [arg for name in CLI_SERVICES for arg in ("--service", name)]
    with open(expose_log, "wb") as out:
        expose = subprocess.Popen(
            [
                *command,
                "expose",
                f"127.0.0.1:{pair.service_port}",
                "--to",
                f"127.0.0.1:{port}",
                "--name",
                "bench",
                "--tunnels",
                str(CLI.tunnels),
                "--max-message-mib",
                str(CLI_MAX_MESSAGE_MIB),
                *services,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=env,
        )
    pair.add_process("cli", expose)
    pair.state["cli_expose_pid"] = expose.pid

    def all_open(serve_text: str) -> bool:
        # serve's word that it registered each tunnel; expose's as a fallback should
        # serve's log line change
        if serve_text.count(_TUNNEL_OPENED) >= CLI.tunnels:
            return True
        expose_text = expose_log.read_text(errors="replace") if expose_log.exists() else ""
        return len(_TUNNEL_CONNECTED.findall(expose_text)) >= CLI.tunnels

    _wait_for_log(
        expose,
        serve_log,
        f"{CLI.tunnels} reverse tunnel(s) from grpctunnel expose",
        all_open,
        CLI.start_timeout,
        shown=(expose_log, serve_log),
    )
    return {"kind": "grpc", "target": f"127.0.0.1:{port}"}


def _close_cli(pair: Pair) -> None:
    logs = pair.state.pop("cli_logs", None)
    pair.state.pop("cli_serve_pid", None)
    pair.state.pop("cli_expose_pid", None)
    if logs is not None:
        shutil.rmtree(logs, ignore_errors=True)


register_path(
    PathDef(
        "cli",
        "cli",
        "command line: the caller's plain grpc.aio channel to a `grpctunnel serve` process, "
        "which relays each call over a reverse tunnel opened by a `grpctunnel expose` "
        "process, which relays it to the service process's grpc.aio server",
        _open_cli,
        _close_cli,
    )
)

# -- the ssh path: the same calls over an OpenSSH remote forward (`ssh -N -R`) -------------


def _ssh_tools() -> tuple[str, str, str] | str:
    """(sshd, ssh, ssh-keygen) paths, or why the ssh path cannot run here."""
    sshd = shutil.which("sshd") or next(
        (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)), None
    )
    ssh = shutil.which("ssh")
    keygen = shutil.which("ssh-keygen")
    if sshd is None:
        return "sshd is not installed (Debian/Ubuntu: apt-get install openssh-server)"
    if ssh is None or keygen is None:
        return "the OpenSSH client (ssh, ssh-keygen) is not installed"
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        try:  # sshd run as root insists on its privilege separation directory
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        except OSError as e:
            return f"sshd needs /run/sshd, which cannot be created: {e}"
    return sshd, ssh, keygen


def _ssh_unavailable() -> str | None:
    tools = _ssh_tools()
    return tools if isinstance(tools, str) else None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _open_ssh(pair: Pair) -> dict[str, Any]:
    """Starts a loopback sshd of its own (throwaway host and user keys and config in a
    temporary directory, an ephemeral port) and `ssh -N -R <port>:127.0.0.1:<service
    port>` to it: the caller then calls the forwarded port with a plain channel, and
    every byte crosses ssh, sshd and back over loopback TCP."""
    tools = _ssh_tools()
    if isinstance(tools, str):
        raise RuntimeError(f"ssh path: {tools}")
    sshd, ssh, keygen = tools
    work = Path(tempfile.mkdtemp(prefix="bench-ssh-"))
    pair.state["ssh_dir"] = work
    pair.cleanups.append(lambda: shutil.rmtree(work, ignore_errors=True))
    for key in ("host_key", "user_key"):
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(work / key)],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    shutil.copy(work / "user_key.pub", work / "authorized_keys")
    ssh_port = _free_port()
    config = work / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {ssh_port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {work / 'host_key'}",
                f"AuthorizedKeysFile {work / 'authorized_keys'}",
                f"PidFile {work / 'sshd.pid'}",
                "StrictModes no",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "AllowTcpForwarding yes",
                "GatewayPorts no",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    log = work / "sshd.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    pair.add_process("ssh", server)
    _wait_for_log(
        server, log, "sshd", lambda _: _port_open(ssh_port), CLI.start_timeout, shown=(log,)
    )
    forwarded = _free_port()
    client_log = work / "ssh.log"
    user = os.environ.get("USER") or __import__("getpass").getuser()
    with open(client_log, "wb") as out:
        client = subprocess.Popen(
            [
                ssh,
                "-N",
                "-p",
                str(ssh_port),
                "-i",
                str(work / "user_key"),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "LogLevel=ERROR",
                "-R",
                f"127.0.0.1:{forwarded}:127.0.0.1:{pair.service_port}",
                f"{user}@127.0.0.1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    pair.add_process("ssh", client)
    _wait_for_log(
        client,
        client_log,
        "ssh -R",
        lambda _: _port_open(forwarded),
        CLI.start_timeout,
        shown=(client_log, log),
    )
    return {"kind": "grpc", "target": f"127.0.0.1:{forwarded}"}


def _close_ssh(pair: Pair) -> None:
    work = pair.state.pop("ssh_dir", None)
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)


register_path(
    PathDef(
        "ssh",
        "ssh -R",
        "OpenSSH remote forward: the caller's plain grpc.aio channel to a port that a "
        "loopback sshd forwards, through an `ssh -N -R` session, to the service "
        "process's grpc.aio server (a raw TCP forward: what `expose` is compared with)",
        _open_ssh,
        _close_ssh,
        unavailable=_ssh_unavailable,
    )
)


def descendants(pid: int) -> list[int]:
    """The processes started by ``pid``, their children, and so on (sshd serves each
    connection in a child process of its own)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                continue
            out.extend(children)
            todo.extend(children)
    return out


__all__ = ["BASELINE", "CLI", "PATHS", "Pair", "PathDef", "Worker", "WorkerError", "register_path"]
