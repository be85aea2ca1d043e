"""The chaos suite (issue 9): real processes — a backend that records what it applied,
`serve`, `expose` — and a caller making a steady mix of unary and streaming calls through
them, while the test kills (SIGKILL) and restarts the exposer, the server and the backend,
freezes (SIGSTOP) and resumes each of them, and opens hostile tunnels beside the good ones.

For every call made it asserts that the call ended, within its deadline and a slack; that
it ended OK or with UNAVAILABLE, DEADLINE_EXCEEDED or CANCELLED; that an OK call's requests
were each applied by the backend exactly once (no request of any call twice); and that no
request of a call the caller saw fail was applied by the backend after the caller was told
(a frozen peer, thawed, must not run what was given up on). After each fault, service must
come back within the exposer's backoff bound (plus a stated slack) from the moment the
faulted process is back, and stay back; the hostile tunnels must each end with the status
naming their fault while every good call succeeds; and the resident memory of `serve`,
sampled throughout, must stay under a stated bound. The figures (calls made, failures by
code, recovery per fault, peak RSS) are printed at the end of the session and written to
chaos-figures.json in the test's tmp dir.

Three things are excused, each counted in the figures: a request applied within
HANDOVER_SLACK of its caller seeing the call fail (a kill racing the backend's own work);
what the frozen backend applies as it thaws of calls whose deadline passed while it was
frozen (handed to it before, see handed_over); and INTERNAL "Internal error from Core" from
a write that raced the end of the call, grpc.aio's bug grpc/grpc#36066 (see
caller.lost_status).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.launcher import Launcher, free_port, no_traceback
from support.processes import Proc

from .caller import ALLOWED, DEADLINE, Call, Caller
from .hostile import Hostile, bearer

pytestmark = pytest.mark.timeout(240)

HERE = Path(__file__).parent
MIB = 1024

# the exposer's --max-backoff (support.launcher starts every exposer with --max-backoff 1)
MAX_BACKOFF = 1.0
# both ends ping every 0.5 s and give a connection up after 0.5 s without an answer
KEEPALIVE = ("--keepalive-interval", "0.5", "--keepalive-timeout", "0.5")
# how long a process stays frozen (a fixed wait: letting time pass is the point), well
# past the keepalive interval + timeout (1 s), so every peer has given up on it
FREEZE = 4.0
# service back this long after the faulted process is back: the exposer's backoff bound,
# plus slack for what follows it (one reflection call, opening the tunnel, the caller's
# own reconnection, a Python process starting, two shared cores)
RECOVERY_SLACK = 2.0
RECOVERY_BOUND = MAX_BACKOFF + RECOVERY_SLACK
RECOVERY_WAIT = 20.0  # no OK call this long after a fault: stop there, service is gone
SETTLED = 10  # OK calls after a recovery before the next fault
SETTLE_WAIT = 10.0
CALL_SLACK = 1.0  # a call may end this much past its deadline (a loaded machine)
# a request applied this soon after its caller saw the call fail was in the backend's hands
# before: a kill races the backend's own time from receiving a request to applying it. (A
# stale request run by a thawed peer is applied seconds later.)
HANDOVER_SLACK = 0.1
STREAM_LIMIT = 100  # serve --max-streams-per-tunnel, for the stream flood
HOSTILE_ROUNDS = 10
# serve's resident memory, bound: measured peaks are 61-63 MiB; twice as much is a leak
RSS_BOUND_MIB = 128
RSS_PERIOD = 0.2  # seconds between samples

TOKENS = {
    "exposer": "chaos-exposer-token",
    "caller": "chaos-caller-token",
    "intruder": "chaos-intruder-token",
}


# --- the processes ------------------------------------------------------------------------


@dataclass
class Stack:
    """The backend, `serve` and `expose`, each restartable on the same address."""

    launcher: Launcher
    tmp: Path
    backend_port: int = field(default_factory=free_port)
    server_port: int = field(default_factory=free_port)
    backend: Proc | None = None
    server: Proc | None = None
    exposer: Proc | None = None

    def __post_init__(self) -> None:
        self.record = self.tmp / "applied.txt"
        self.token_file = self.tmp / "tokens.json"
        self.token_file.write_text(
            json.dumps(
                {
                    "tokens": [
                        {
                            "name": "exposer",
                            "token": TOKENS["exposer"],
                            "call": False,
                            "expose_names": ["chaos"],
                        },
                        {"name": "caller", "token": TOKENS["caller"], "expose": False},
                        {"name": "intruder", "token": TOKENS["intruder"], "call": False},
                    ]
                }
            )
        )

    @property
    def backend_address(self) -> str:
        return f"127.0.0.1:{self.backend_port}"

    @property
    def server_address(self) -> str:
        return f"127.0.0.1:{self.server_port}"

    async def start_backend(self) -> None:
        self.backend = await self.launcher.spawn(
            "recording backend",
            sys.executable,
            str(HERE / "recording_backend.py"),
            "--port",
            str(self.backend_port),
            "--record",
            str(self.record),
        )
        await self.backend.wait_for(r"recording backend listening on")

    async def start_server(self) -> None:
        self.server, address = await self.launcher.server(
            "--token-file",
            str(self.token_file),
            "--max-streams-per-tunnel",
            str(STREAM_LIMIT),
            *KEEPALIVE,
            port=self.server_port,
        )
        assert address == self.server_address

    async def start_exposer(self) -> None:
        assert self.server is not None
        self.exposer = await self.launcher.exposer(
            self.backend_address,
            (self.server, self.server_address),
            "chaos",
            "--tunnels",
            "2",
            "--token",
            TOKENS["exposer"],
            *KEEPALIVE,
        )

    def live(self) -> list[Proc]:
        return [p for p in (self.backend, self.server, self.exposer) if p is not None]

    # -- faults: each returns when the faulted process is back ------------------------------

    async def kill_exposer(self) -> float:
        assert self.exposer is not None
        await self.exposer.kill()
        restored = time.monotonic()  # from its start: an exposer listens on nothing
        await self.start_exposer()
        return restored

    async def kill_server(self) -> float:
        assert self.server is not None
        await self.server.kill()
        await self.start_server()
        return time.monotonic()

    async def kill_backend(self) -> float:
        assert self.backend is not None
        await self.backend.kill()
        await self.start_backend()
        return time.monotonic()

    async def freeze(self, proc: Proc | None) -> float:
        assert proc is not None
        proc.signal(signal.SIGSTOP)
        await asyncio.sleep(FREEZE)  # the point: the process stays frozen this long
        proc.signal(signal.SIGCONT)
        return time.monotonic()

    def faults(self) -> list[tuple[str, Callable[[], Awaitable[float]]]]:
        return [
            ("kill -9 exposer, restart", self.kill_exposer),
            ("kill -9 serve, restart", self.kill_server),
            ("kill -9 backend, restart", self.kill_backend),
            ("freeze exposer", lambda: self.freeze(self.exposer)),
            ("freeze serve", lambda: self.freeze(self.server)),
            ("freeze backend", lambda: self.freeze(self.backend)),
        ]


class RssSampler:
    """Samples the resident memory of whichever `serve` is running, every RSS_PERIOD s."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.peak_kib = 0
        self.samples = 0
        self._stop = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            server = self.stack.server
            if server is not None and server.running:
                with contextlib.suppress(OSError, AssertionError):  # it died between
                    self.peak_kib = max(self.peak_kib, server.rss_kib())
                    self.samples += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), RSS_PERIOD)

    async def stop(self) -> None:
        self._stop.set()
        await self._task


