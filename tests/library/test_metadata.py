"""Request metadata, response headers and trailers (on success and on error), -bin
values, reserved headers and tunnel metadata."""

from __future__ import annotations

import grpc
import pytest

import grpctunnel
from grpctunnel import PendingChannel, TunnelClientOptions
from grpctunnel_demo.v1 import echo_pb2

from .conftest import ALL_MODES, Backend, Env, EnvFactory, echo

Req = echo_pb2.EchoRequest

ALL_BYTES = bytes(range(256))
UTF8_BYTES = "ünïcødé ✓".encode()


def _pairs(md: object) -> list[tuple[str, object]]:
    return list(md)  # type: ignore[call-overload]


async def test_request_metadata_reaches_the_handler(any_env: Env) -> None:
    sent = (("x-one", "1"), ("x-multi", "a"), ("x-multi", "b"), ("other", "seen"))
    await any_env.stub.Echo(Req(msg="meta"), metadata=sent)
    seen = any_env.probe.invocation[-1]
    for pair in sent:
        assert pair in seen
    # both values of a repeated key, in order
    assert [v for k, v in seen if k == "x-multi"] == ["a", "b"]


async def test_headers_and_trailers_on_success(any_env: Env) -> None:
    call = any_env.stub.Echo(Req(msg="meta"), metadata=(("x-a", "b"),))
    assert (await call).msg == "meta"
    assert ("x-a", "b") in _pairs(await call.initial_metadata())
    trailers = _pairs(await call.trailing_metadata())
    assert ("x-a", "b") in trailers and ("x-trailer", "t") in trailers


async def test_headers_and_trailers_on_error(any_env: Env) -> None:
    call = any_env.stub.Echo(Req(msg="abort:NOT_FOUND"), metadata=(("x-why", "gone"),))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    err = info.value
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "aborted with NOT_FOUND"
    assert ("x-why", "gone") in _pairs(err.trailing_metadata())
    assert ("x-why", "gone") in _pairs(await call.trailing_metadata())


async def test_headers_sent_then_error_in_streaming_call(any_env: Env) -> None:
    # Chat: "meta" sends headers and a reply, then "abort" ends the call
    call = any_env.stub.Chat(
        iter([Req(msg="meta"), Req(msg="abort:FAILED_PRECONDITION")]),
        metadata=(("x-s", "v"),),
    )
    assert ("x-s", "v") in _pairs(await call.initial_metadata())
    assert (await call.read()).msg == "meta"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ("x-s", "v") in _pairs(info.value.trailing_metadata())
    assert ("x-s", "v") in _pairs(info.value.initial_metadata())


async def test_binary_metadata_with_arbitrary_bytes_between_our_peers(
    make_env: EnvFactory,
) -> None:
    for mode in ("forward", "reverse", "pair"):
        env = await make_env(mode)
        values = (ALL_BYTES, b"", b"\x00\xff", UTF8_BYTES)
        sent = tuple(("x-data-bin", v) for v in values)
        call = env.stub.Echo(Req(msg="meta"), metadata=sent)
        await call
        seen = [v for k, v in env.probe.invocation[-1] if k == "x-data-bin"]
        assert seen == list(values), mode
        headers = [v for k, v in _pairs(await call.initial_metadata()) if k == "x-data-bin"]
        trailers = [v for k, v in _pairs(await call.trailing_metadata()) if k == "x-data-bin"]
        assert headers == list(values), mode
        assert trailers == list(values), mode
        # on an error too
        call = env.stub.Echo(Req(msg="abort:DATA_LOSS"), metadata=sent)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        trailers = [v for k, v in _pairs(info.value.trailing_metadata()) if k == "x-data-bin"]
        assert trailers == list(values), mode


@pytest.mark.parametrize("mode", ["go", "rev0"])
async def test_binary_metadata_with_a_go_peer_is_utf8_only(make_env: EnvFactory, mode: str) -> None:
    env = await make_env(mode)
    call = env.stub.Echo(Req(msg="meta"), metadata=(("x-text-bin", UTF8_BYTES),))
    await call
    assert ("x-text-bin", UTF8_BYTES) in env.probe.invocation[-1]
    assert ("x-text-bin", UTF8_BYTES) in _pairs(await call.initial_metadata())
    assert ("x-text-bin", UTF8_BYTES) in _pairs(await call.trailing_metadata())
    # bytes that are not UTF-8 cannot be carried as text: a clear local error
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.stub.Echo(Req(msg="meta"), metadata=(("x-raw-bin", b"\xff\xfe"),))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "UTF-8" in (info.value.details() or "")
    assert env.probe.calls == 1  # never sent
    # the tunnel is fine afterwards
    assert await echo(env.channel) == "ping"


async def test_reserved_headers_are_not_forwarded(any_env: Env) -> None:
    await any_env.stub.Echo(
        Req(msg="meta"),
        metadata=(("x-ok", "1"), ("grpc-custom", "no"), ("te", "trailers")),
        timeout=30,
    )
    keys = [k for k, _ in any_env.probe.invocation[-1]]
    assert "x-ok" in keys
    assert "grpc-custom" not in keys and "te" not in keys
    # grpc-timeout is consumed as the deadline, not shown as metadata (as in grpc.aio)
    assert "grpc-timeout" not in keys


async def test_handler_reads_tunnel_metadata(backend: Backend) -> None:
    options = TunnelClientOptions(metadata=(("name", "alice"), ("x-token", "secret")))
    channel = await PendingChannel(backend.dial(), options).start(metadata=(("extra", "e"),))
    try:
        assert await echo(channel, "tunnelmd") == "alice"
        seen = dict(backend.servicer.probe.tunnel_metadata[-1])
        assert seen["x-token"] == "secret" and seen["extra"] == "e"
        # per-call metadata is separate from tunnel metadata
        await echo(channel, "meta", metadata=(("name", "per-call"),))
        assert ("name", "per-call") in backend.servicer.probe.invocation[-1]
        assert await echo(channel, "tunnelmd") == "alice"
    finally:
        await channel.close()


async def test_tunnel_metadata_outside_a_tunnel_is_empty() -> None:
    assert grpctunnel.tunnel_metadata(object()) == ()


@pytest.mark.parametrize("mode", ALL_MODES)
async def test_many_keys_and_values(make_env: EnvFactory, mode: str) -> None:
    env = await make_env(mode)
    sent = tuple((f"x-k{i}", "v" * i) for i in range(50))
    call = env.stub.Echo(Req(msg="meta"), metadata=sent)
    await call
    headers = _pairs(await call.initial_metadata())
    for pair in sent:
        assert pair in headers
