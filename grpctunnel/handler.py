"""The accepting side of tunnels: :class:`TunnelServiceHandler`.

It implements the ``TunnelService`` RPCs. For ``OpenTunnel`` it serves the calls that
arrive through the tunnel with the services registered on it (it accepts what
``add_XServicer_to_server`` passes, like a ``grpc.aio.Server``). For
``OpenReverseTunnel`` it keeps the tunnel in a pool (``grpctunnel.reverse``) so that
the server can call the services the dialling client hosts: ``as_channel()`` balances
calls over every live reverse tunnel, ``key_as_channel(key)`` over those with one
affinity key. Both sides' sessions are built by ``grpctunnel.opening``.

Who may open tunnels is decided as each one opens, by the ``accept_tunnel`` hook of
:class:`~grpctunnel.TunnelServiceHandlerOptions`, and which calls may be made inside a
forward tunnel by its ``authorize_call`` hook; :meth:`TunnelServiceHandler.open_tunnels`
lists every accepted tunnel (with the metadata it was opened with) so such a hook can
count tunnels or close one, and :class:`~grpctunnel.gateway.Gateway` wires both hooks to
a :class:`~grpctunnel.gateway.auth.TokenAuthority`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from typing import Any, NoReturn

import grpc

from grpctunnel import metadata as md
from grpctunnel import rate_limited_log
from grpctunnel.calls import CallingSession
from grpctunnel.channel import TunnelChannel
from grpctunnel.opening import TunnelOpening, calling_session, serving_session
from grpctunnel.options import TunnelOptions, TunnelServiceHandlerOptions
from grpctunnel.reverse import ReversePool, ReverseTunnel
from grpctunnel.serving import ServiceRegistrar, ServingSession
from grpctunnel.session import TunnelClosed
from grpctunnel.v1 import tunnel_pb2, tunnel_pb2_grpc

log = logging.getLogger("grpctunnel")

# the tunnel RPCs as this side serves them: the servicer context is the frame stream
ForwardContext = grpc.aio.ServicerContext[tunnel_pb2.ClientToServer, tunnel_pb2.ServerToClient]
ReverseContext = grpc.aio.ServicerContext[tunnel_pb2.ServerToClient, tunnel_pb2.ClientToServer]
TunnelContext = ForwardContext | ReverseContext

_SHUTTING_DOWN = "tunnel server shutting down"


class TunnelRecord:
    """One tunnel RPC the handler accepted, from the moment ``accept_tunnel`` let it in
    until it ends: what admission hooks see of the tunnels already open.

    ``kind`` is "forward" or "reverse"; ``metadata`` what the tunnel was opened with;
    ``labels`` is free for hooks to remember things about the tunnel (who opened it).
    ``options``, when an admission hook sets it, are the options this one tunnel runs
    with in place of the handler's (a tunnel from a trusted peer with other limits).
    """

    def __init__(self, kind: str, metadata: md.MetadataPairs, peer: str) -> None:
        self.kind = kind
        self.metadata = metadata
        self.peer = peer
        self.labels: dict[str, Any] = {}
        self.options: TunnelOptions | None = None
        self.session: CallingSession | ServingSession | None = None
        self.pending_close: tuple[grpc.StatusCode, str] | None = None
        self._end_callbacks: list[Callable[[TunnelRecord], None]] = []
        self.ended = False

    def add_end_callback(self, callback: Callable[[TunnelRecord], None]) -> None:
        """Calls ``callback(record)`` once the tunnel has ended (at once if it has)."""
        if self.ended:
            callback(self)
        else:
            self._end_callbacks.append(callback)

    def end(self) -> None:
        """The tunnel RPC is over: runs the end callbacks, once."""
        if self.ended:
            return
        self.ended = True
        callbacks, self._end_callbacks = self._end_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("tunnel end callback failed for %r", self)

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


class _TunnelServicer(tunnel_pb2_grpc.TunnelServiceServicer):
    """The grpc servicer of ``TunnelService``, bound to one handler."""

    def __init__(self, handler: TunnelServiceHandler, *, encoded_frames: bool = False) -> None:
        self._handler = handler
        self._encoded_frames = encoded_frames

    def with_encoded_frames(self) -> _TunnelServicer:
        """The servicer whose tunnels write frames in their wire form: what
        ``grpctunnel.add_TunnelServiceServicer_to_server`` registers, with serializers
        that take them; only for that (the generated registration's would fail)."""
        return _TunnelServicer(self._handler, encoded_frames=True)

    async def OpenTunnel(self, request_iterator: object, context: ForwardContext) -> None:  # type: ignore[override]
        await self._handler._serve_forward(context, self._encoded_frames)

    async def OpenReverseTunnel(self, request_iterator: object, context: ReverseContext) -> None:  # type: ignore[override]
        await self._handler._serve_reverse(context, self._encoded_frames)


class TunnelServiceHandler(ServiceRegistrar):
    """Serves the ``TunnelService``: forward tunnels to the services registered here
    (``register_service``, or any generated ``add_XServicer_to_server``), reverse
    tunnels into a pool the server can call through.

    Add it to a grpc.aio server with
    ``add_TunnelServiceServicer_to_server(handler.service(), server)``.
    """

    def __init__(self, options: TunnelServiceHandlerOptions | None = None) -> None:
        super().__init__()
        self.options = options or TunnelServiceHandlerOptions()
        self._forward: set[ServingSession] = set()
        self._reverse = ReversePool()
        self._servicer = _TunnelServicer(self)
        self._records: set[TunnelRecord] = set()
        self._shutting_down = False
        self._hook_tasks: set[asyncio.Task[Any]] = set()

    def service(self) -> tunnel_pb2_grpc.TunnelServiceServicer:
        """The servicer to add with ``add_TunnelServiceServicer_to_server``."""
        return self._servicer

    # -- reverse tunnels --------------------------------------------------------------

    def as_channel(self) -> TunnelChannel:
        """A channel to the services of the clients that opened reverse tunnels; each
        call goes through one live tunnel, in turn. ``channel_ready()`` waits for one."""
        return self._reverse.channel()

    def key_as_channel(self, key: Hashable) -> TunnelChannel:
        """Like :meth:`as_channel`, but only through tunnels whose affinity key (see
        ``TunnelServiceHandlerOptions.affinity_key``) equals ``key``."""
        return self._reverse.key_channel(key)

    def channel_for(
        self, accepts: Callable[[ReverseTunnel], bool], description: str = ""
    ) -> TunnelChannel:
        """A channel balancing over the live reverse tunnels that ``accepts`` admits
        (``description`` completes "no reverse tunnel is open..." when there is none).
        ``accepts`` is asked about every tunnel on every call: for a selection by key,
        :meth:`key_as_channel` picks in constant time."""
        return self._reverse.filtered_channel(accepts, description)

    def all_reverse_tunnels(self) -> list[ReverseTunnel]:
        """The live reverse tunnels, in the order they opened."""
        return self._reverse.live()

    async def wait_for_reverse_tunnel(self) -> ReverseTunnel:
        """Waits until a reverse tunnel is open; returns the latest."""
        while True:
            tunnels = self.all_reverse_tunnels()
            if tunnels:
                return tunnels[-1]
            await self._reverse.wait_changed()

    # -- all tunnels ------------------------------------------------------------------

    def open_tunnels(self) -> list[TunnelRecord]:
        """Every tunnel accepted and not yet ended, forward and reverse, including
        reverse tunnels still negotiating (not yet in :meth:`all_reverse_tunnels`)."""
        return [r for r in self._records if not r.closing]

    @property
    def forward_tunnels(self) -> int:
        """How many forward tunnels are open (a closed one is not counted, even while
        its RPC is still winding down)."""
        return sum(1 for session in self._forward if not session.closed)

    def initiate_shutdown(self) -> None:
        """Refuses every tunnel that opens from now on (UNAVAILABLE); the tunnels open
        now keep running until they end or :meth:`close` ends them (as the Go
        library's ``InitiateShutdown``)."""
        self._shutting_down = True

    async def close(self) -> None:
        """Ends every tunnel this handler serves (their calls fail with UNAVAILABLE)
        and refuses new ones. Reverse tunnels leave the pool at once (their
        ``on_reverse_tunnel_close`` hooks run), and ``close`` returns once the hooks
        still running have finished (cancelling ``close`` cancels them)."""
        self.initiate_shutdown()
        for session in list(self._forward):
            session.close(_SHUTTING_DOWN)
        reverse = self._reverse.members()
        for tunnel in reverse:
            tunnel.session.close(_SHUTTING_DOWN)
        for record in list(self._records):  # and those still opening
            record.close(_SHUTTING_DOWN)
        for tunnel in reverse:
            self._remove_reverse(tunnel)
        current = asyncio.current_task()  # close() called from a hook: not itself
        hooks = [task for task in self._hook_tasks if task is not current]
        if hooks:
            await asyncio.gather(*hooks, return_exceptions=True)

    # -- the RPCs ---------------------------------------------------------------------

    def _opening(self, context: TunnelContext, encoded_frames: bool) -> TunnelOpening:
        return TunnelOpening(
            tuple(context.invocation_metadata() or ()),
            context.peer(),
            encoded_frames=encoded_frames,
        )

    async def _admit(
        self, context: TunnelContext, kind: str, opening: TunnelOpening
    ) -> TunnelRecord:
        """Asks ``accept_tunnel``; a refused tunnel ends with its status here. An
        accepted one is recorded at once (no await in between), so that the hook of
        the next tunnel to open sees it."""
        if self._shutting_down:
            await self._refuse(context, kind, grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN)
        accept, admit = self.options.accept_tunnel, self.options.admit_tunnel
        refusal = accept(kind, opening.metadata, opening.peer) if accept is not None else None
        record = TunnelRecord(kind, opening.metadata, opening.peer)
        if refusal is None and admit is not None:
            refusal = admit(record)
        if refusal is not None:
            record.end()
            code, details = refusal
            # rate-limited: whoever floods us with bad tunnels must not fill our disk
            rate_limited_log.REFUSED_TUNNELS.log(
                f"{code.name}: {details}",
                "refused %s tunnel from %s: %s: %s",
                kind,
                opening.peer,
                code.name,
                details,
            )
            await self._refuse(context, kind, code, details)
        self._records.add(record)
        return record

    async def _refuse(
        self, context: TunnelContext, kind: str, code: grpc.StatusCode, details: str
    ) -> NoReturn:
        """Ends a tunnel RPC that is refused, after telling ``on_tunnel_refused``."""
        hook = self.options.on_tunnel_refused
        if hook is not None:
            try:
                hook(kind, code, details)
            except Exception:
                log.exception("on_tunnel_refused failed")
        await context.abort(code, details)
        raise AssertionError("abort returned")  # grpc.aio's abort always raises

    async def _start_session(
        self,
        context: TunnelContext,
        record: TunnelRecord,
        session: CallingSession | ServingSession,
    ) -> None:
        """Ties the session to its record; one closed while it opened ends at once."""
        record.session = session
        if record.pending_close is not None:
            code, reason = record.pending_close
            session.close(reason, code)
            await context.abort(code, reason)

    async def _serve_forward(self, context: ForwardContext, encoded_frames: bool = False) -> None:
        opening = self._opening(context, encoded_frames)
        record = await self._admit(context, "forward", opening)
        try:
            await self._run_forward(context, record, opening)
        finally:
            self._records.discard(record)
            record.end()

    async def _run_forward(
        self, context: ForwardContext, record: TunnelRecord, opening: TunnelOpening
    ) -> None:
        opts = self.options
        await context.send_initial_metadata(md.tunnel_open_headers())
        session = serving_session(
            context,
            opening,
            record.options or opts,
            self.registry,
            authorize_call=opts.authorize_call,
        )
        await self._start_session(context, record, session)
        self._forward.add(session)
        try:
            await session.run()
        except TunnelClosed as e:
            await _abort_tunnel(context, e)
        finally:
            self._forward.discard(session)

    async def _serve_reverse(self, context: ReverseContext, encoded_frames: bool = False) -> None:
        if self.options.no_reverse_tunnels:
            await self._refuse(
                context,
                "reverse",
                grpc.StatusCode.UNIMPLEMENTED,
                "this server does not accept reverse tunnels",
            )
        opening = self._opening(context, encoded_frames)
        record = await self._admit(context, "reverse", opening)
        try:
            await self._run_reverse(context, record, opening)
        finally:
            self._records.discard(record)
            record.end()

    async def _run_reverse(
        self, context: ReverseContext, record: TunnelRecord, opening: TunnelOpening
    ) -> None:
        await context.send_initial_metadata(md.tunnel_open_headers())
        session = calling_session(context, opening, record.options or self.options)
        await self._start_session(context, record, session)
        tunnel = ReverseTunnel(session, record)
        run = asyncio.ensure_future(session.run())
        try:
            # a peer that never sends its settings is dropped (DEADLINE_EXCEEDED), and
            # with it the place its half-open tunnel held (tunnel limits, names)
            if await session.wait_established(self.options.establishment_timeout):
                self._add_reverse(tunnel)
            await run
        except TunnelClosed as e:
            await _abort_tunnel(context, e)
        finally:
            if not run.done():
                run.cancel()
            self._remove_reverse(tunnel)

    def _add_reverse(self, tunnel: ReverseTunnel) -> None:
        opts = self.options
        if opts.affinity_key is not None:
            try:
                key = opts.affinity_key(tunnel)
                hash(key)  # the pool is indexed by key
                tunnel.key = key
            except Exception:
                log.exception("affinity_key raised for %r", tunnel)
        self._reverse.add(tunnel)
        log.debug("reverse tunnel opened: %r", tunnel)
        if opts.on_reverse_tunnel_open is not None:
            self._call_hook(opts.on_reverse_tunnel_open, tunnel)

    def _remove_reverse(self, tunnel: ReverseTunnel) -> None:
        if not self._reverse.remove(tunnel):
            return
        log.debug("reverse tunnel closed: %r", tunnel)
        if self.options.on_reverse_tunnel_close is not None:
            self._call_hook(self.options.on_reverse_tunnel_close, tunnel)

    def _call_hook(self, hook: Callable[[ReverseTunnel], Any], tunnel: ReverseTunnel) -> None:
        """Calls a reverse tunnel hook; one that is a coroutine runs as a task of the
        handler (see :meth:`close`). What a hook raises is logged."""
        try:
            result = hook(tunnel)
        except Exception:
            log.exception("reverse tunnel callback raised")
            return
        if asyncio.iscoroutine(result):
            task = asyncio.ensure_future(result)
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_done)

    def _hook_done(self, task: asyncio.Task[Any]) -> None:
        self._hook_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("reverse tunnel callback raised", exc_info=task.exception())


async def _abort_tunnel(context: TunnelContext, error: TunnelClosed) -> None:
    if context.done():
        return
    await context.abort(error.code, error.details)


__all__ = ["ReverseTunnel", "TunnelRecord", "TunnelServiceHandler"]
