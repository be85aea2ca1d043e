"""The dialling side of tunnels: :class:`PendingChannel` opens a forward tunnel and
gives a channel through it; :class:`ReverseTunnelServer` opens reverse tunnels and
serves the services registered on it to the server it dialled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from grpctunnel import metadata as md
from grpctunnel.channel import CallingSession, SingleSession, TunnelChannel, unavailable_error
from grpctunnel.options import TunnelClientOptions, TunnelOpening
from grpctunnel.protocol import CallingConnection, ServingConnection
from grpctunnel.serving import ServiceRegistry, ServingSession
from grpctunnel.session import Session, TunnelClosed
from grpctunnel.v1 import tunnel_pb2_grpc

log = logging.getLogger("grpctunnel")


async def _open_tunnel_rpc(
    multicallable: Any,
    options: TunnelClientOptions,
    metadata: Any,
    timeout: float | None,
    wait_for_ready: bool | None,
) -> tuple[Any, md.MetadataPairs]:
    """Starts the tunnel RPC and waits for the other side's response headers.

    Raises the RPC's ``AioRpcError`` when the server refuses the tunnel (no tunnel
    service, unauthenticated, unreachable)."""
    sent = (*md.tunnel_open_headers(), *options.metadata, *(metadata or ()))
    call = multicallable(metadata=sent, wait_for_ready=wait_for_ready)
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


class _ForwardTunnel(SingleSession):
    """The session source behind a forward tunnel's channel: one session, closed
    with the channel."""

    def __init__(self, session: CallingSession, call: Any) -> None:
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
            for call in list(session.listeners.values()):
                cancel = getattr(call, "cancel", None)
                if cancel is not None:
                    cancel()
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
        metadata: Any = None,
        timeout: float | None = None,
        wait_for_ready: bool | None = None,
    ) -> TunnelChannel:
        opts = self.options
        call, headers = await _open_tunnel_rpc(
            self._stub.OpenTunnel, opts, metadata, timeout, wait_for_ready
        )
        opening = TunnelOpening(headers, "tunnel server")
        conn = CallingConnection(**opts.connection_args(opening))
        session = CallingSession(
            call,
            conn,
            peer=opening.peer,
            tunnel_metadata=opening.metadata,
            binary_base64=opening.extended,
            batch_frames=opening.batches,
            max_send_message_length=opts.max_send_message_length,
        )
        tunnel = _ForwardTunnel(session, call)
        ready = asyncio.ensure_future(session.wait_ready())
        try:
            await asyncio.wait(
                {ready, tunnel.task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not ready.done():
                ready.cancel()
        if not session.is_ready:
            await tunnel.close(None)
            if call.done() and await call.code() != grpc.StatusCode.OK:
                raise grpc.aio.AioRpcError(
                    await call.code(),
                    grpc.aio.Metadata(*headers),
                    await call.trailing_metadata(),
                    await call.details(),
                    None,
                )
            raise unavailable_error(
                f"the tunnel did not become ready: {session.close_reason or 'timed out'}"
            )
        return TunnelChannel(tunnel)


class ServedTunnel:
    """One reverse tunnel opened by a :class:`ReverseTunnelServer`."""

    def __init__(self, session: ServingSession, call: Any) -> None:
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


class ReverseTunnelServer:
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
        self._stub = stub
        self.options = options or TunnelClientOptions()
        self._registry = ServiceRegistry()
        self._tunnels: set[ServedTunnel] = set()

    def register_service(
        self,
        servicer: object,
        service_name: str,
        methods: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._registry.register_service(servicer, service_name, methods)

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._registry.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self._registry.add_registered_method_handlers(service_name, method_handlers)

    @property
    def registry(self) -> ServiceRegistry:
        return self._registry

    @property
    def tunnels(self) -> list[ServedTunnel]:
        return [t for t in self._tunnels if not t.closed]

    async def serve(
        self,
        *,
        metadata: Any = None,
        timeout: float | None = None,
        wait_for_ready: bool | None = None,
    ) -> ServedTunnel:
        """Opens one reverse tunnel; returns once the server accepted it."""
        opts = self.options
        call, headers = await _open_tunnel_rpc(
            self._stub.OpenReverseTunnel, opts, metadata, timeout, wait_for_ready
        )
        opening = TunnelOpening(headers, "tunnel server")
        conn = ServingConnection(**opts.connection_args(opening))
        conn.start()
        session = ServingSession(
            call,
            conn,
            peer=opening.peer,
            tunnel_metadata=opening.metadata,
            binary_base64=opening.extended,
            batch_frames=opening.batches,
            registry=self._registry,
            max_send_message_length=opts.max_send_message_length,
        )
        session.flush()
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


__all__ = ["PendingChannel", "ReverseTunnelServer", "ServedTunnel", "Session"]
