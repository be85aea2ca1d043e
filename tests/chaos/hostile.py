"""Hostile tunnels, opened beside the good ones while calls flow: raw gRPC streams on
TunnelService/OpenTunnel and OpenReverseTunnel (frames made by hand, as bytes) with wrong or
missing tokens, an authenticated intruder announcing a service or a name that another
credential owns, garbage bytes in place of frames, and a flood of new streams beyond the
per-tunnel limit. Each must end with the status that names its fault."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2

from grpctunnel.v1 import tunnel_pb2

C2S = tunnel_pb2.ClientToServer
S2C = tunnel_pb2.ServerToClient
OPEN_TUNNEL = "/grpctunnel.v1.TunnelService/OpenTunnel"
OPEN_REVERSE = "/grpctunnel.v1.TunnelService/OpenReverseTunnel"
ECHO_SERVICE = "grpctunnel.demo.v1.Echo"
CHAT = f"/{ECHO_SERVICE}/Chat"
WINDOW = 65536
GARBAGE = b"\xff\xff\xff\xff not a frame"
END_TIMEOUT = 15.0  # a hostile tunnel not ended by the server this long after: a failure

Code = grpc.StatusCode


def bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


def announce(name: str, *services: str) -> tuple[tuple[str, str], ...]:
    return (("grpctunnel-name", name), ("grpctunnel-services", ",".join(services)))


async def ended(call: Any) -> tuple[Code, str]:
    """Reads until the server ends the tunnel: its status."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        while await asyncio.wait_for(call.read(), END_TIMEOUT) is not grpc.aio.EOF:  # type: ignore[attr-defined]
            pass
    return await call.code(), await call.details() or ""


class Hostile:
    """The hostile peers, on a channel of their own to the server."""

    def __init__(
        self, address: str, caller_token: str, intruder_token: str, stream_limit: int
    ) -> None:
        self.address = address
        self.caller_token = caller_token
        self.intruder_token = intruder_token
        self.stream_limit = stream_limit
        self.opened = 0  # hostile tunnels opened
        self.refused_streams = 0

    async def __aenter__(self) -> Hostile:
        self.channel = grpc.aio.insecure_channel(self.address)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close(None)

    def _open(self, method: str, *metadata: tuple[str, str]) -> Any:
        self.opened += 1
        return self.channel.stream_stream(method)(metadata=metadata)

    def cases(self) -> dict[str, tuple[Callable[[], Awaitable[tuple[Code, str]]], Code, str]]:
        """Each case: how to run it, and the code and words its status must have."""
        intruder = bearer(self.intruder_token)
        return {
            "forward tunnel, wrong token": (
                lambda: ended(self._open(OPEN_TUNNEL, bearer("not-a-token"))),
                Code.UNAUTHENTICATED,
                "invalid token",
            ),
            "reverse tunnel, wrong token": (
                lambda: ended(
                    self._open(
                        OPEN_REVERSE, bearer("not-a-token"), *announce("chaos", ECHO_SERVICE)
                    )
                ),
                Code.UNAUTHENTICATED,
                "invalid token",
            ),
            "reverse tunnel, no token": (
                lambda: ended(self._open(OPEN_REVERSE, *announce("chaos", ECHO_SERVICE))),
                Code.UNAUTHENTICATED,
                "",
            ),
            "intruder announcing the exposed service": (
                lambda: ended(
                    self._open(OPEN_REVERSE, intruder, *announce("intruder", ECHO_SERVICE))
                ),
                Code.PERMISSION_DENIED,
                f"service {ECHO_SERVICE} belongs to another credential",
            ),
            "intruder announcing the exposer's name": (
                lambda: ended(
                    self._open(OPEN_REVERSE, intruder, *announce("chaos", "intruder.v1.Nothing"))
                ),
                Code.PERMISSION_DENIED,
                "tunnel name 'chaos' belongs to another credential",
            ),
            "forward tunnel, garbage bytes": (
                self._garbage_forward,
                Code.INVALID_ARGUMENT,
                "malformed frame",
            ),
            "reverse tunnel, garbage bytes": (
                self._garbage_reverse,
                Code.INVALID_ARGUMENT,
                "protocol error",
            ),
            "forward tunnel, flood of new streams": (
                self._stream_flood,
                Code.CANCELLED,  # we cancel it once every excess stream was refused
                "",
            ),
        }

    async def _forward(self) -> Any:
        """A forward tunnel opened with the caller's token, settings read."""
        call = self._open(OPEN_TUNNEL, bearer(self.caller_token), ("grpctunnel-negotiate", "on"))
        settings = S2C.FromString(await asyncio.wait_for(call.read(), END_TIMEOUT))
        assert settings.WhichOneof("frame") == "settings", settings
        return call

    async def _garbage_forward(self) -> tuple[Code, str]:
        call = await self._forward()
        await call.write(GARBAGE)
        return await ended(call)

    async def _garbage_reverse(self) -> tuple[Code, str]:
        call = self._open(
            OPEN_REVERSE,
            bearer(self.intruder_token),
            *announce("intruder-garbage", "intruder.v1.Nothing"),
        )
        await asyncio.wait_for(call.initial_metadata(), END_TIMEOUT)
        await call.write(GARBAGE)
        return await ended(call)

    async def _stream_flood(self) -> tuple[Code, str]:
        """Opens 3x the per-tunnel limit of Chat streams that never send a thing; every
        stream beyond the limit must be refused with RESOURCE_EXHAUSTED."""
        call = await self._forward()
        flood = 3 * self.stream_limit
        for sid in range(1, flood + 1):
            opening = tunnel_pb2.NewStream(
                method_name=CHAT,
                initial_window_size=WINDOW,
                protocol_revision=1,  # type: ignore[arg-type]
            )
            await call.write(C2S(stream_id=sid, new_stream=opening).SerializeToString())
        refused = 0
        while refused < flood - self.stream_limit:
            raw = await asyncio.wait_for(call.read(), END_TIMEOUT)
            assert raw is not grpc.aio.EOF, "the flooded tunnel ended"  # type: ignore[attr-defined]
            frame = S2C.FromString(raw)
            if frame.WhichOneof("frame") == "close_stream":
                status = frame.close_stream.status
                assert status.code == Code.RESOURCE_EXHAUSTED.value[0], frame
                assert "too many concurrent streams" in status.message, frame
                refused += 1
        self.refused_streams += refused
        await call.write(
            C2S(stream_id=1, cancel=empty_pb2.Empty()).SerializeToString()
        )  # a slot freed, then the whole tunnel dropped
        call.cancel()
        return await call.code(), ""  # a call cancelled here raises CancelledError on read
