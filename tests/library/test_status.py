"""Status codes and messages, rich error details, unknown methods and raising handlers."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from grpctunnel_demo.v1 import echo_pb2

from .conftest import Env

Req = echo_pb2.EchoRequest

CODES = [c for c in grpc.StatusCode if c != grpc.StatusCode.OK]


async def test_every_status_code_and_message(any_env: Env) -> None:
    for code in CODES:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await any_env.stub.Echo(Req(msg=f"abort:{code.name}"))
        assert info.value.code() == code
        assert info.value.details() == f"aborted with {code.name}"


async def test_status_of_streaming_calls(env: Env) -> None:
    call = env.stub.Expand(echo_pb2.ExpandRequest(msg="abortafter", count=2))
    assert [r.index for r in [await call.read(), await call.read()]] == [0, 1]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert info.value.details() == "stopped after writing"
    assert await call.code() == grpc.StatusCode.ABORTED
    assert await call.details() == "stopped after writing"

    collect = env.stub.Collect(iter([Req(msg="a"), Req(msg="abort:OUT_OF_RANGE")]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE


def _check_rich(err: grpc.aio.AioRpcError, code: grpc.StatusCode) -> None:
    assert err.code() == code
    assert err.details() == f"rich {code.name}"
    values = [v for k, v in err.trailing_metadata() if k == "grpc-status-details-bin"]
    assert len(values) == 1
    status = status_pb2.Status.FromString(values[0])
    assert status.code == code.value[0]
    assert status.message == f"rich {code.name}"
    assert len(status.details) == 1
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "QUOTA" and info.domain == "test.grpctunnel"
    assert dict(info.metadata) == {"limit": "42"}


@pytest.mark.parametrize("command", ["rich", "richstatus"])
async def test_rich_error_details(any_env: Env, command: str) -> None:
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    call = any_env.stub.Echo(Req(msg=f"{command}:{code.name}"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    _check_rich(info.value, code)
    if command == "rich":
        assert ("x-other", "kept") in list(info.value.trailing_metadata())
    # what users of grpcio-status do with it
    status = await rpc_status.aio.from_call(call)
    assert status is not None and status.code == code.value[0] and len(status.details) == 1


async def test_rich_details_in_a_streaming_call(env: Env) -> None:
    call = env.stub.Chat(iter([Req(msg="ok"), Req(msg="rich:PERMISSION_DENIED")]))
    assert (await call.read()).msg == "ok"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    _check_rich(info.value, grpc.StatusCode.PERMISSION_DENIED)


async def test_set_code_without_abort(any_env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await any_env.stub.Echo(Req(msg="setcode:FAILED_PRECONDITION"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == "set FAILED_PRECONDITION"
    assert ("x-set", "FAILED_PRECONDITION") in list(info.value.trailing_metadata())
    # a streaming handler that sets a code after its replies
    call = any_env.stub.Expand(echo_pb2.ExpandRequest(msg="setcode:NOT_FOUND", count=2))
    assert [(await call.read()).index, (await call.read()).index] == [0, 1]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_zero_and_negative_timeouts(any_env: Env) -> None:
    for timeout in (0, -1, 1e-6):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await any_env.stub.Echo(Req(msg="freeze"), timeout=timeout)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await any_env.stub.Echo(Req(msg="fine"))).msg == "fine"


async def test_unknown_method_and_service(any_env: Env) -> None:
    for method in ("/grpctunnel.demo.v1.Echo/Nope", "/no.such.Service/Method"):
        call = any_env.channel.unary_unary(method)(b"")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert method in (info.value.details() or "")
    stream = any_env.channel.stream_stream("/no.such.Service/Stream")()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream.read()
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # the tunnel is unaffected
    assert (await any_env.stub.Echo(Req(msg="after"))).msg == "after"


async def test_handler_raising_is_unknown(any_env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await any_env.stub.Echo(Req(msg="raise"))
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert "handler exploded" in (info.value.details() or "")
    chat = any_env.stub.Chat(iter([Req(msg="fine"), Req(msg="raise")]))
    assert (await chat.read()).msg == "fine"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await chat.read()
    assert info.value.code() == grpc.StatusCode.UNKNOWN


async def test_malformed_method_name_is_refused_locally(env: Env) -> None:
    """Never sent (an empty method name crashes a Go server): the call fails at once
    with a grpc error, as any grpc.aio call does, and the tunnel is unaffected."""
    for bad in ("", "nope", "/only-service", "/a/b/c"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await env.channel.unary_unary(bad)(b"", timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "/package.Service/Method" in (info.value.details() or "")
        call = env.channel.stream_stream(bad)()
        with pytest.raises(grpc.aio.AioRpcError):
            await call.read()
    assert env.probe.calls == 0
    assert (await env.stub.Echo(Req(msg="still fine"))).msg == "still fine"
    env.assert_idle()