@dataclass
class Fault:
    label: str
    injected: float
    restored: float
    recovered: Call | None = None

    @property
    def recovery(self) -> float | None:
        """From the faulted process being back to the end of the first OK call started
        after that."""
        if self.recovered is None or self.recovered.ended is None:
            return None
        return self.recovered.ended - self.restored

    @property
    def outage(self) -> float | None:
        if self.recovered is None or self.recovered.ended is None:
            return None
        return self.recovered.ended - self.injected


async def settle(caller: Caller, after: float, what: str) -> None:
    oks = await caller.wait_ok(after, SETTLED, SETTLE_WAIT)
    assert len(oks) >= SETTLED, (
        f"{what}: only {len(oks)} calls OK within {SETTLE_WAIT}s; calls since: "
        + "\n".join(c.describe() for c in caller.calls if c.started >= after)
    )


async def run_hostile(stack: Stack, caller: Caller) -> tuple[Hostile, list[str]]:
    """HOSTILE_ROUNDS rounds of every hostile case at once; what did not end as it should."""
    wrong: list[str] = []
    async with Hostile(
        stack.server_address, TOKENS["caller"], TOKENS["intruder"], STREAM_LIMIT
    ) as hostile:
        cases = hostile.cases()

        async def one(name: str) -> None:
            run, code, words = cases[name]
            try:
                got, details = await run()
            except Exception as e:
                wrong.append(f"{name}: {e!r}")
                return
            if got != code or words not in details:
                wrong.append(f"{name}: {got.name} {details!r}, expected {code.name} {words!r}")

        for _ in range(HOSTILE_ROUNDS):
            await asyncio.gather(*(one(name) for name in cases))
    return hostile, wrong


# --- the checks ---------------------------------------------------------------------------


