"""The accepting side of tunnels: :class:`TunnelServiceHandler`.

It implements the ``TunnelService`` RPCs. For ``OpenTunnel`` it serves the calls that
arrive through the tunnel with the services registered on it (it accepts what
``add_XServicer_to_server`` passes, like a ``grpc.aio.Server``). For
``OpenReverseTunnel`` it keeps the tunnel in a pool so that the server can call the
services the dialling client hosts: ``as_channel()`` balances calls over every live
reverse tunnel, ``key_as_channel(key)`` over those with one affinity key.

Who may open tunnels is decided as each one opens, by the ``accept_tunnel`` hook of
:class:`~grpctunnel.TunnelServiceHandlerOptions`, and which calls may be made inside a
forward tunnel by its ``authorize_call`` hook; :meth:`TunnelServiceHandler.open_tunnels`
lists every accepted tunnel (with the metadata it was opened with) so such a hook can
count tunnels or close one, and :class:`~grpctunnel.gateway.Gateway` wires both hooks to
a :class:`~grpctunnel.gateway.auth.TokenAuthority`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import grpc

from grpctunnel import metadata as md
from grpctunnel.channel import CallingSession, SingleSession, TunnelChannel
from grpctunnel.options import TunnelOpening, TunnelServiceHandlerOptions
from grpctunnel.protocol import CallingConnection, ServingConnection
from grpctunnel.serving import ServiceRegistry, ServingSession
from grpctunnel.session import Session, TunnelClosed
from grpctunnel.v1 import tunnel_pb2_grpc

log = logging.getLogger("grpctunnel")


def _any_tunnel(tunnel: ReverseTunnel) -> bool:
    return True


class ReverseTunnel:
    """One live reverse tunnel, as the accepting server sees it."""

    _ids = itertools.count(1)

    def __init__(self, session: CallingSession) -> None:
        self.id = next(self._ids)
        self.session = session
        self.key: Hashable = None
        self.channel = TunnelChannel(_ReverseTunnelSource(session))

    @property
    def metadata(self) -> md.MetadataPairs:
        """The metadata the client opened the tunnel with."""
        return self.session.tunnel_metadata

    @property
    def peer(self) -> str:
        return self.session.peer

    @property
    def closed(self) -> bool:
        return self.session.closed

    @property
    def active_calls(self) -> int:
        return len(self.session.listeners)

    def metadata_value(self, key: str) -> str | bytes | None:
        return md.first_value(self.metadata, key)

    def __repr__(self) -> str:
        return f"<ReverseTunnel #{self.id} from {self.peer} key={self.key!r}>"


class TunnelRecord:
    """One tunnel RPC the handler accepted, from the moment ``accept_tunnel`` let it in
    until it ends: what admission hooks see of the tunnels already open.

    ``kind`` is "forward" or "reverse"; ``metadata`` what the tunnel was opened with;
    ``labels`` is free for hooks to remember things about the tunnel (who opened it).
    """

    def __init__(self, kind: str, metadata: md.MetadataPairs, peer: str) -> None:
        self.kind = kind
        self.metadata = metadata
        self.peer = peer
        self.labels: dict[str, Any] = {}
        self.session: Session[Any] | None = None
        self.pending_close: tuple[grpc.StatusCode, str] | None = None

    @property
    def closing(self) -> bool:
        """Asked to close, or closed."""
        return self.pending_close is not None or (self.session is not None and self.session.closed)

    def metadata_value(self, key: str) -> str | bytes | None:
        return md.first_value(self.metadata, key)

    def close(self, reason: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        """Ends the tunnel: its RPC ends with ``code`` and ``reason``, its calls fail."""
        if self.pending_close is None:
            self.pending_close = (code, reason)
        if self.session is not None:
            self.session.close(reason, code)

    def __repr__(self) -> str:
        return f"<TunnelRecord {self.kind} from {self.peer}>"


class _ReverseTunnelSource(SingleSession):
    """The channel of one reverse tunnel addressed directly."""

    async def close(self, grace: float | None) -> None:
        """Closing one reverse tunnel's channel does not close the tunnel: the client
        that dialled owns it."""


class _ReversePool:
    """The session source of ``as_channel()`` and its kin: the live reverse tunnels
    that ``accepts`` admits, used in turn."""

    def __init__(
        self,
        handler: TunnelServiceHandler,
        accepts: Callable[[ReverseTunnel], bool],
        description: str,
    ) -> None:
        self._handler = handler
        self._accepts = accepts
        self._description = description
        self._turn = 0

    def _tunnels(self) -> list[ReverseTunnel]:
        accepts = self._accepts
        return [t for t in self._handler._reverse if not t.closed and accepts(t)]

    def pick(self) -> CallingSession | None:
        tunnels = self._tunnels()
        if not tunnels:
            return None
        self._turn += 1
        return tunnels[self._turn % len(tunnels)].session

    async def wait(self) -> CallingSession:
        while True:
            session = self.pick()
            if session is not None:
                return session
            await self._handler._reverse_changed.wait()

    def unavailable_details(self) -> str:
        return f"no reverse tunnel is open{self._description}"

    def state(self) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY if self._tunnels() else grpc.ChannelConnectivity.IDLE

    async def close(self, grace: float | None) -> None:
        """The pool's channel is a view: closing it leaves the tunnels open."""


