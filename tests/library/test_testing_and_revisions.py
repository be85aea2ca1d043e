"""grpctunnel.testing.TunnelPair as users would use it for their own servicers (forward,
and reverse: the serving side dials), and protocol revision zero chosen by options on
real forward and reverse tunnels."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from grpctunnel import TunnelClientOptions, TunnelServiceHandlerOptions
from grpctunnel.options import TunnelOptions
from grpctunnel.testing import TunnelPair
from grpctunnel_demo.service import EchoServicer
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

from .conftest import GRPC_MODES, EchoProbeServicer, EnvFactory, payload, wait

Req = echo_pb2.EchoRequest


class Greeter(echo_pb2_grpc.EchoServicer):
    """A user's servicer, written exactly as for a grpc.aio server."""

    async def Echo(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if not request.msg:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "say something")
        user = dict(context.invocation_metadata()).get("user", "stranger")
        await context.send_initial_metadata((("greeted", user),))
        context.set_trailing_metadata((("polite", "yes"),))
        return echo_pb2.EchoReply(msg=f"hello {user}: {request.msg}")

    async def Expand(self, request: Any, context: Any) -> Any:
        for i in range(request.count):
            yield echo_pb2.EchoReply(msg=request.msg, index=i)

    async def Collect(self, request_iterator: Any, context: Any) -> Any:
        return echo_pb2.EchoReply(msg="+".join([r.msg async for r in request_iterator]))

    async def Chat(self, request_iterator: Any, context: Any) -> Any:
        async for r in request_iterator:
            yield echo_pb2.EchoReply(msg=r.msg[::-1])


