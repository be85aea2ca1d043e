"""Message size limits, and per-stream flow control: one stalled stream never holds
up the others on the same tunnel."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from grpctunnel import TunnelClientOptions, TunnelServiceHandlerOptions
from grpctunnel.v1.tunnel_pb2 import ServerToClient as S2C
from grpctunnel_demo.v1 import echo_pb2

from .conftest import ALL_MODES, GRPC_MODES, MAIN_MODES, Env, EnvFactory, echo, payload, wait

Req = echo_pb2.EchoRequest
Exp = echo_pb2.ExpandRequest

MiB = 1024 * 1024


@pytest.mark.parametrize("mode", ALL_MODES)
async def test_default_receive_limit_is_4_mib(make_env: EnvFactory, mode: str) -> None:
    env = await make_env(mode)
    # a request too big for the serving side
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.raw("unary_unary", "Echo")(payload(5 * MiB))
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (err.details() or "")
    assert f"{5 * MiB}" in (err.details() or "") and f"{4 * MiB}" in (err.details() or "")
    # a response too big for the calling side
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.raw("unary_unary", "Make")(str(5 * MiB).encode())
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (info.value.details() or "")
    # exactly at the limit is fine, and the tunnel is unharmed
    data = payload(4 * MiB)
    assert await env.raw("unary_unary", "Echo")(data) == data
    assert await echo(env.channel) == "ping"
    await echo(env.channel, "barrier")
    env.assert_idle()


@pytest.mark.parametrize("mode", GRPC_MODES)
async def test_raised_limits(make_env: EnvFactory, mode: str) -> None:
    env = await make_env(
        mode,
        handler_options=TunnelServiceHandlerOptions(max_receive_message_length=8 * MiB),
        client_options=TunnelClientOptions(max_receive_message_length=8 * MiB),
    )
    data = payload(6 * MiB)
    assert await env.raw("unary_unary", "Echo")(data) == data
    assert len(await env.raw("unary_unary", "Make")(str(7 * MiB).encode())) == 7 * MiB


async def test_limit_raised_on_one_end_only(make_env: EnvFactory) -> None:
    env = await make_env(
        "forward",
        handler_options=TunnelServiceHandlerOptions(max_receive_message_length=8 * MiB),
    )
    # the server takes 6 MiB requests ...
    sink = env.raw("stream_unary", "Sink")
    assert await sink(iter([payload(6 * MiB)])) == str(6 * MiB).encode()
    # ... but the client still refuses 6 MiB responses
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.raw("unary_unary", "Make")(str(6 * MiB).encode())
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("mode", GRPC_MODES)
async def test_send_limit(make_env: EnvFactory, mode: str) -> None:
    env = await make_env(
        mode,
        handler_options=TunnelServiceHandlerOptions(max_send_message_length=MiB),
        client_options=TunnelClientOptions(max_send_message_length=MiB),
    )
    calls_before = env.probe.calls
    # the caller refuses to send it
    chat = env.raw("stream_stream", "Chat")()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await chat.write(payload(2 * MiB))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (info.value.details() or "")
    # the handler's side refuses to send a big response
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.raw("unary_unary", "Make")(str(2 * MiB).encode())
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert env.probe.calls == calls_before
    assert await echo(env.channel) == "ping"


# -- flow control -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MAIN_MODES)
async def test_stalled_reader_does_not_block_other_streams(make_env: EnvFactory, mode: str) -> None:
    env = await make_env(mode)
    window = env.calling_sessions()[0].conn.receive_window
    size = 64 * 1024
    count = 3 * window // size + 10  # far more than the window holds
    probe = env.probe
    probe.write_threshold = max(1, window // size // 2)

    stalled = env.stub.Expand(Exp(msg="flow:" + "s" * size, count=count))
    await wait(probe.reached_threshold.wait())  # the handler is writing into the window

    # other streams on the same tunnel go on, big and small
    assert await echo(env.channel, "fast") == "fast"
    chat = [r.msg async for r in env.stub.Chat(iter([Req(msg=str(i)) for i in range(50)]))]
    assert chat == [str(i) for i in range(50)]
    big = payload(3 * MiB)
    assert await env.raw("unary_unary", "Echo")(big) == big

    # the stalled stream is held by its window: its handler cannot have finished
    assert not stalled.done()
    assert not probe.finished.is_set()
    assert probe.written < count
    assert probe.written * size <= 2 * window + 2 * size

    # reading resumes it, intact and in order
    indexes = []
    async for reply in stalled:
        assert len(reply.msg) == size
        indexes.append(reply.index)
    assert indexes == list(range(count))
    assert probe.finished.is_set()
    assert await stalled.code() == grpc.StatusCode.OK


@pytest.mark.parametrize("mode", MAIN_MODES)
async def test_stalled_handler_pushes_back_on_the_writer(make_env: EnvFactory, mode: str) -> None:
    """A handler that does not read its requests: the caller's write() waits for
    credit, while other calls on the tunnel proceed."""
    env = await make_env(mode)
    window = env.serving_sessions()[0].conn.receive_window
    call = env.stub.Collect()
    await call.write(Req(msg="wait"))  # the handler blocks until released
    await wait(env.probe.started.wait())

    chunk = "w" * (64 * 1024)
    total = 3 * window // len(chunk) + 4
    written = 0

    async def writer() -> None:
        nonlocal written
        for _ in range(total):
            await call.write(Req(msg=chunk))
            written += 1
        await call.done_writing()

    task = asyncio.ensure_future(writer())
    # meanwhile the tunnel serves other calls
    for i in range(5):
        assert await echo(env.channel, f"other{i}") == f"other{i}"
    big = payload(2 * MiB)
    assert await env.raw("unary_unary", "Echo")(big) == big
    assert not task.done()  # blocked by the window
    assert written < total

    env.probe.release.set()
    await wait(task)
    reply = await wait(call)
    assert reply.index == total + 1


async def test_write_waiting_for_credit_ends_when_the_call_ends(env: Env) -> None:
    """The handler aborts while the caller's write() waits for flow credit that will
    never come: the write raises the call's status instead of hanging."""
    call = env.stub.Collect()
    await call.write(Req(msg="abort:ABORTED"))
    big = Req(msg="x" * (3 * MiB))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        for _ in range(3):  # more than any window
            await wait(call.write(big))
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert await call.code() == grpc.StatusCode.ABORTED
    await echo(env.channel, "barrier")
    env.assert_idle()


