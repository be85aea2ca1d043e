"""Bearer tokens and their rights (grpctunnel.gateway.auth), and the interceptor on a real
grpc.aio server."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from grpctunnel import (
    PendingChannel,
    TunnelServiceHandler,
    TunnelServiceStub,
    add_TunnelServiceServicer_to_server,
)
from grpctunnel.gateway.auth import (
    AuthConfigError,
    AuthInterceptor,
    Grant,
    TokenAuthority,
    bearer_metadata,
    check,
)
from grpctunnel_demo.service import EchoServicer
from grpctunnel_demo.v1 import echo_pb2, echo_pb2_grpc

ECHO = "/grpctunnel.demo.v1.Echo/Echo"
OPEN = "/grpctunnel.v1.TunnelService/OpenTunnel"
OPEN_REVERSE = "/grpctunnel.v1.TunnelService/OpenReverseTunnel"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text)
    return path


def test_single_token_has_every_right() -> None:
    authority = TokenAuthority.single("s3cret")
    ok = bearer_metadata("s3cret")
    assert check(authority, ECHO, ok) is None
    assert check(authority, OPEN, ok) is None
    assert check(authority, OPEN_REVERSE, ok) is None


def test_missing_and_wrong_tokens_are_unauthenticated() -> None:
    authority = TokenAuthority.single("s3cret")
    code, details = check(authority, ECHO, ()) or (None, "")
    assert code == grpc.StatusCode.UNAUTHENTICATED and "missing credentials" in details
    code, details = check(authority, ECHO, bearer_metadata("nope")) or (None, "")
    assert code == grpc.StatusCode.UNAUTHENTICATED and details == "invalid token"
    code, _ = check(authority, ECHO, (("authorization", "Basic s3cret"),)) or (None, "")
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_health_is_public() -> None:
    assert check(TokenAuthority.single("x"), "/grpc.health.v1.Health/Check", ()) is None


def test_token_file_rights(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        json.dumps(
            {
                "tokens": [
                    {"name": "agent", "token": "a", "call": False, "expose_names": ["agent-1"]},
                    {
                        "name": "ops",
                        "token": "o",
                        "expose": False,
                        "call": ["grpctunnel.demo.v1.Echo"],
                    },
                ]
            }
        ),
    )
    authority = TokenAuthority.from_file(path)
    agent, ops = bearer_metadata("a"), bearer_metadata("o")
    assert check(authority, OPEN_REVERSE, agent) is None
    assert (check(authority, ECHO, agent) or (None,))[0] == grpc.StatusCode.PERMISSION_DENIED
    assert (check(authority, OPEN, agent) or (None,))[0] == grpc.StatusCode.PERMISSION_DENIED
    assert check(authority, ECHO, ops) is None
    assert check(authority, OPEN, ops) is None
    code, details = check(authority, "/other.Svc/M", ops) or (None, "")
    assert code == grpc.StatusCode.PERMISSION_DENIED and "other.Svc" in details
    assert (check(authority, OPEN_REVERSE, ops) or (None,))[0] == grpc.StatusCode.PERMISSION_DENIED
    grant = authority.authenticate(agent)
    assert grant is not None
    assert grant.may_expose_as("agent-1", ["x.Y"]) is None
    assert "may not expose under the name" in (grant.may_expose_as("agent-2", ["x.Y"]) or "")


def test_plain_token_file(tmp_path: Path) -> None:
    authority = TokenAuthority.from_file(write(tmp_path, "  tok3n\n"))
    assert authority.authenticate(bearer_metadata("tok3n")) == Grant(name="token", may_admin=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("two tokens", "expected one token"),
        ("{not json", "not valid JSON"),
        ('{"tokens": []}', "non-empty 'tokens' list"),
        ('{"tokens": [{"token": ""}]}', "'token' must be a non-empty string"),
        ('{"tokens": [{"token": "a", "colour": 1}]}', "unknown keys"),
        ('{"tokens": [{"token": "a", "call": "yes"}]}', "expected a list of names"),
        ('{"tokens": [{"token": "a", "max_tunnels": 0}]}', "positive integer"),
    ],
)
def test_malformed_token_files_say_where(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AuthConfigError, match=message):
        TokenAuthority.from_file(write(tmp_path, text))


async def test_interceptor_guards_tunnels_and_calls() -> None:
    handler = TunnelServiceHandler()
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), handler)
    server = grpc.aio.server(interceptors=[AuthInterceptor(TokenAuthority.single("s3cret"))])
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)
    add_TunnelServiceServicer_to_server(handler.service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = echo_pb2_grpc.EchoStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.Echo(echo_pb2.EchoRequest(msg="x"), timeout=10)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = await stub.Echo(
            echo_pb2.EchoRequest(msg="x"), metadata=bearer_metadata("s3cret"), timeout=10
        )
        assert reply.msg == "x"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await PendingChannel(TunnelServiceStub(channel)).start(timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        tunnel = await PendingChannel(TunnelServiceStub(channel)).start(
            metadata=bearer_metadata("s3cret"), timeout=10
        )
        assert (
            await echo_pb2_grpc.EchoStub(tunnel).Echo(echo_pb2.EchoRequest(msg="t"), timeout=10)
        ).msg == "t"
        await tunnel.close()
    finally:
        await channel.close()
        await server.stop(None)


async def test_handler_hooks_refuse_tunnels_and_calls_inside_them() -> None:
    from grpctunnel import ReverseTunnelServer, TunnelClientOptions, TunnelServiceHandlerOptions
    from grpctunnel.metadata import first_value

    def accept(kind: str, metadata: object, peer: str) -> tuple[grpc.StatusCode, str] | None:
        if kind == "reverse" and first_value(metadata, "who") != "agent":  # type: ignore[arg-type]
            return grpc.StatusCode.PERMISSION_DENIED, "only agents expose"
        return None

    def authorize(tunnel_metadata: object, method: str) -> tuple[grpc.StatusCode, str] | None:
        if first_value(tunnel_metadata, "who") != "ops":  # type: ignore[arg-type]
            return grpc.StatusCode.PERMISSION_DENIED, f"may not call {method}"
        return None

    handler = TunnelServiceHandler(
        TunnelServiceHandlerOptions(accept_tunnel=accept, authorize_call=authorize)
    )
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), handler)
    server = grpc.aio.server()
    add_TunnelServiceServicer_to_server(handler.service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = TunnelServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ReverseTunnelServer(stub).serve(timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        agent = ReverseTunnelServer(stub, TunnelClientOptions(metadata=(("who", "agent"),)))
        tunnel = await agent.serve(timeout=10)
        await tunnel.close()

        for who, allowed in (("ops", True), ("guest", False)):
            forward = await PendingChannel(stub).start(metadata=(("who", who),), timeout=10)
            echo = echo_pb2_grpc.EchoStub(forward)
            if allowed:
                assert (await echo.Echo(echo_pb2.EchoRequest(msg="x"), timeout=10)).msg == "x"
            else:
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await echo.Echo(echo_pb2.EchoRequest(msg="x"), timeout=10)
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "may not call /grpctunnel.demo.v1.Echo/Echo" in (
                    denied.value.details() or ""
                )
            await forward.close()
    finally:
        await channel.close()
        await server.stop(None)