class _Changed:
    """A level-triggered 'something changed' signal for any number of waiters."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()


class _TunnelServicer(tunnel_pb2_grpc.TunnelServiceServicer):
    """The grpc servicer of ``TunnelService``, bound to one handler."""

    def __init__(self, handler: TunnelServiceHandler) -> None:
        self._handler = handler

    async def OpenTunnel(
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:  # type: ignore[override]
        await self._handler._serve_forward(context)

    async def OpenReverseTunnel(
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:  # type: ignore[override]
        await self._handler._serve_reverse(context)


class TunnelServiceHandler:
    """Serves the ``TunnelService``: forward tunnels to the services registered here,
    reverse tunnels into a pool the server can call through.

    Add it to a grpc.aio server with
    ``add_TunnelServiceServicer_to_server(handler.service(), server)``.
    """

    def __init__(self, options: TunnelServiceHandlerOptions | None = None) -> None:
        self.options = options or TunnelServiceHandlerOptions()
        self._registry = ServiceRegistry()
        self._forward: set[ServingSession] = set()
        self._reverse: list[ReverseTunnel] = []
        self._reverse_changed = _Changed()
        self._servicer = _TunnelServicer(self)
        self._records: set[TunnelRecord] = set()
        self._closing = False

    # -- registering services (the grpc.aio.Server surface) -------------------------

    def register_service(
        self,
        servicer: object,
        service_name: str,
        methods: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Serves ``servicer`` through forward tunnels; see
        :meth:`ServiceRegistry.register_service`."""
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

    def service(self) -> tunnel_pb2_grpc.TunnelServiceServicer:
        """The servicer to add with ``add_TunnelServiceServicer_to_server``."""
        return self._servicer

    # -- reverse tunnels --------------------------------------------------------------

    def as_channel(self) -> TunnelChannel:
        """A channel to the services of the clients that opened reverse tunnels; each
        call goes through one live tunnel, in turn. ``channel_ready()`` waits for one."""
        return TunnelChannel(_ReversePool(self, _any_tunnel, ""))

    def key_as_channel(self, key: Hashable) -> TunnelChannel:
        """Like :meth:`as_channel`, but only through tunnels whose affinity key (see
        ``TunnelServiceHandlerOptions.affinity_key``) equals ``key``."""
        return TunnelChannel(_ReversePool(self, lambda t: t.key == key, f" for key {key!r}"))

    def channel_for(
        self, accepts: Callable[[ReverseTunnel], bool], description: str = ""
    ) -> TunnelChannel:
        """A channel balancing over the live reverse tunnels that ``accepts`` admits
        (``description`` completes "no reverse tunnel is open..." when there is none)."""
        return TunnelChannel(_ReversePool(self, accepts, description))

    def all_reverse_tunnels(self) -> list[ReverseTunnel]:
        return [t for t in self._reverse if not t.closed]

    async def wait_for_reverse_tunnel(self) -> ReverseTunnel:
        while True:
            tunnels = self.all_reverse_tunnels()
            if tunnels:
                return tunnels[-1]
            await self._reverse_changed.wait()

    def open_tunnels(self) -> list[TunnelRecord]:
        """Every tunnel accepted and not yet ended, forward and reverse, including
        reverse tunnels still negotiating (not yet in :meth:`all_reverse_tunnels`)."""
        return [r for r in self._records if not r.closing]

    @property
    def forward_tunnels(self) -> int:
        """How many forward tunnels are open (a closed one is not counted, even while
        its RPC is still winding down)."""
        return sum(1 for session in self._forward if not session.closed)

    async def close(self) -> None:
        """Ends every tunnel this handler serves (their calls fail with UNAVAILABLE)."""
        self._closing = True
        sessions: list[Session[Any]] = [*self._forward, *(t.session for t in self._reverse)]
        for session in sessions:
            session.close("tunnel server shutting down")
        for record in list(self._records):  # and those still opening
            record.close("tunnel server shutting down")

    # -- the RPCs ---------------------------------------------------------------------

    def _opening(self, context: grpc.aio.ServicerContext[Any, Any]) -> TunnelOpening:
        return TunnelOpening(tuple(context.invocation_metadata() or ()), context.peer())

    async def _admit(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        kind: str,
        invocation: md.MetadataPairs,
        peer: str,
    ) -> TunnelRecord:
        """Asks ``accept_tunnel``; a refused tunnel ends with its status here. An
        accepted one is recorded at once (no await in between), so that the hook of
        the next tunnel to open sees it."""
        accept = self.options.accept_tunnel
        if accept is not None:
            refusal = accept(kind, invocation, peer)
            if refusal is not None:
                code, details = refusal
                log.info("refused %s tunnel from %s: %s: %s", kind, peer, code.name, details)
                await context.abort(code, details)
        record = TunnelRecord(kind, invocation, peer)
        self._records.add(record)
        return record

    async def _start_session(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        record: TunnelRecord,
        session: Session[Any],
    ) -> None:
        """Ties the session to its record; one closed while it opened ends at once."""
        record.session = session
        if record.pending_close is not None:
            code, reason = record.pending_close
            session.close(reason, code)
            await context.abort(code, reason)

    async def _serve_forward(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "tunnel server shutting down")
        opening = self._opening(context)
        record = await self._admit(context, "forward", opening.metadata, opening.peer)
        try:
            await self._run_forward(context, record, opening)
        finally:
            self._records.discard(record)

    async def _run_forward(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        record: TunnelRecord,
        opening: TunnelOpening,
    ) -> None:
        opts = self.options
        await context.send_initial_metadata(md.tunnel_open_headers())
        conn = ServingConnection(**opts.connection_args(opening))
        conn.start()
        session = ServingSession(
            context,
            conn,
            peer=opening.peer,
            tunnel_metadata=opening.metadata,
            binary_base64=opening.extended,
            batch_frames=opening.batches,
            registry=self._registry,
            max_send_message_length=opts.max_send_message_length,
            authorize_call=opts.authorize_call,
        )
        await self._start_session(context, record, session)
        session.flush()
        self._forward.add(session)
        try:
            await session.run()
        except TunnelClosed as e:
            await _abort_tunnel(context, e)
        finally:
            self._forward.discard(session)

    async def _serve_reverse(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        opts = self.options
        if opts.no_reverse_tunnels:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, "this server does not accept reverse tunnels"
            )
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "tunnel server shutting down")
        opening = self._opening(context)
        record = await self._admit(context, "reverse", opening.metadata, opening.peer)
        try:
            await self._run_reverse(context, record, opening)
        finally:
            self._records.discard(record)

    async def _run_reverse(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        record: TunnelRecord,
        opening: TunnelOpening,
    ) -> None:
        opts = self.options
        await context.send_initial_metadata(md.tunnel_open_headers())
        conn = CallingConnection(**opts.connection_args(opening))
        session = CallingSession(
            context,
            conn,
            peer=opening.peer,
            tunnel_metadata=opening.metadata,
            binary_base64=opening.extended,
            batch_frames=opening.batches,
            max_send_message_length=opts.max_send_message_length,
        )
        await self._start_session(context, record, session)
        tunnel = ReverseTunnel(session)
        run = asyncio.ensure_future(session.run())
        ready = asyncio.ensure_future(session.wait_ready())
        try:
            await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
            if (
                ready.done()
                and not ready.cancelled()
                and ready.exception() is None
                and not session.closed
            ):
                self._add_reverse(tunnel)
            await run
        except TunnelClosed as e:
            await _abort_tunnel(context, e)
        finally:
            ready.cancel()
            if not run.done():
                run.cancel()
            self._remove_reverse(tunnel)

    def _add_reverse(self, tunnel: ReverseTunnel) -> None:
        opts = self.options
        if opts.affinity_key is not None:
            try:
                tunnel.key = opts.affinity_key(tunnel)
            except Exception:
                log.exception("affinity_key raised for %r", tunnel)
        self._reverse.append(tunnel)
        self._reverse_changed.notify()
        log.debug("reverse tunnel opened: %r", tunnel)
        if opts.on_reverse_tunnel_open is not None:
            _call_hook(opts.on_reverse_tunnel_open, tunnel)

    def _remove_reverse(self, tunnel: ReverseTunnel) -> None:
        if tunnel not in self._reverse:
            return
        self._reverse.remove(tunnel)
        self._reverse_changed.notify()
        log.debug("reverse tunnel closed: %r", tunnel)
        if self.options.on_reverse_tunnel_close is not None:
            _call_hook(self.options.on_reverse_tunnel_close, tunnel)


_hook_tasks: set[asyncio.Future[Any]] = set()


def _call_hook(hook: Any, tunnel: ReverseTunnel) -> None:
    try:
        result = hook(tunnel)
        if asyncio.iscoroutine(result):
            task = asyncio.ensure_future(result)
            _hook_tasks.add(task)
            task.add_done_callback(_hook_tasks.discard)
    except Exception:
        log.exception("reverse tunnel callback raised")


async def _abort_tunnel(context: grpc.aio.ServicerContext[Any, Any], error: TunnelClosed) -> None:
    if context.done():
        return
    await context.abort(error.code, error.details)


__all__ = ["ReverseTunnel", "Session", "TunnelRecord", "TunnelServiceHandler"]