async def test_cancelling_a_blocked_write_cancels_the_call(env: Env) -> None:
    call = env.stub.Collect()
    await call.write(Req(msg="wait"))  # the handler stops reading
    await wait(env.probe.started.wait())
    big = Req(msg="x" * (3 * MiB))

    async def writer() -> None:
        for _ in range(3):  # more than any window
            await call.write(big)

    task = asyncio.ensure_future(writer())
    assert await echo(env.channel, "meanwhile") == "meanwhile"
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.cancelled()
    assert await call.code() == grpc.StatusCode.CANCELLED
    await wait(env.probe.cancelled.wait())
    await echo(env.channel, "barrier")
    env.assert_idle()


@pytest.mark.parametrize("mode", GRPC_MODES)
async def test_many_parallel_big_streams(make_env: EnvFactory, mode: str) -> None:
    env = await make_env(mode)
    messages = [payload(512 * 1024, seed=i) for i in range(4)]

    async def one(i: int) -> None:
        chat = env.raw("stream_stream", "Chat")(iter(messages))
        assert [m async for m in chat] == messages, i

    await wait(asyncio.gather(*(one(i) for i in range(8))), 30)
    await echo(env.channel, "barrier")
    env.assert_idle()


async def test_revision_zero_has_no_window_updates(make_env: EnvFactory) -> None:
    env = await make_env("rev0")
    calling, serving = env.calling_sessions()[0], env.serving_sessions()[0]
    assert calling.conn.revision == 0
    sent: list[str] = []
    take = serving.conn.take_frames

    def spy(*args: object) -> list[object]:
        frames = take(*args)
        # read back from the bytes (a large data frame is taken in its wire form)
        sent.extend(S2C.FromString(f.SerializeToString()).WhichOneof("frame") for f in frames)
        return frames

    serving.conn.take_frames = spy
    data = payload(3 * MiB)
    assert await env.raw("unary_unary", "Echo")(data) == data
    assert "settings" not in sent and "window_update" not in sent
    assert "response_message" in sent and "more_response_data" in sent
