"""Event-loop hygiene: synchronous servicer methods run in a thread pool (as grpc.aio runs
them), with a context that works from their thread, so that one blocking method cannot
stall every tunnel of the process; and any number of readers may wait on one call, on
either side, none missing its wake-up.

Before: a synchronous method ran on the event loop (``test_a_blocking_sync_method...``
saw its own tunnel frozen: "not released"), its context's ``abort()`` was a coroutine
never awaited, ``is_active()`` did not exist; a second concurrent ``read()`` replaced the
first one's wake-up, and the first waited for ever."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import grpctunnel
from grpctunnel_demo.v1 import echo_pb2

from .conftest import Env, echo, wait

SYNC = "test.Sync"


class SyncMethods:
    """Synchronous raw-bytes methods, and threading events to watch them by."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.started = threading.Event()
        self.spun_out = threading.Event()
        self.threads: list[str] = []
        self.seen: dict[str, Any] = {}

    def block(self, request: bytes, context: Any) -> bytes:
        self.threads.append(threading.current_thread().name)
        self.started.set()
        return b"released" if self.released.wait(10) else b"not released"

    def context(self, request: bytes, context: Any) -> bytes:
        context.send_initial_metadata((("x-header", "h"),))
        context.set_trailing_metadata((("x-trailer", "t"),))
        self.seen["remaining"] = context.time_remaining()
        self.seen["tunnel"] = grpctunnel.tunnel_metadata(context)
        self.seen["invocation"] = tuple(context.invocation_metadata())
        self.seen["active"] = context.is_active()
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "aborted from a thread")
        raise AssertionError("abort returned")  # pragma: no cover

    def set_code(self, request: bytes, context: Any) -> bytes:
        context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
        context.set_details("set from a thread")
        return b""

    def count(self, requests: Iterator[bytes], context: Any) -> bytes:
        return str(sum(1 for _ in requests)).encode()

    def repeat(self, request: bytes, context: Any) -> Iterator[bytes]:
        for _ in range(int(request)):
            yield request

    def spin(self, request: bytes, context: Any) -> bytes:
        self.started.set()
        while context.is_active():
            threading.Event().wait(0.01)  # a thread that cannot be interrupted
        self.spun_out.set()
        return b""

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            SYNC,
            {
                "Block": grpc.unary_unary_rpc_method_handler(self.block),
                "Context": grpc.unary_unary_rpc_method_handler(self.context),
                "SetCode": grpc.unary_unary_rpc_method_handler(self.set_code),
                "Count": grpc.stream_unary_rpc_method_handler(self.count),
                "Repeat": grpc.unary_stream_rpc_method_handler(self.repeat),
                "Spin": grpc.unary_unary_rpc_method_handler(self.spin),
            },
        )


def serving_side(env: Env) -> Any:
    """Where the far side's services are registered (a handler, a reverse server, a
    pair's server)."""
    if env.mode == "forward":
        assert env.backend is not None
        return env.backend.handler
    if env.mode == "reverse":
        return env.rts
    assert env.pair is not None
    return env.pair.server


@pytest.fixture
def sync_env(env: Env) -> tuple[Env, SyncMethods]:
    methods = SyncMethods()
    serving_side(env).add_generic_rpc_handlers((methods.handler(),))
    return env, methods


async def test_a_blocking_sync_method_does_not_stall_the_tunnel(
    sync_env: tuple[Env, SyncMethods],
) -> None:
    env, methods = sync_env
    blocked = asyncio.ensure_future(env.channel.unary_unary(f"/{SYNC}/Block")(b""))
    await wait(asyncio.to_thread(methods.started.wait, 10))
    assert await wait(echo(env.channel, "meanwhile")) == "meanwhile"  # the loop runs on
    methods.released.set()
    assert await wait(blocked) == b"released"
    assert methods.threads and methods.threads[0] != threading.main_thread().name


async def test_the_context_works_from_the_thread(sync_env: tuple[Env, SyncMethods]) -> None:
    env, methods = sync_env
    call = env.channel.unary_unary(f"/{SYNC}/Context")(
        b"", timeout=30, metadata=(("x-asked", "a"),)
    )
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await wait(call)
    assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert failed.value.details() == "aborted from a thread"
    assert ("x-header", "h") in tuple(await call.initial_metadata())
    assert ("x-trailer", "t") in tuple(await call.trailing_metadata())
    remaining = methods.seen["remaining"]
    assert remaining is not None and 0 < remaining <= 30
    assert ("x-asked", "a") in methods.seen["invocation"]
    assert methods.seen["active"] is True
    if env.mode == "go":
        assert ("name", "pair") in methods.seen["tunnel"]

    with pytest.raises(grpc.aio.AioRpcError) as set_code:
        await wait(env.channel.unary_unary(f"/{SYNC}/SetCode")(b""))
    assert set_code.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert set_code.value.details() == "set from a thread"


async def test_sync_streaming_methods(sync_env: tuple[Env, SyncMethods]) -> None:
    env, _ = sync_env
    counted = await wait(env.channel.stream_unary(f"/{SYNC}/Count")(iter([b"a"] * 300)))
    assert counted == b"300"
    repeated = [r async for r in env.channel.unary_stream(f"/{SYNC}/Repeat")(b"200")]
    assert repeated == [b"200"] * 200


async def test_a_cancelled_sync_method_sees_it(sync_env: tuple[Env, SyncMethods]) -> None:
    env, methods = sync_env
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await wait(env.channel.unary_unary(f"/{SYNC}/Spin")(b"", timeout=0.5))
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await wait(asyncio.to_thread(methods.spun_out.wait, 10))
    assert await echo(env.channel, "still up") == "still up"


async def test_two_readers_of_one_call_are_both_woken(env: Env) -> None:
    """Calling side: two tasks read one stream-stream call at once."""
    call = env.stub.Chat()
    first = asyncio.ensure_future(call.read())
    second = asyncio.ensure_future(call.read())
    await asyncio.sleep(0)  # both reads are now waiting (no message can have come yet)
    await call.write(echo_pb2.EchoRequest(msg="a"))
    await call.write(echo_pb2.EchoRequest(msg="b"))
    got = await wait(asyncio.gather(first, second))
    assert sorted(r.msg for r in got) == ["a", "b"]
    third = asyncio.ensure_future(call.read())
    fourth = asyncio.ensure_future(call.read())
    await asyncio.sleep(0)
    await call.done_writing()  # the call ends: every reader waiting sees it
    assert await wait(asyncio.gather(third, fourth)) == [grpc.aio.EOF] * 2  # type: ignore[attr-defined]


async def test_two_readers_of_one_request_stream_are_both_woken(env: Env) -> None:
    """Serving side: a handler reads its requests from two tasks at once."""

    reading = asyncio.Event()

    async def pair_up(requests: Any, context: Any) -> bytes:
        both = asyncio.gather(context.read(), context.read())
        reading.set()  # both reads wait before the first request is even sent
        a, b = await both
        return b"+".join(sorted((a, b)))

    serving_side(env).add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Readers", {"Pair": grpc.stream_unary_rpc_method_handler(pair_up)}
            ),
        )
    )
    call = env.channel.stream_unary("/test.Readers/Pair")(timeout=10)
    await wait(reading.wait())
    await call.write(b"x")
    await call.write(b"y")
    await call.done_writing()
    assert await wait(call) == b"x+y"