def read_applied(path: Path) -> dict[str, list[float]]:
    applied: dict[str, list[float]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            msg, _, at = line.rpartition(" ")
            applied[msg].append(float(at))
    return applied


RACED = "applied within HANDOVER_SLACK"
AT_THAW = "applied at the frozen backend's thaw"


def check_calls(
    calls: list[Call], applied: dict[str, list[float]], backend_frozen: tuple[float, float]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Every violation, by rule; and the requests of failed calls applied after the
    caller saw them fail that are excused (RACED, AT_THAW: see the module's docstring)."""
    broken: dict[str, list[str]] = defaultdict(list)
    excused: dict[str, list[str]] = {RACED: [], AT_THAW: []}
    for call in calls:
        if call.ended is None or call.code is None:
            broken["did not end"].append(call.describe())
            continue
        if call.took > DEADLINE + CALL_SLACK:
            broken[f"ended more than {CALL_SLACK}s past its {DEADLINE}s deadline"].append(
                call.describe()
            )
        if call.code not in ALLOWED and not call.status_lost:
            broken[
                "ended with a code other than OK, UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED"
            ].append(call.describe())
        for msg in call.msgs:
            times = applied.get(msg, [])
            if len(times) > 1:
                broken["a request applied more than once"].append(
                    f"{msg} applied at {times}: {call.describe()}"
                )
            if call.code == "OK" and not times:
                broken["an OK call's request never applied"].append(f"{msg}: {call.describe()}")
            if call.code == "OK" or not times or times[0] <= call.ended:
                continue
            late = (
                f"{msg} applied at {times[0]:.3f}, {times[0] - call.ended:.3f}s after the "
                f"caller saw it fail: {call.describe()}"
            )
            if times[0] <= call.ended + HANDOVER_SLACK:
                excused[RACED].append(late)
            elif handed_over(call, times[0], backend_frozen):
                excused[AT_THAW].append(late)
            else:
                broken["applied after the caller saw the call fail"].append(late)
    return broken, excused


def handed_over(call: Call, applied_at: float, backend_frozen: tuple[float, float]) -> bool:
    """Whether a request of a failed call, applied after the caller saw it fail, had been
    handed to the backend before: the call failed (its deadline passed) while the backend
    was frozen, and the backend applied the request as it thawed. The exposer had written
    it into the backend's socket as the call began, and the cancellation after it; the
    thawed backend's gRPC server read both at once and ran the handler anyway, as it
    would for a call made to it directly. No tunnel can take back what a socket holds."""
    frozen, thawed = backend_frozen
    assert call.ended is not None
    return call.started < thawed and frozen <= call.ended <= thawed <= applied_at


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


# --- the test -----------------------------------------------------------------------------


async def test_chaos(launcher: Launcher, tmp_path: Path, figures: list[str]) -> None:
    began = time.monotonic()
    stack = Stack(launcher, tmp_path)
    await stack.start_backend()
    await stack.start_server()
    await stack.start_exposer()
    rss = RssSampler(stack)
    caller = Caller(stack.server_address, (bearer(TOKENS["caller"]),))
    faults: list[Fault] = []
    hostile_wrong: list[str] = []
    hostile_opened = hostile_refused_streams = 0
    try:
        await caller.start()
        caller.phase = "steady"
        await settle(caller, began, "before any fault")
        for label, inject in stack.faults():
            caller.phase = label
            injected = time.monotonic()
            restored = await inject()
            fault = Fault(label, injected, restored)
            faults.append(fault)
            oks = await caller.wait_ok(restored, 1, RECOVERY_WAIT)
            assert oks, (
                f"{label}: no call OK within {RECOVERY_WAIT}s of the process being back; "
                f"outputs:\n" + "\n\n".join(p.output[-3000:] for p in stack.live())
            )
            fault.recovered = oks[0]
            caller.phase = f"after {label}"
            await settle(caller, oks[0].ended or restored, f"after {label}")
        caller.phase = "hostile"
        hostile_began = time.monotonic()
        hostile, hostile_wrong = await run_hostile(stack, caller)
        hostile_opened, hostile_refused_streams = hostile.opened, hostile.refused_streams
        caller.phase = "end"
        await settle(caller, hostile_began, "during the hostile tunnels")
    finally:
        await caller.stop()
        await rss.stop()
    took = time.monotonic() - began

    applied = read_applied(stack.record)
    backend_freeze = next(f for f in faults if f.label == "freeze backend")
    broken, excused = check_calls(
        caller.calls, applied, (backend_freeze.injected, backend_freeze.restored)
    )
    hostile_calls = [c for c in caller.calls if c.phase == "hostile"]
    for call in hostile_calls:
        if call.code != "OK":
            broken["a good call failed beside the hostile tunnels"].append(call.describe())
    steady = [
        c for c in caller.calls if c.phase == "steady" and (c.ended or 0) < faults[0].injected
    ]
    for call in steady:
        if call.code != "OK":
            broken["a call failed before any fault"].append(call.describe())
    for fault, following in zip(faults, [*faults[1:], None], strict=True):
        # until the next fault: a call it caught in flight may fail
        until = following.injected if following is not None else float("inf")
        for call in caller.calls:
            if (
                call.phase == f"after {fault.label}"
                and call.code != "OK"
                and (call.ended or 0) < until
            ):
                broken["a call failed after service had resumed"].append(call.describe())
        if fault.recovery is None or fault.recovery > RECOVERY_BOUND:
            broken[f"service not back within {RECOVERY_BOUND}s"].append(
                f"{fault.label}: recovery {_seconds(fault.recovery)}"
            )
    if hostile_wrong:
        broken["a hostile tunnel did not end as it should"] = hostile_wrong
    peak_mib = rss.peak_kib / MIB
    if peak_mib > RSS_BOUND_MIB:
        broken[f"serve's RSS over {RSS_BOUND_MIB} MiB"].append(f"peak {peak_mib:.1f} MiB")

    # the figures
    codes = caller.codes()
    by_kind = Counter(c.kind for c in caller.calls)
    worst = max(faults, key=lambda f: f.recovery if f.recovery is not None else float("inf"))
    lines = [
        f"run: {took:.0f} s; {len(caller.calls)} calls "
        f"({', '.join(f'{k} {n}' for k, n in by_kind.most_common())}), "
        f"{caller.skipped} ticks skipped at {DEADLINE}s deadline",
        "ended: " + ", ".join(f"{code} {n}" for code, n in codes.most_common()),
        f"longest call: {max(c.took for c in caller.calls if c.ended):.2f} s "
        f"(deadline {DEADLINE} s + slack {CALL_SLACK} s)",
    ]
    lines.append(
        f"{'fault':<26} {'failed calls':<50} {'outage':>8} {'recovery':>9}  (bound {RECOVERY_BOUND:.1f} s)"
    )
    for fault in faults:
        failed = Counter(c.code for c in caller.calls if c.phase == fault.label and c.code != "OK")
        lines.append(
            f"{fault.label:<26} {', '.join(f'{k} {n}' for k, n in failed.most_common()) or '-':<50} "
            f"{_seconds(fault.outage):>8} {_seconds(fault.recovery):>9}"
        )
    lines += [
        f"worst recovery: {_seconds(worst.recovery)} ({worst.label})",
        f"hostile: {hostile_opened} tunnels opened in {HOSTILE_ROUNDS} rounds, "
        f"{hostile_refused_streams} flooded streams refused, "
        f"{len(hostile_calls)} good calls beside them, "
        f"{sum(c.code == 'OK' for c in hostile_calls)} OK",
        f"serve RSS peak: {peak_mib:.1f} MiB over {rss.samples} samples (bound {RSS_BOUND_MIB} MiB)",
        f"requests applied by the backend: {sum(len(t) for t in applied.values())}; "
        f"applied after the caller saw the call fail: "
        f"{len(broken.get('applied after the caller saw the call fail', []))} "
        f"(excused: {len(excused[RACED])} within {HANDOVER_SLACK} s, "
        f"{len(excused[AT_THAW])} at the frozen backend's thaw, handed to it before)",
    ]
    lost = sum(c.status_lost for c in caller.calls)
    if lost:
        lines.append(
            f"of the INTERNAL: {lost} status lost by grpc.aio to a write racing the end of "
            "the call (grpc/grpc#36066)"
        )
    elsewhere = Counter(
        c.phase for c in caller.calls if c.code != "OK" and c.phase not in {f.label for f in faults}
    )
    if elsewhere:
        lines.append(
            "failed outside the faults: " + ", ".join(f"{p} {n}" for p, n in elsewhere.items())
        )
    figures.extend(lines)
    print("\n".join(lines))
    (tmp_path / "chaos-figures.json").write_text(
        json.dumps(
            {
                "seconds": took,
                "calls": len(caller.calls),
                "by_kind": by_kind,
                "ended": codes,
                "faults": [
                    {
                        "fault": f.label,
                        "outage_s": f.outage,
                        "recovery_s": f.recovery,
                        "failed": Counter(
                            c.code for c in caller.calls if c.phase == f.label and c.code != "OK"
                        ),
                    }
                    for f in faults
                ],
                "recovery_bound_s": RECOVERY_BOUND,
                "serve_rss_peak_mib": peak_mib,
                "serve_rss_bound_mib": RSS_BOUND_MIB,
                "hostile_tunnels": hostile_opened,
                "violations": broken,
                "excused": excused,
                "failed_outside_faults": [
                    c.describe()
                    for c in caller.calls
                    if c.code != "OK" and c.phase not in {f.label for f in faults}
                ],
            },
            indent=2,
        )
    )

    assert not broken, "\n\n".join(
        f"{rule} ({len(cases)}):\n" + "\n".join(cases[:10]) for rule, cases in broken.items()
    )
    no_traceback(*stack.live())
