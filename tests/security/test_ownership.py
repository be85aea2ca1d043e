"""A service belongs to whoever exposes it first, against real processes: the impostor
attack of a second credential refused, every call reaching the owner, sharing by the
token file's say, pins to tunnels that do not own a service, the owner's grace period,
the same rules for a client of the library, and single-token mode unchanged. And the
fence of instances: an exposer that was frozen and replaced never wins its name back."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import grpc
import pytest

from grpctunnel import ReverseTunnelServer, TunnelClientOptions, TunnelServiceStub
from grpctunnel.gateway import announce_metadata
from grpctunnel.gateway.auth import bearer_metadata
from grpctunnel_demo.service import EchoServicer
from grpctunnel_demo.v1 import echo_pb2_grpc

from .procs import Launcher, assert_failure, no_traceback, run_cli

pytestmark = pytest.mark.timeout(90)

ECHO = "grpctunnel.demo.v1.Echo"
RELAYED = rf"/{ECHO}/Echo OK"  # an exposer's -v line for each call it relayed


def _tokens(token_file: Any, **groups: str) -> str:
    """billing and device may expose (not call), ops may only call, as in the attack."""
    billing: dict[str, Any] = {"name": "billing", "token": "t-billing", "call": False}
    device: dict[str, Any] = {"name": "device", "token": "t-device", "call": False}
    if "billing" in groups:
        billing["group"] = groups["billing"]
    if "device" in groups:
        device["group"] = groups["device"]
    ops = {"name": "ops", "token": "t-ops", "expose": False}
    return str(token_file(billing, device, ops))


async def _calls(address: str, n: int, *extra: str, token: str = "t-ops") -> list[Any]:
    base = ("call", "-s", address, "Echo/Echo", "--timeout", "10", "--token", token, *extra)
    return await asyncio.gather(*(run_cli(*base, f'{{"msg": "{i}"}}') for i in range(n)))


async def test_another_credential_cannot_take_an_owned_service(
    launcher: Launcher, token_file: Any
) -> None:
    tokens = _tokens(token_file)
    billing_backend = await launcher.backend()
    impostor_backend = await launcher.backend()
    server = await launcher.server("--token-file", tokens)
    proc, address = server
    owner = await launcher.exposer(billing_backend, server, "billing", "--token", "t-billing", "-v")

    mark = proc.mark()
    impostor = await run_cli(
        "expose", impostor_backend, "--to", address, "--name", "device-17", "--token", "t-device"
    )
    assert_failure(impostor, 1, f"PERMISSION_DENIED: service {ECHO} belongs to another credential")
    assert proc.count(r"tunnel opened: device-17", after=mark) == 0, proc.output
    await proc.wait_for(rf"refused reverse tunnel from .*service {ECHO} belongs", after=mark)

    relayed = owner.mark()
    for i, result in enumerate(await _calls(address, 6)):
        assert (result.returncode, result.stdout) == (0, f'{{"msg":"{i}"}}\n'), result
    await owner.wait_count(RELAYED, 6, after=relayed)  # every call, request data included

    # the device is welcome with a service of its own, and a pin to it finds no Echo there
    await launcher.exposer(
        impostor_backend, server, "device-17", "--token", "t-device", "--service", "acme.v1.Device"
    )
    pinned = await _calls(address, 1, "-H", "grpctunnel-tunnel: device-17")
    assert_failure(
        pinned[0], 64 + 14, f"no tunnel exposes service {ECHO} through tunnel 'device-17'"
    )
    no_traceback(proc, owner)


async def test_a_device_on_the_library_is_held_to_the_same_rule(
    launcher: Launcher, token_file: Any
) -> None:
    """Ownership holds for any client that sends the announce headers, not only expose."""
    tokens = _tokens(token_file)
    backend = await launcher.backend()
    server = await launcher.server("--token-file", tokens)
    await launcher.exposer(backend, server, "billing", "--token", "t-billing")
    channel = grpc.aio.insecure_channel(server[1])
    try:
        device = ReverseTunnelServer(
            TunnelServiceStub(channel),
            TunnelClientOptions(
                metadata=(*announce_metadata("device-17", [ECHO]), *bearer_metadata("t-device"))
            ),
        )
        echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), device)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await device.serve(timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.details() == f"service {ECHO} belongs to another credential"
    finally:
        await channel.close()


async def test_a_group_shares_its_services(launcher: Launcher, token_file: Any) -> None:
    tokens = _tokens(token_file, billing="payments", device="payments")
    backend_a, backend_b = await launcher.backend(), await launcher.backend()
    server = await launcher.server("--token-file", tokens)
    a = await launcher.exposer(backend_a, server, "billing", "--token", "t-billing", "-v")
    b = await launcher.exposer(backend_b, server, "device-17", "--token", "t-device", "-v")
    marks = a.mark(), b.mark()
    for result in await _calls(server[1], 8):
        assert result.returncode == 0, result
    # balanced over both: each relayed some, all were relayed
    assert a.count(RELAYED, after=marks[0]) > 0 and b.count(RELAYED, after=marks[1]) > 0
    await asyncio.sleep(0)  # let the last log lines arrive
    assert a.count(RELAYED, after=marks[0]) + b.count(RELAYED, after=marks[1]) <= 8


async def test_credentials_that_both_list_a_service_share_it(
    launcher: Launcher, token_file: Any
) -> None:
    tokens = token_file(
        {"name": "a", "token": "t-a", "call": False, "expose_services": [ECHO]},
        {"name": "b", "token": "t-b", "call": False, "expose_services": [ECHO]},
        {"name": "c", "token": "t-c", "call": False},
    )
    backend = await launcher.backend()
    server = await launcher.server("--token-file", tokens)
    await launcher.exposer(backend, server, "a", "--token", "t-a")
    await launcher.exposer(backend, server, "b", "--token", "t-b")
    refused = await run_cli("expose", backend, "--to", server[1], "--name", "c", "--token", "t-c")
    assert_failure(refused, 1, f"service {ECHO} belongs to another credential")


async def test_the_owner_gets_its_service_back_within_the_grace_period(
    launcher: Launcher, token_file: Any
) -> None:
    tokens = _tokens(token_file)
    backend = await launcher.backend()
    server = await launcher.server("--token-file", tokens, "--service-grace", "3")
    proc, address = server
    owner = await launcher.exposer(backend, server, "billing", "--token", "t-billing")
    mark = proc.mark()
    await owner.kill()
    await proc.wait_for(r"tunnel closed: billing", after=mark)

    # within the grace: the device is still refused, the owner comes back
    refused = await run_cli(
        "expose", backend, "--to", address, "--name", "device-17", "--token", "t-device"
    )
    assert_failure(refused, 1, f"service {ECHO} belongs to another credential")
    back = await launcher.exposer(backend, server, "billing", "--token", "t-billing")
    for result in await _calls(address, 2):
        assert result.returncode == 0, result

    # once the owner has been gone for longer than the grace, the service is free
    mark = proc.mark()
    await back.kill()
    await proc.wait_for(r"tunnel closed: billing", after=mark)
    claimed = None
    for _ in range(40):  # bounded: the grace is 3 s, each try takes a fraction of that
        attempt = await launcher.start(
            "expose", backend, "--to", address, "--name", "device-17", "--token", "t-device"
        )
        outcome = await attempt.wait_for(r"connected to|refused the tunnel", timeout=20)
        if "connected to" in outcome.group(0):
            claimed = attempt
            break
        await attempt.wait_exit()
    assert claimed is not None, "the service was never freed after the grace period"
    for result in await _calls(address, 2):
        assert result.returncode == 0, result


async def test_single_token_mode_is_unchanged(launcher: Launcher) -> None:
    backend_a, backend_b = await launcher.backend(), await launcher.backend()
    server = await launcher.server("--token", "s3cret")
    a = await launcher.exposer(backend_a, server, "one", "--token", "s3cret", "-v")
    b = await launcher.exposer(backend_b, server, "two", "--token", "s3cret", "-v")
    marks = a.mark(), b.mark()
    for result in await _calls(server[1], 8, token="s3cret"):
        assert result.returncode == 0, result
    assert a.count(RELAYED, after=marks[0]) > 0 and b.count(RELAYED, after=marks[1]) > 0


async def test_a_frozen_and_replaced_exposer_never_wins_its_name_back(
    launcher: Launcher, token_file: Any
) -> None:
    """The fence: an exposer cut off (frozen here) long enough for the server to drop it,
    then replaced by a newer instance, comes back and is refused: it stops and says so,
    and calls keep reaching the newer one."""
    tokens = _tokens(token_file)
    backend = await launcher.backend()
    server = await launcher.server(
        "--token-file", tokens, "--keepalive-interval", "0.5", "--keepalive-timeout", "0.5"
    )
    proc, address = server
    old = await launcher.exposer(
        backend, server, "billing", "--token", "t-billing",
        "--keepalive-interval", "0.5", "--keepalive-timeout", "0.5",
    )  # fmt: skip
    mark = proc.mark()
    old.signal(signal.SIGSTOP)
    await proc.wait_for(r"tunnel closed: billing", after=mark)  # the server gave up on it
    new = await launcher.exposer(backend, server, "billing", "--token", "t-billing", "-v")

    old.signal(signal.SIGCONT)  # it finds its connection gone, and dials again
    assert await old.wait_exit() == 1, old.output
    assert "newer" in old.output and "stops" in old.output, old.output
    relayed = new.mark()
    for result in await _calls(address, 4):
        assert result.returncode == 0, result
    await new.wait_count(RELAYED, 4, after=relayed)
    assert new.running
    no_traceback(proc, new)