@pytest.mark.parametrize(("extended", "negotiate"), [(True, True), (False, True), (False, False)])
async def test_tunnel_pair_with_a_users_servicer(extended: bool, negotiate: bool) -> None:
    async with TunnelPair(extended=extended, negotiate=negotiate) as pair:
        echo_pb2_grpc.add_EchoServicer_to_server(Greeter(), pair.server)  # type: ignore[no-untyped-call]
        stub = echo_pb2_grpc.EchoStub(pair.channel)  # type: ignore[no-untyped-call]
        call = stub.Echo(Req(msg="hi"), metadata=(("user", "ann"),))
        assert (await call).msg == "hello ann: hi"
        assert ("greeted", "ann") in list(await call.initial_metadata())
        assert ("polite", "yes") in list(await call.trailing_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Echo(Req())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "say something"
        expanded = [r.index async for r in stub.Expand(echo_pb2.ExpandRequest(msg="x", count=4))]
        assert expanded == [0, 1, 2, 3]
        assert (await stub.Collect(iter([Req(msg="a"), Req(msg="b")]))).msg == "a+b"
        assert [r.msg async for r in stub.Chat(iter([Req(msg="abc")]))] == ["cba"]
        assert pair.calling_session is not None
        assert pair.calling_session.conn.revision == (1 if negotiate else 0)


async def test_tunnel_pair_with_the_demo_servicer_and_options() -> None:
    options = TunnelOptions(max_receive_message_length=6 * 1024 * 1024)
    async with TunnelPair(options, tunnel_metadata=(("name", "t"),)) as pair:
        pair.server.register_service(EchoServicer(), "grpctunnel.demo.v1.Echo")
        stub = echo_pb2_grpc.EchoStub(pair.channel)  # type: ignore[no-untyped-call]
        text = "y" * (5 * 1024 * 1024)
        assert (await stub.Echo(Req(msg=text))).msg == text
        call = stub.Echo(Req(msg="m"), metadata=(("echo-k", "v"),))
        await call
        assert ("echo-k", "v") in list(await call.initial_metadata())


async def test_tunnel_pair_handlers_see_tunnel_metadata() -> None:
    servicer = EchoProbeServicer()
    async with TunnelPair(tunnel_metadata=(("name", "paired"),)) as pair:
        echo_pb2_grpc.add_EchoServicer_to_server(servicer, pair.server)  # type: ignore[no-untyped-call]
        stub = echo_pb2_grpc.EchoStub(pair.channel)  # type: ignore[no-untyped-call]
        assert (await stub.Echo(Req(msg="tunnelmd"))).msg == "paired"


async def test_tunnel_pair_exit_ends_calls_in_progress() -> None:
    servicer = EchoProbeServicer()
    pair = TunnelPair()
    with pytest.raises(RuntimeError):
        pair.channel  # noqa: B018 - not entered yet
    async with pair:
        echo_pb2_grpc.add_EchoServicer_to_server(servicer, pair.server)  # type: ignore[no-untyped-call]
        stub = echo_pb2_grpc.EchoStub(pair.channel)  # type: ignore[no-untyped-call]
        call = stub.Echo(Req(msg="freeze"))
        await servicer.probe.wait_frozen(1)
    with pytest.raises(asyncio.CancelledError):  # closing the channel cancelled it
        await call
    assert await call.code() == grpc.StatusCode.CANCELLED
    await servicer.probe.wait_unfrozen(1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Echo(Req(msg="after"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -- the reverse pair: the serving side dials -------------------------------------------


@pytest.mark.parametrize(("extended", "negotiate"), [(True, True), (False, True), (False, False)])
async def test_reverse_tunnel_pair_with_a_users_servicer(extended: bool, negotiate: bool) -> None:
    async with TunnelPair(extended=extended, negotiate=negotiate, reverse=True) as pair:
        echo_pb2_grpc.add_EchoServicer_to_server(Greeter(), pair.server)  # type: ignore[no-untyped-call]
        stub = echo_pb2_grpc.EchoStub(pair.channel)  # type: ignore[no-untyped-call]
        # the four kinds of call
        call = stub.Echo(Req(msg="hi"), metadata=(("user", "bo"),))
        assert (await call).msg == "hello bo: hi"
        assert ("greeted", "bo") in list(await call.initial_metadata())
        assert ("polite", "yes") in list(await call.trailing_metadata())
        expanded = [r.index async for r in stub.Expand(echo_pb2.ExpandRequest(msg="x", count=3))]
        assert expanded == [0, 1, 2]
        assert (await stub.Collect(iter([Req(msg="a"), Req(msg="b")]))).msg == "a+b"
        chat = stub.Chat()
        await chat.write(Req(msg="abc"))
        assert (await chat.read()).msg == "cba"
        await chat.done_writing()
        assert [r.msg async for r in chat] == []
        # an error status
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Echo(Req())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "say something"
        assert pair.calling_session is not None
        assert pair.calling_session.conn.revision == (1 if negotiate else 0)


async def test_reverse_tunnel_pair_deadline_cancel_and_rich_status() -> None:
    servicer = EchoProbeServicer("dialler")
    probe = servicer.probe
    async with TunnelPair(reverse=True, tunnel_metadata=(("name", "exposed"),)) as pair:
        echo_pb2_grpc.add_EchoServicer_to_server(servicer, pair.server)  # type: ignore[no-untyped-call]
        stub = echo_pb2_grpc.EchoStub(pair.channel)  # type: ignore[no-untyped-call]
        # the accepting side holds the tunnel, with the metadata the dialling side sent
        tunnel = pair.reverse_tunnel
        assert tunnel is not None and not tunnel.closed
        assert tunnel.metadata == (("name", "exposed"),)
        assert (await stub.Echo(Req(msg="whoami"))).msg == "dialler"
        assert (await stub.Echo(Req(msg="tunnelmd"))).msg == ""  # the server sent none
        # a deadline: the caller gets DEADLINE_EXCEEDED, the handler is cancelled
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Echo(Req(msg="freeze"), timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await probe.wait_unfrozen(1)
        assert probe.context_cancelled == [True]
        # cancellation by the caller, in the middle of a stream
        call = stub.Expand(echo_pb2.ExpandRequest(msg="freeze"))
        assert (await call.read()).msg == "first"
        await probe.wait_frozen(2)
        assert tunnel.active_calls == 1
        assert call.cancel()
        await probe.wait_unfrozen(2)
        assert await call.code() == grpc.StatusCode.CANCELLED
        # an error status with details
        code = grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Echo(Req(msg=f"rich:{code.name}"))
        assert info.value.code() == code
        assert info.value.details() == f"rich {code.name}"
        [raw] = [v for k, v in info.value.trailing_metadata() if k == "grpc-status-details-bin"]
        status = status_pb2.Status.FromString(raw)
        assert status.code == code.value[0] and len(status.details) == 1
        assert status.details[0].Is(error_details_pb2.ErrorInfo.DESCRIPTOR)
        assert tunnel.active_calls == 0


async def test_reverse_tunnel_pair_exit_ends_calls_in_progress() -> None:
    servicer = EchoProbeServicer()
    async with TunnelPair(reverse=True) as pair:
        echo_pb2_grpc.add_EchoServicer_to_server(servicer, pair.server)  # type: ignore[no-untyped-call]
        stub = echo_pb2_grpc.EchoStub(pair.channel)  # type: ignore[no-untyped-call]
        call = stub.Echo(Req(msg="freeze"))
        await servicer.probe.wait_frozen(1)
        tunnel = pair.reverse_tunnel
    with pytest.raises(asyncio.CancelledError):  # as with a forward pair
        await call
    assert await call.code() == grpc.StatusCode.CANCELLED
    await servicer.probe.wait_unfrozen(1)
    assert tunnel is not None and tunnel.closed
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Echo(Req(msg="after"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -- revision zero by options on real tunnels ------------------------------------------


@pytest.mark.parametrize("mode", GRPC_MODES)
@pytest.mark.parametrize("side", ["client", "server"])
async def test_revision_zero_by_option(make_env: EnvFactory, mode: str, side: str) -> None:
    env = await make_env(
        mode,
        client_options=TunnelClientOptions(disable_flow_control=side == "client"),
        handler_options=TunnelServiceHandlerOptions(disable_flow_control=side == "server"),
    )
    [calling] = env.calling_sessions()
    assert calling.conn.revision == 0
    stub = env.stub
    assert (await stub.Echo(Req(msg="r0"))).msg == "r0"
    assert len([r async for r in stub.Expand(echo_pb2.ExpandRequest(msg="e", count=3))]) == 3
    assert [r.msg async for r in stub.Chat(iter([Req(msg="c")]))] == ["c"]
    big = payload(3 * 1024 * 1024)
    assert await env.raw("unary_unary", "Echo")(big) == big
    # deadlines and cancellation do not depend on the revision
    call = stub.Echo(Req(msg="freeze"), timeout=0.3)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait(env.probe.cancelled.wait())
    await stub.Echo(Req(msg="barrier"))
    env.assert_idle()
