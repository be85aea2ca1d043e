"""The dialling side of tunnels: :class:`PendingChannel` opens a forward tunnel and
gives a channel through it; :class:`ReverseTunnelServer` opens reverse tunnels and
serves the services registered on it to the server it dialled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

import grpc

from grpctunnel import metadata as md
from grpctunnel.calls import CallingSession, unavailable_error
from grpctunnel.channel import SingleSession, TunnelChannel
from grpctunnel.opening import TunnelOpening, calling_session, serving_session
from grpctunnel.options import TunnelClientOptions
from grpctunnel.rpc import tunnel_rpc
from grpctunnel.serving import ServiceRegistrar, ServingSession
from grpctunnel.session import FrameStream, Received, Sent, TunnelClosed
from grpctunnel.v1 import tunnel_pb2, tunnel_pb2_grpc

log = logging.getLogger("grpctunnel")

C2S = tunnel_pb2.ClientToServer
S2C = tunnel_pb2.ServerToClient
R = TypeVar("R")
S = TypeVar("S")


class TunnelRpc(FrameStream[Received, Sent], Protocol[Received, Sent]):
    """The tunnel RPC as the side that dialled it holds it: a grpc.aio stream-stream
    call (or an in-memory stand-in, see ``grpctunnel.testing``): its frames, and
    ending it."""

    def cancel(self) -> bool: ...

    async def done_writing(self) -> None: ...


class _DialledRpc(TunnelRpc[Received, Sent], Protocol[Received, Sent]):
    """What opening a tunnel uses of the grpc.aio call of its RPC."""

    async def initial_metadata(self) -> grpc.aio.Metadata: ...

    def done(self) -> bool: ...

    async def code(self) -> grpc.StatusCode: ...

    async def details(self) -> str: ...

    async def trailing_metadata(self) -> grpc.aio.Metadata: ...


async def _open_tunnel_rpc(
    open_rpc: Callable[..., _DialledRpc[R, S]],
    options: TunnelClientOptions,
    metadata: Iterable[tuple[str, md.MetadataValue]] | None,
    timeout: float | None,
    wait_for_ready: bool | None,
) -> tuple[_DialledRpc[R, S], md.MetadataPairs]:
    """Starts the tunnel RPC and waits for the other side's response headers.

    Raises the RPC's ``AioRpcError`` when the server refuses the tunnel (no tunnel
    service, unauthenticated, unreachable)."""
    sent = (*md.tunnel_open_headers(), *options.metadata, *(metadata or ()))
    call = open_rpc(metadata=sent, wait_for_ready=wait_for_ready)
    try:
        headers = await asyncio.wait_for(call.initial_metadata(), timeout)
    except asyncio.TimeoutError:
        call.cancel()
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            "timed out waiting for the tunnel to open",
            None,
        ) from None
    if call.done():
        code = await call.code()
        details = await call.details()
        raise grpc.aio.AioRpcError(
            code if code != grpc.StatusCode.OK else grpc.StatusCode.UNAVAILABLE,
            headers,
            await call.trailing_metadata(),
            details if code != grpc.StatusCode.OK else "the server ended the tunnel as it opened",
            None,
        )
    return call, tuple(headers)


class ForwardTunnel(SingleSession):
    """A running forward tunnel, as the side that dialled it holds it: runs the
    session, and is the session source of the tunnel's channel (closing the channel
    closes the tunnel)."""

    def __init__(self, session: CallingSession, call: TunnelRpc[S2C, C2S]) -> None:
        super().__init__(session)
        self.call = call
        self.task: asyncio.Task[None] = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self.session.run()
        except TunnelClosed as e:
            log.info("forward tunnel ended: %s", e.details)
            self.call.cancel()
        except asyncio.CancelledError:
            self.call.cancel()
            raise

    async def close(self, grace: float | None) -> None:
        session = self.session
        if grace:
            await session.wait_idle(grace)
        if not session.closed:
            # as grpc.aio's Channel.close(): calls still in progress are cancelled
            session.cancel_calls()
            session.close("channel closed")
            try:
                await self.call.done_writing()
            except Exception:  # the RPC may already be over
                pass
            self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class PendingChannel:
    """Opens a forward tunnel over a ``TunnelServiceStub``.

    ``await PendingChannel(stub).start()`` returns a ``grpc.aio.Channel`` once the
    tunnel is up (the server answered and, with a negotiating server, its settings
    arrived); every call on it goes through that one tunnel to that one server.
    """

    def __init__(
        self, stub: tunnel_pb2_grpc.TunnelServiceStub, options: TunnelClientOptions | None = None
    ) -> None:
        self._stub = stub
        self.options = options or TunnelClientOptions()

    async def start(
        self,
        *,
        metadata: Iterable[tuple[str, md.MetadataValue]] | None = None,
        timeout: float | None = None,
        wait_for_ready: bool | None = None,
    ) -> TunnelChannel:
        """Opens the tunnel; returns its channel once the tunnel is up.

        ``timeout`` bounds the whole opening (connecting, the server's answer, its
        settings): one deadline. Once the server answered, its settings must also come
        within the options' ``establishment_timeout``. Raises ``grpc.aio.AioRpcError``:
        the server's status when it refused the tunnel, DEADLINE_EXCEEDED when the
        tunnel did not open in time."""
        opts = self.options
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        call: _DialledRpc[S2C, C2S]
        rpc, encoded = tunnel_rpc(self._stub, reverse=False)
        call, headers = await _open_tunnel_rpc(rpc, opts, metadata, timeout, wait_for_ready)
        opening = TunnelOpening(headers, "tunnel server", encoded_frames=encoded)
        session = calling_session(call, opening, opts)
        tunnel = ForwardTunnel(session, call)
        limit = opts.establishment_timeout
        if deadline is not None:  # what is left of the one deadline of the opening
            left = max(0.0, deadline - loop.time())
            limit = left if limit is None else min(limit, left)
        if not await session.wait_established(limit):
            error = session.error
            await tunnel.close(None)
            if error is not None and error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise grpc.aio.AioRpcError(
                    error.code,
                    grpc.aio.Metadata(*headers),
                    grpc.aio.Metadata(),
                    error.details,
                    None,
                )
            if call.done() and await call.code() != grpc.StatusCode.OK:
                raise grpc.aio.AioRpcError(
                    await call.code(),
                    grpc.aio.Metadata(*headers),
                    await call.trailing_metadata(),
                    await call.details(),
                    None,
                )
            raise unavailable_error(
                f"the tunnel did not become ready: {session.close_reason or 'tunnel closed'}"
            )
        return TunnelChannel(tunnel)


class ServedTunnel:
    """One reverse tunnel opened by a :class:`ReverseTunnelServer`: runs the session
    that serves the calls coming through it."""

    def __init__(self, session: ServingSession, call: TunnelRpc[C2S, S2C]) -> None:
        self.session = session
        self.call = call
        self.error: TunnelClosed | None = None
        self.task: asyncio.Task[None] = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self.session.run()
        except TunnelClosed as e:
            self.error = e
            log.info("reverse tunnel ended: %s", e.details)
        finally:
            self.call.cancel()

    @property
    def closed(self) -> bool:
        return self.session.closed

    @property
    def server_metadata(self) -> md.MetadataPairs:
        """The response headers the server answered the tunnel with."""
        return self.session.tunnel_metadata

    async def wait_closed(self) -> None:
        """Waits until the tunnel ends, for whatever reason."""
        await asyncio.gather(self.task, return_exceptions=True)

    async def close(self) -> None:
        if not self.session.closed:
            self.session.close("reverse tunnel closed by its client")
            try:
                await self.call.done_writing()
            except Exception:
                pass
        await self.wait_closed()


class ReverseTunnelServer(ServiceRegistrar):
    """Serves services to the server it dials, through reverse tunnels.

    Register services on it as on a ``grpc.aio.Server`` (``register_service`` or any
    generated ``add_XServicer_to_server``), then ``await serve()``: it opens one reverse
    tunnel and returns once the server has accepted it, leaving the tunnel running in
    the background. Call ``serve()`` again for more tunnels, or after one is lost;
    ``wait_closed()`` waits until every tunnel has ended; ``stop()`` ends them.
    """

    def __init__(
        self, stub: tunnel_pb2_grpc.TunnelServiceStub, options: TunnelClientOptions | None = None
    ) -> None:
        super().__init__()
        self._stub = stub
        self.options = options or TunnelClientOptions()
        self._tunnels: set[ServedTunnel] = set()

    @property
    def tunnels(self) -> list[ServedTunnel]:
        return [t for t in self._tunnels if not t.closed]

    async def serve(
        self,
        *,
        metadata: Iterable[tuple[str, md.MetadataValue]] | None = None,
        timeout: float | None = None,
        wait_for_ready: bool | None = None,
    ) -> ServedTunnel:
        """Opens one reverse tunnel; returns once the server accepted it (answered the
        tunnel RPC), within ``timeout`` seconds (None: without limit) or raises
        ``grpc.aio.AioRpcError`` (DEADLINE_EXCEEDED when the server did not answer in
        time, its status when it refused the tunnel). This side has nothing more to
        wait for: it sends the settings, and the server opens calls whenever it wants."""
        opts = self.options
        call: _DialledRpc[C2S, S2C]
        rpc, encoded = tunnel_rpc(self._stub, reverse=True)
        call, headers = await _open_tunnel_rpc(rpc, opts, metadata, timeout, wait_for_ready)
        opening = TunnelOpening(headers, "tunnel server", encoded_frames=encoded)
        session = serving_session(call, opening, opts, self.registry)
        tunnel = ServedTunnel(session, call)
        self._tunnels.add(tunnel)
        tunnel.task.add_done_callback(lambda _: self._tunnels.discard(tunnel))
        return tunnel

    async def wait_closed(self) -> None:
        """Waits until every tunnel opened so far has ended."""
        while self._tunnels:
            await asyncio.gather(*(t.task for t in list(self._tunnels)), return_exceptions=True)

    async def stop(self, grace: float | None = None) -> None:
        """Ends every tunnel (after up to ``grace`` seconds for calls in progress)."""
        if grace:
            await asyncio.gather(*(t.session.wait_idle(grace) for t in list(self._tunnels)))
        await asyncio.gather(*(t.close() for t in list(self._tunnels)), return_exceptions=True)


__all__ = ["ForwardTunnel", "PendingChannel", "ReverseTunnelServer", "ServedTunnel", "TunnelRpc"]
