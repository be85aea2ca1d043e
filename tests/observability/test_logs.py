"""Logs of real `serve` and `expose` processes: --log-format json writes one JSON object
per line; -v call lines name the tunnel (never a Python repr); a caller that goes away is
logged as CANCELLED, never UNKNOWN."""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
import pytest
from security.procs import Launcher, Proc, no_traceback

from grpctunnel_demo.v1 import echo_pb2

from .stack import ECHO, echo_request, echo_stub

pytestmark = pytest.mark.timeout(90)


def _json_lines(proc: Proc) -> list[dict[str, Any]]:
    """Every line the process wrote, each parsed (any line that is not JSON fails)."""
    parsed = []
    for line in proc.lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"time", "level", "event", "message"} <= set(record), line
        parsed.append(record)
    return parsed


async def test_json_log_lines(launcher: Launcher) -> None:
    backend = await launcher.backend()
    server = await launcher.server("--log-format", "json", "-v")
    exposer = await launcher.exposer(backend, server, "logged", "--log-format", "json", "-v")
    async with echo_stub(server[1]) as stub:
        await stub.Echo(echo_request("hi"), timeout=10)
    call = r'"event": "call".*"code": "OK"'
    await server[0].wait_for(call)
    await exposer.wait_for(call)
    await exposer.stop()
    await server[0].wait_for(r"tunnel closed: logged")

    served = _json_lines(server[0])
    listening = next(r for r in served if r["event"] == "listening")
    assert listening["level"] == "info" and listening["node"]
    opened = next(r for r in served if r["event"] == "tunnel_opened")
    assert opened["tunnel"] == "logged" and opened["peer"].startswith("ipv4:127.0.0.1:")
    assert opened["services"] == [ECHO]
    calls = [r for r in served if r["event"] == "call"]
    assert len(calls) == 1
    assert calls[0]["tunnel"] == "logged"
    assert calls[0]["service"] == ECHO
    assert calls[0]["method"] == f"/{ECHO}/Echo"
    assert calls[0]["code"] == "OK"
    assert calls[0]["level"] == "debug"
    assert isinstance(calls[0]["duration"], float)
    closed = next(r for r in served if r["event"] == "tunnel_closed")
    assert closed["tunnel"] == "logged" and closed["reason"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in served)

    exposed = _json_lines(exposer)
    connected = next(r for r in exposed if r["event"] == "tunnel_connected")
    assert connected["tunnel"] == "logged" and connected["services"] == [ECHO]
    assert [r["tunnel"] for r in exposed if r["event"] == "call"] == ["logged"]
    no_traceback(*launcher.procs)


async def test_call_lines_name_the_tunnel_and_a_caller_gone_is_cancelled(
    launcher: Launcher,
) -> None:
    backend = await launcher.backend()
    server = await launcher.server("-v")
    exposer = await launcher.exposer(backend, server, "plainly", "-v")
    async with echo_stub(server[1]) as stub:
        await stub.Echo(echo_request("hi"), timeout=10)
        # a streaming call the caller abandons halfway
        chat = stub.Chat(timeout=30)
        await chat.write(echo_pb2.EchoRequest(msg="one"))
        assert (await chat.read()).msg == "one"
        chat.cancel()
        # a unary call whose caller's deadline passes while it waits: nothing answers
        # a Collect that is never told the requests are over
        collect = stub.Collect(timeout=0.5)
        await collect.write(echo_pb2.EchoRequest(msg="x"))
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await collect
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    for proc in (server[0], exposer):
        await proc.wait_for(rf"call /{ECHO}/Echo OK [\d.]+ ms via plainly$")
        await proc.wait_for(rf"call /{ECHO}/Chat CANCELLED [\d.]+ ms via plainly$")
        await proc.wait_for(rf"call /{ECHO}/Collect (DEADLINE_EXCEEDED|CANCELLED) ")
        calls = [line for line in proc.lines if " call /" in line]
        assert not [line for line in calls if "UNKNOWN" in line or "<" in line], calls
    no_traceback(*launcher.procs)
