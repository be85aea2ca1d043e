"""Nothing accumulates: after thousands of calls (successful, cancelled, failed, timed
out) both ends' stream tables are empty, no task is left behind, and memory stays
flat."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import grpc
import pytest

from grpctunnel_demo.v1 import echo_pb2

from .conftest import Env, EnvFactory, echo, payload

Req = echo_pb2.EchoRequest
Exp = echo_pb2.ExpandRequest


async def _expect_code(awaitable: object, code: grpc.StatusCode) -> None:
    try:
        await awaitable  # type: ignore[misc]
    except grpc.aio.AioRpcError as e:
        assert e.code() == code, e
    except asyncio.CancelledError:
        assert code == grpc.StatusCode.CANCELLED
    else:
        pytest.fail(f"expected {code}")


async def _mixed_batch(env: Env, i: int) -> None:
    """About 100 calls of every kind and outcome, concurrently."""
    stub = env.stub
    jobs: list[object] = []
    for j in range(70):
        jobs.append(stub.Echo(Req(msg=f"{i}.{j}")))
    jobs.append(_collect(stub.Expand(Exp(msg="e", count=5)), 5))
    jobs.append(stub.Collect(iter([Req(msg="a")] * 4)))
    jobs.append(_collect(stub.Chat(iter([Req(msg="b")] * 4)), 4))
    for code in ("NOT_FOUND", "INTERNAL", "ABORTED"):
        jobs.append(_expect_code(stub.Echo(Req(msg=f"abort:{code}")), grpc.StatusCode[code]))
    jobs.append(_expect_code(stub.Echo(Req(msg="raise")), grpc.StatusCode.UNKNOWN))
    jobs.append(
        _expect_code(env.channel.unary_unary("/no.Such/Method")(b""), grpc.StatusCode.UNIMPLEMENTED)
    )
    jobs.append(
        _expect_code(
            env.raw("unary_unary", "Echo")(payload(4 * 1024 * 1024 + 1)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
    )
    # cancelled at once, before anything went out
    for _ in range(5):
        call = stub.Echo(Req(msg="freeze"))
        call.cancel()
        jobs.append(_expect_code(call, grpc.StatusCode.CANCELLED))
    # cancelled while its handler runs
    frozen_before = env.probe.frozen
    running = [stub.Echo(Req(msg="freeze")) for _ in range(5)]
    chat = stub.Chat()
    await chat.write(Req(msg="freeze"))
    await env.probe.wait_frozen(frozen_before + 6)
    for call in running:
        call.cancel()
        jobs.append(_expect_code(call, grpc.StatusCode.CANCELLED))
    chat.cancel()
    jobs.append(_expect_code(chat.read(), grpc.StatusCode.CANCELLED))
    # timed out
    for _ in range(3):
        jobs.append(
            _expect_code(
                stub.Echo(Req(msg="freeze"), timeout=0.02), grpc.StatusCode.DEADLINE_EXCEEDED
            )
        )
    await asyncio.gather(*jobs)  # type: ignore[arg-type]


async def _collect(call: object, n: int) -> None:
    assert len([r async for r in call]) == n  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["forward", "reverse", "go", "rev0"])
async def test_no_leaks_after_many_calls(make_env: EnvFactory, mode: str) -> None:
    env = await make_env(mode)
    await echo(env.channel, "warm-up")
    await _mixed_batch(env, -1)
    await echo(env.channel, "barrier")
    env.assert_idle()
    tasks_before = asyncio.all_tasks()

    for i in range(20):  # 20 batches of about 100 calls: over 2000 calls
        await _mixed_batch(env, i)
    # frames are ordered: once a later call completes, every cancel sent before it
    # has reached the far side and its handler has been cancelled
    await echo(env.channel, "barrier")

    env.assert_idle()
    assert env.probe.unfrozen == env.probe.frozen  # every frozen handler was cancelled
    stray = asyncio.all_tasks() - tasks_before
    assert not stray, stray


async def test_memory_stays_flat(make_env: EnvFactory) -> None:
    """Over 5000 calls through a real forward tunnel (tracing makes this the slowest
    test; the stream tables of every mode are checked above)."""
    env = await make_env("forward")
    stub = env.stub

    async def calls(n: int) -> None:
        for start in range(0, n, 50):
            await asyncio.gather(
                *(stub.Echo(Req(msg=f"m{k}")) for k in range(start, min(start + 50, n))),
                _collect(stub.Expand(Exp(msg="x", count=3)), 3),
                _collect(stub.Chat(iter([Req(msg="c")] * 2)), 2),
            )

    await calls(500)  # warm-up: caches, free lists, lazily built structures
    gc.collect()
    tracemalloc.start()
    try:
        await calls(200)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        await calls(5000)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    growth = after - before
    assert growth < 1024 * 1024, f"grew by {growth} bytes over 5000 calls"
    await echo(env.channel, "barrier")
    env.assert_idle()
