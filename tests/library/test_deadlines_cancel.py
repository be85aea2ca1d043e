"""Deadlines (propagated and enforced on both ends) and cancellation (by the call
object, by cancelling the awaiting task, by the handler aborting)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from grpctunnel_demo.v1 import echo_pb2

from .conftest import Backend, Env, wait

Req = echo_pb2.EchoRequest
Exp = echo_pb2.ExpandRequest


async def test_handler_sees_the_callers_deadline(any_env: Env) -> None:
    reply = await any_env.stub.Echo(Req(msg="deadline"), timeout=5)
    remaining = any_env.probe.time_remaining[-1]
    assert remaining is not None and 4 < remaining <= 5, remaining
    assert float(reply.msg) == remaining
    await any_env.stub.Echo(Req(msg="deadline"))
    assert any_env.probe.time_remaining[-1] is None
    # long deadlines survive grpc-timeout's 8-digit encoding
    await any_env.stub.Echo(Req(msg="deadline"), timeout=3 * 24 * 3600)
    remaining = any_env.probe.time_remaining[-1]
    assert remaining is not None and 3 * 24 * 3600 - 60 < remaining <= 3 * 24 * 3600


async def test_frozen_handler_hits_the_deadline(any_env: Env) -> None:
    timeout = 0.5
    started = time.monotonic()
    call = any_env.stub.Echo(Req(msg="freeze"), timeout=timeout)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    elapsed = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert timeout * 0.9 <= elapsed < timeout * 2, elapsed
    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert call.time_remaining() == 0
    # the handler was cancelled and saw itself cancelled
    await wait(any_env.probe.cancelled.wait())
    assert any_env.probe.context_cancelled == [True]


async def test_deadline_in_the_middle_of_a_stream(env: Env) -> None:
    timeout = 0.5
    started = time.monotonic()
    call = env.stub.Expand(Exp(msg="freeze"), timeout=timeout)
    assert (await call.read()).msg == "first"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < timeout * 2
    await wait(env.probe.cancelled.wait())


async def test_deadline_while_writing_requests(env: Env) -> None:
    call = env.stub.Collect(timeout=0.3)
    await call.write(Req(msg="freeze"))  # the handler freezes on it
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(grpc.aio.AioRpcError):
        await call.write(Req(msg="too late"))
    await wait(env.probe.cancelled.wait())


async def test_call_cancel_cancels_the_remote_handler(any_env: Env) -> None:
    call = any_env.stub.Echo(Req(msg="freeze"))
    await wait(any_env.probe.started.wait())
    assert call.cancel()
    await wait(any_env.probe.cancelled.wait())
    assert any_env.probe.context_cancelled == [True]
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await call.code() == grpc.StatusCode.CANCELLED
    assert (await any_env.stub.Echo(Req(msg="next"))).msg == "next"
    assert any_env.probe.done_callbacks == 1  # the context's done callback ran


async def test_cancel_bidi_call_cancels_handler(env: Env) -> None:
    call = env.stub.Chat()
    await call.write(Req(msg="a"))
    assert (await call.read()).msg == "a"
    await call.write(Req(msg="freeze"))
    await wait(env.probe.started.wait())
    call.cancel()
    await wait(env.probe.cancelled.wait())
    assert await call.code() == grpc.StatusCode.CANCELLED


async def test_cancelling_the_awaiting_task_cancels_the_call(any_env: Env) -> None:
    call = any_env.stub.Echo(Req(msg="freeze"))

    async def caller() -> None:
        await call

    task = asyncio.ensure_future(caller())
    await wait(any_env.probe.started.wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.cancelled()
    assert await call.code() == grpc.StatusCode.CANCELLED
    await wait(any_env.probe.cancelled.wait())


async def test_cancelling_a_task_iterating_a_stream(env: Env) -> None:
    call = env.stub.Expand(Exp(msg="freeze"))
    got: list[str] = []

    async def consume() -> None:
        async for reply in call:
            got.append(reply.msg)

    task = asyncio.ensure_future(consume())
    await wait(env.probe.started.wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.cancelled()
    await wait(env.probe.cancelled.wait())


async def test_wait_for_timeout_cancels_the_call(env: Env) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(env.stub.Echo(Req(msg="freeze")), 0.2)
    await wait(env.probe.cancelled.wait())


async def test_cancelling_task_waiting_for_metadata(env: Env) -> None:
    call = env.stub.Echo(Req(msg="freeze"))
    task = asyncio.ensure_future(call.initial_metadata())
    await wait(env.probe.started.wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait(env.probe.cancelled.wait())
    assert call.cancelled()


async def test_handler_abort_ends_a_bidi_stream(any_env: Env) -> None:
    call = any_env.stub.Chat()
    await call.write(Req(msg="one"))
    assert (await call.read()).msg == "one"
    await call.write(Req(msg="abort:ABORTED"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.ABORTED
    # writing to a finished call raises its status
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.write(Req(msg="more"))
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert await call.code() == grpc.StatusCode.ABORTED


async def test_handler_abort_ends_a_client_stream_being_written(any_env: Env) -> None:
    async def requests():  # type: ignore[no-untyped-def]
        yield Req(msg="abort:CANCELLED")
        # the handler has aborted; this iterator is abandoned, never exhausted
        await asyncio.Event().wait()

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await wait(any_env.stub.Collect(requests()))
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert info.value.details() == "aborted with CANCELLED"


async def test_cancel_before_the_call_could_open(backend: Backend) -> None:
    """A call waiting (wait_for_ready) for a reverse tunnel that never comes can be
    cancelled, and its deadline still applies."""
    pool = backend.handler.key_as_channel("nobody")
    call = pool.unary_unary("/grpctunnel.demo.v1.Echo/Echo")(b"", wait_for_ready=True)
    assert not call.done()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await call.code() == grpc.StatusCode.CANCELLED
    started = time.monotonic()
    deadline = pool.unary_unary("/grpctunnel.demo.v1.Echo/Echo")(
        b"", wait_for_ready=True, timeout=0.2
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await deadline
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.4
