"""The four call kinds through generated stubs, message sizes from zero to 64 MiB, and
the grpc.aio call object API, through forward and reverse tunnels and Go-like pairs."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from grpctunnel import TunnelClientOptions, TunnelServiceHandlerOptions
from grpctunnel.options import TunnelOptions
from grpctunnel_demo.v1 import echo_pb2

from .conftest import ALL_MODES, GRPC_MODES, Env, EnvFactory, payload, wait

Req = echo_pb2.EchoRequest
Exp = echo_pb2.ExpandRequest


# -- the four call kinds ------------------------------------------------------------


async def test_unary(any_env: Env) -> None:
    reply = await any_env.stub.Echo(Req(msg="hello"))
    assert reply == echo_pb2.EchoReply(msg="hello")
    assert any_env.probe.calls == 1


async def test_server_streaming(any_env: Env) -> None:
    replies = [r async for r in any_env.stub.Expand(Exp(msg="m", count=5))]
    assert [(r.msg, r.index) for r in replies] == [("m", i) for i in range(5)]


async def test_client_streaming_with_iterators(any_env: Env) -> None:
    async def agen():  # type: ignore[no-untyped-def]
        for word in ("a", "b", "c"):
            yield Req(msg=word)

    assert (await any_env.stub.Collect(agen())).msg == "a,b,c"
    assert (await any_env.stub.Collect(iter([Req(msg="x"), Req(msg="y")]))).msg == "x,y"
    assert (await any_env.stub.Collect(iter([]))) == echo_pb2.EchoReply(msg="", index=0)


async def test_bidi_ping_pong(any_env: Env) -> None:
    call = any_env.stub.Chat()
    for i in range(4):
        await call.write(Req(msg=f"m{i}"))
        reply = await call.read()
        assert (reply.msg, reply.index) == (f"m{i}", i)
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.read() is grpc.aio.EOF  # stays at EOF
    assert await call.code() == grpc.StatusCode.OK
    assert call.done()


async def test_bidi_with_request_iterator(any_env: Env) -> None:
    requests = [Req(msg=str(i)) for i in range(20)]
    replies = [r.msg async for r in any_env.stub.Chat(iter(requests))]
    assert replies == [str(i) for i in range(20)]


async def test_server_streaming_read_api(any_env: Env) -> None:
    call = any_env.stub.Expand(Exp(msg="r", count=3))
    got = []
    while (msg := await call.read()) is not grpc.aio.EOF:
        got.append(msg.index)
    assert got == [0, 1, 2]
    assert await call.code() == grpc.StatusCode.OK
    assert await call.details() == ""


# -- message sizes ----------------------------------------------------------------------


async def test_zero_length_messages(any_env: Env) -> None:
    # EchoRequest() and EchoReply() serialize to zero bytes
    assert Req().SerializeToString() == b""
    assert await any_env.stub.Echo(Req()) == echo_pb2.EchoReply()
    replies = [r async for r in any_env.stub.Expand(Exp(msg="", count=3))]
    assert [r.index for r in replies] == [0, 1, 2]  # the first reply is zero bytes
    assert (await any_env.stub.Collect(iter([Req(), Req(), Req()]))).index == 3
    assert await any_env.raw("unary_unary", "Echo")(b"") == b""
    chat = any_env.raw("stream_stream", "Chat")(iter([b"", b"x", b""]))
    assert [m async for m in chat] == [b"", b"x", b""]


@pytest.mark.parametrize("mode", ALL_MODES)
async def test_large_messages_are_chunked_and_reassembled(make_env: EnvFactory, mode: str) -> None:
    env = await make_env(mode)
    chunk_limit = env.calling_sessions()[0].conn.max_chunk_size
    big = payload(3 * 1024 * 1024, seed=1)
    assert len(big) > chunk_limit  # it has to travel in several chunks
    assert await env.raw("unary_unary", "Echo")(big) == big

    # several big messages in both directions on one stream, interleaved with small ones
    messages = [payload(3 * 1024 * 1024 - i, seed=i) for i in range(3)] + [b"small"]
    chat = env.raw("stream_stream", "Chat")(iter(messages))
    assert [m async for m in chat] == messages

    # protobuf messages through the generated stub
    text = "é" * (1024 * 1024 + 3)  # 2 MiB and a bit of UTF-8
    assert (await env.stub.Echo(Req(msg=text))).msg == text
    env.assert_idle()


@pytest.mark.parametrize("mode", GRPC_MODES)
async def test_64_mib_message_with_raised_limits(make_env: EnvFactory, mode: str) -> None:
    limit = 65 * 1024 * 1024
    env = await make_env(
        mode,
        handler_options=TunnelServiceHandlerOptions(max_receive_message_length=limit),
        client_options=TunnelClientOptions(max_receive_message_length=limit),
    )
    huge = payload(64 * 1024 * 1024, seed=64)
    reply = await env.raw("unary_unary", "Echo")(huge, timeout=30)
    assert len(reply) == len(huge)
    assert reply == huge


async def test_64_mib_in_a_go_like_pair() -> None:
    """16 KiB chunks and 64 KiB windows: 4096 chunks per message, reassembled intact."""
    from grpctunnel.testing import TunnelPair

    from .conftest import raw_generic_handler

    limit = 65 * 1024 * 1024
    async with TunnelPair(TunnelOptions(max_receive_message_length=limit), extended=False) as p:
        p.server.add_generic_rpc_handlers((raw_generic_handler(),))
        huge = payload(64 * 1024 * 1024, seed=3)
        sink = p.channel.stream_unary("/test.Raw/Sink")
        assert await sink(iter([huge])) == str(len(huge)).encode()


# -- the grpc.aio call API ---------------------------------------------------------------


async def test_unary_call_object(env: Env) -> None:
    call = env.stub.Echo(Req(msg="meta"), timeout=10, metadata=(("x-k", "v"),))
    remaining = call.time_remaining()
    assert remaining is not None and 9 < remaining <= 10
    finished: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    call.add_done_callback(finished.set_result)
    assert (await call).msg == "meta"
    assert await wait(finished) is call
    assert call.done() and not call.cancelled()
    assert await call.code() == grpc.StatusCode.OK
    assert await call.details() == ""
    assert ("x-k", "v") in tuple(await call.initial_metadata())
    assert ("x-trailer", "t") in tuple(await call.trailing_metadata())
    # a callback added after the end still runs
    late: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    call.add_done_callback(late.set_result)
    assert await wait(late) is call
    assert env.stub.Echo(Req()).time_remaining() is None


async def test_client_streaming_write_and_done_writing(env: Env) -> None:
    call = env.stub.Collect()
    for word in ("one", "two"):
        await call.write(Req(msg=word))
    await call.done_writing()
    await call.done_writing()  # idempotent, as in grpc.aio
    assert (await call).msg == "one,two"
    assert await call.code() == grpc.StatusCode.OK
    with pytest.raises(asyncio.InvalidStateError):
        await call.write(Req(msg="late"))


async def test_write_on_call_made_with_an_iterator_is_refused(env: Env) -> None:
    call = env.stub.Collect(iter([Req(msg="a")]))
    with pytest.raises(grpc.aio.UsageError):  # type: ignore[attr-defined]
        await call.write(Req(msg="b"))
    assert (await call).msg == "a"


async def test_cancel_call_object(env: Env) -> None:
    call = env.stub.Chat()
    await call.write(Req(msg="one"))
    assert (await call.read()).msg == "one"
    done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    call.add_done_callback(done.set_result)
    assert call.cancel() is True
    assert call.cancel() is False  # already over
    assert call.cancelled() and call.done()
    assert await call.code() == grpc.StatusCode.CANCELLED
    assert await wait(done) is call
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    unary = env.stub.Echo(Req(msg="wait"))
    await wait(env.probe.started.wait())
    unary.cancel()
    with pytest.raises(asyncio.CancelledError):
        await unary
    assert await unary.code() == grpc.StatusCode.CANCELLED


async def test_metadata_awaitable_before_messages(env: Env) -> None:
    call = env.stub.Expand(Exp(msg="meta", count=2), metadata=(("x-h", "1"),))
    headers = await call.initial_metadata()
    assert ("x-h", "1") in tuple(headers)
    assert [r.index async for r in call] == [0, 1]
    assert ("x-h", "1") in tuple(await call.trailing_metadata())


async def test_many_concurrent_calls_of_every_kind(env: Env) -> None:
    stub = env.stub

    async def one(i: int) -> None:
        kind = i % 4
        if kind == 0:
            assert (await stub.Echo(Req(msg=str(i)))).msg == str(i)
        elif kind == 1:
            assert len([r async for r in stub.Expand(Exp(msg="e", count=i % 7 + 1))]) == i % 7 + 1
        elif kind == 2:
            assert (await stub.Collect(iter([Req(msg="c")] * 3))).index == 3
        else:
            assert [r.msg async for r in stub.Chat(iter([Req(msg="a"), Req(msg="b")]))] == [
                "a",
                "b",
            ]

    await asyncio.gather(*(one(i) for i in range(200)))
    await stub.Echo(Req(msg="barrier"))
    env.assert_idle()
