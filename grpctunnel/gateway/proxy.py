"""Forwarding calls as raw bytes, for any method of any service, without its schema.

:class:`ProxyHandler` is a ``grpc.GenericRpcHandler``: add it to a ``grpc.aio.Server``,
a :class:`~grpctunnel.TunnelServiceHandler` or a
:class:`~grpctunnel.ReverseTunnelServer`, and every call it is asked about is routed
(by a function of the method and metadata) to a ``grpc.aio.Channel`` and relayed both
ways: messages as bytes, request metadata, response headers and trailers, the deadline,
cancellation, and the final status with its rich details. Every call kind is relayed as
a bidirectional stream, which is what each of them is on the wire.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc

from grpctunnel import metadata as md
from grpctunnel.gateway.first_status import FirstStatus
from grpctunnel.gateway.message_limit import MessageLimit
from grpctunnel.gateway.method_kinds import MethodKinds
from grpctunnel.session import EOF

log = logging.getLogger("grpctunnel")


@dataclass(frozen=True)
class RouteError:
    """A routing decision to fail the call with this status."""

    code: grpc.StatusCode
    details: str


@dataclass(slots=True)
class RelayStats:
    """Counts of relayed calls, plain integers updated as calls start, move messages and
    end: those of one :class:`ProxyHandler` (its ``totals``), or those relayed to one
    route (``Route.stats``: the gateway keeps one per tunnel). ``failed`` counts calls
    that ended with a status other than OK, ``unreachable`` those of them that failed
    with UNAVAILABLE before the upstream answered anything."""

    in_flight: int = 0
    done: int = 0
    failed: int = 0
    unreachable: int = 0
    request_bytes: int = 0
    response_bytes: int = 0


@dataclass(frozen=True)
class Route:
    """Where to send one call. With ``name``, a failure to reach the upstream at all
    is reported as "<name> unavailable: ..." so the caller learns which hop failed.
    ``kinds``, the method kinds learnt of this upstream, overrides the handler's.
    ``stats``, if given, counts the calls relayed along this route; ``tunnel`` names
    the tunnel it goes through, for logs and metrics; ``node`` the cluster node the call
    is relayed to (None: a tunnel of this node)."""

    channel: grpc.aio.Channel
    name: str | None = None
    kinds: MethodKinds | None = None
    stats: RelayStats | None = field(default=None, compare=False)
    tunnel: str | None = None
    node: str | None = None


# how grpc (and the tunnel protocol) word a message over a receiving limit
# the counters of the tunnel the call being relayed came in through (see caller_stats)
_CALLER: contextvars.ContextVar[RelayStats | None] = contextvars.ContextVar(
    "grpctunnel_caller_stats", default=None
)

RouteFn = Callable[[str, md.MetadataPairs], Route | RouteError | None]
CallObserver = Callable[[str, grpc.StatusCode, float], None]
# told of every call the handler answered: the method, the route it was relayed along
# (None: it was failed by a RouteError), its final code and its duration in seconds
CallTap = Callable[[str, Route | None, grpc.StatusCode, float], None]

# hop-by-hop headers of the tunnel itself, never relayed
_NOT_RELAYED = frozenset({"authorization", md.NEGOTIATE_HEADER, md.EXTENSIONS_HEADER})


def relayable(pairs: Any, extra_dropped: frozenset[str] = frozenset()) -> md.MetadataPairs:
    """Metadata that may be relayed: no transport headers, no deadline (it is passed
    as a timeout), no credentials of the hop."""
    out = []
    for key, value in pairs or ():
        if (
            md.is_reserved(key)
            or key == md.TIMEOUT_HEADER
            or key in _NOT_RELAYED
            or key in extra_dropped
        ):
            continue
        out.append((key, value))
    return tuple(out)


class ProxyHandler(grpc.GenericRpcHandler):  # type: ignore[misc,type-arg]
    """Relays every call that ``route`` gives a :class:`Route` for.

    ``route`` returning None leaves the call to other handlers; returning a
    :class:`RouteError` fails it with that status. ``observer``, if given, is told the
    method, final code and duration of each relayed call; ``tap``, if given, the same
    and the route, of every call the handler answered (failed routes too). With
    ``kinds``, methods known to take one request are relayed as unary calls (far
    cheaper in grpc.aio than the bidirectional stream that fits every kind, which is
    used otherwise). ``totals`` counts every relayed call (see :class:`RelayStats`).
    ``caller_stats``, when set, gives for a call's servicer context the counters of the
    tunnel the call came in through (a forward tunnel), which count it too.
    """

    def __init__(
        self,
        route: RouteFn,
        *,
        observer: CallObserver | None = None,
        drop_headers: frozenset[str] = frozenset(),
        kinds: MethodKinds | None = None,
        tap: CallTap | None = None,
    ) -> None:
        self._route = route
        self._kinds = kinds
        self._observer = observer
        self._tap = tap
        self.drop_headers = drop_headers
        self.limit: MessageLimit | None = None  # this hop's, to name it when over
        self.in_flight = 0
        self.totals = RelayStats()
        self.caller_stats: Callable[[Any], RelayStats | None] | None = None
        self._idle: asyncio.Event | None = None

    async def wait_idle(self, timeout: float | None) -> bool:
        """Waits up to ``timeout`` seconds for the calls in progress to finish."""
        if not self.in_flight:
            return True
        if self._idle is None:
            self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        pairs = tuple(handler_call_details.invocation_metadata or ())
        decision = self._route(method, pairs)
        if decision is None:
            return None
        if isinstance(decision, RouteError):
            return grpc.stream_stream_rpc_method_handler(self._failing(method, decision))
        kinds = decision.kinds or self._kinds
        kind = kinds.get(method) if kinds is not None else None
        if kind == (False, False):
            return grpc.unary_unary_rpc_method_handler(self._unary_for(method, decision))
        if kind == (False, True):
            return grpc.unary_stream_rpc_method_handler(self._unary_stream_for(method, decision))
        return grpc.stream_stream_rpc_method_handler(self._relay_for(method, decision))

    def _kind_was_wrong(self, route: Route, method: str, code: grpc.StatusCode) -> None:
        """A call relayed by its learnt kind failed as a call of the wrong kind does
        (INTERNAL: a second response to a unary call; UNIMPLEMENTED: no such method
        any more): forget what was learnt of the service, so that the next calls go by
        the general stream relay until it is learnt again."""
        if code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED):
            return
        kinds = route.kinds or self._kinds
        if kinds is not None:
            service = method[1:].split("/", 1)[0]
            log.info("relaying %s as its learnt kind failed (%s): relearning", method, code.name)
            kinds.forget(service)

    # -- accounting -------------------------------------------------------------------

    def _counters(self, route: Route) -> tuple[RelayStats | None, ...]:
        """What a call along ``route`` counts in: the totals, the route's, and those of
        the tunnel the call came in through (see ``caller_stats``)."""
        return (self.totals, route.stats, _CALLER.get())

    def _begin(self, route: Route) -> float:
        self.in_flight += 1
        for stats in self._counters(route):
            if stats is not None:
                stats.in_flight += 1
        return asyncio.get_running_loop().time()

    @contextmanager
    def _accounted(self, method: str, route: Route, context: Any) -> Iterator[None]:
        """Counts one relayed call in flight while the block runs (for the tunnel it
        came in through too, see ``caller_stats``), then tells the observer how it
        ended."""
        caller = self.caller_stats(context) if self.caller_stats is not None else None
        token = _CALLER.set(caller) if caller is not None else None
        started = self._begin(route)
        error: BaseException | None = None
        try:
            yield
        except BaseException as e:
            error = e
            raise
        finally:
            self._end(method, route, self._final_code(context, error), started)
            if token is not None:
                _CALLER.reset(token)

    def _sent(self, route: Route, size: int) -> None:
        """A request message of ``size`` bytes was relayed along ``route``."""
        for stats in self._counters(route):
            if stats is not None:
                stats.request_bytes += size

    def _received(self, route: Route, size: int) -> None:
        """A response message of ``size`` bytes was relayed back from ``route``."""
        for stats in self._counters(route):
            if stats is not None:
                stats.response_bytes += size

    async def _counted(self, route: Route, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for message in requests:
            self._sent(route, len(message))
            yield message

    async def _upstream_failed(
        self, route: Route, method: str, context: Any, error: grpc.aio.AioRpcError
    ) -> NoReturn:
        """Ends the relayed call with the upstream's failure (and forgets the method's
        kind if the failure says it was wrong)."""
        self._kind_was_wrong(route, method, error.code())
        await _relay_failure(
            route,
            context,
            error.code(),
            error.details() or "",
            error.initial_metadata(),
            error.trailing_metadata(),
            self.limit,
        )

    def _end(self, method: str, route: Route, code: grpc.StatusCode, started: float) -> None:
        self.in_flight -= 1
        for stats in self._counters(route):
            if stats is not None:
                stats.in_flight -= 1
                stats.done += 1
                if code != grpc.StatusCode.OK:
                    stats.failed += 1
        if not self.in_flight and self._idle is not None:
            self._idle.set()
            self._idle = None
        seconds = asyncio.get_running_loop().time() - started
        if self._observer is not None:
            self._observer(method, code, seconds)
        if self._tap is not None:
            self._tap(method, route, code, seconds)

    def _failing(self, method: str, error: RouteError) -> Callable[[Any, Any], Any]:
        async def fail(requests: Any, context: Any) -> None:
            if self._tap is not None:
                self._tap(method, None, error.code, 0.0)
            await context.abort(error.code, error.details)

        return fail

    @staticmethod
    def _final_code(context: Any, error: BaseException | None) -> grpc.StatusCode:
        """How a relayed call ended, as its caller saw it: a caller that went away, or
        whose deadline passed, is CANCELLED or DEADLINE_EXCEEDED, never OK or UNKNOWN."""
        if isinstance(error, asyncio.CancelledError) or _caller_gone(context):
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                return grpc.StatusCode.DEADLINE_EXCEEDED
            return grpc.StatusCode.CANCELLED
        code = context.code()
        if error is None:
            return grpc.StatusCode.OK if code in (None, grpc.StatusCode.OK) else code  # type: ignore[no-any-return]
        return code or grpc.StatusCode.UNKNOWN  # type: ignore[no-any-return]

    # -- the relays -------------------------------------------------------------------

    def _relay_for(self, method: str, route: Route) -> Callable[[Any, Any], AsyncIterator[bytes]]:
        async def relay(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            with self._accounted(method, route, context):
                counted = self._counted(route, requests)
                async for message in relay_call(
                    route, method, counted, context, self.drop_headers, self.limit
                ):
                    self._received(route, len(message))
                    yield message

        return relay

    def _unary_for(self, method: str, route: Route) -> Callable[[bytes, Any], Awaitable[bytes]]:
        async def relay(request: bytes, context: Any) -> bytes:
            with self._accounted(method, route, context):
                self._sent(route, len(request))
                channel: Any = route.channel
                call = channel.unary_unary(method)(
                    request,
                    metadata=relayable(context.invocation_metadata(), self.drop_headers),
                    timeout=context.time_remaining(),
                )
                try:
                    response = await call
                except grpc.aio.AioRpcError as e:
                    await self._upstream_failed(route, method, context, e)
                await _relay_headers(context, await call.initial_metadata())
                _relay_trailers(context, await call.trailing_metadata())
                self._received(route, len(response))
                return bytes(response)

        return relay

    def _unary_stream_for(
        self, method: str, route: Route
    ) -> Callable[[bytes, Any], AsyncIterator[bytes]]:
        async def relay(request: bytes, context: Any) -> AsyncIterator[bytes]:
            with self._accounted(method, route, context):
                self._sent(route, len(request))
                channel: Any = route.channel
                call = channel.unary_stream(method)(
                    request,
                    metadata=relayable(context.invocation_metadata(), self.drop_headers),
                    timeout=context.time_remaining(),
                )
                try:
                    await _relay_headers(context, await call.initial_metadata())
                    while True:
                        message = await call.read()
                        if message is EOF:
                            break
                        self._received(route, len(message))
                        yield bytes(message)
                except grpc.aio.AioRpcError as e:
                    await self._upstream_failed(route, method, context, e)
                _relay_trailers(context, await call.trailing_metadata())

        return relay


def _caller_gone(context: Any) -> bool:
    """Whether the call was cancelled from the caller's side (a grpc.aio context says;
    a tunnel's servicer context may not)."""
    cancelled = getattr(context, "cancelled", None)
    return bool(cancelled()) if callable(cancelled) else False


def _requests_complete(context: Any) -> bool:
    """Whether the caller is known to have half-closed (a tunnel's servicer context can
    tell; a grpc.aio one cannot tell a half-close from a cancel)."""
    complete = getattr(context, "requests_complete", None)
    return bool(complete()) if callable(complete) else False


async def _relay_headers(context: Any, headers: Any) -> None:
    relayed = relayable(headers)
    if relayed:
        await context.send_initial_metadata(relayed)


def _relay_trailers(context: Any, trailers: Any) -> None:
    kept = _kept_trailers(trailers)
    if kept:
        context.set_trailing_metadata(kept)


def _kept_trailers(trailers: Any) -> md.MetadataPairs:
    return tuple(
        (k, v) for k, v in trailers or () if k == md.STATUS_DETAILS_KEY or not md.is_reserved(k)
    )


async def _relay_failure(
    route: Route,
    context: Any,
    code: grpc.StatusCode,
    details: str,
    headers: Any,
    trailers: Any,
    limit: MessageLimit | None = None,
) -> NoReturn:
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and limit is not None:
        details = limit.explain(details) or details
    if code == grpc.StatusCode.UNAVAILABLE and not headers:
        if route.stats is not None:
            route.stats.unreachable += 1
        if route.name:
            details = f"{route.name} unavailable: {details}"
    await context.abort(code, details, _kept_trailers(trailers))
    raise AssertionError("abort returned")  # pragma: no cover


async def relay_call(
    route: Route,
    method: str,
    requests: AsyncIterator[bytes],
    context: Any,
    drop_headers: frozenset[str] = frozenset(),
    limit: MessageLimit | None = None,
) -> AsyncIterator[bytes]:
    """Relays one call to ``route``: yields the upstream's responses, and leaves its
    headers, trailers and status on ``context`` (a response over ``limit``, this hop's,
    named as such)."""
    timeout = context.time_remaining()
    channel: Any = route.channel
    upstream = channel.stream_stream(method)(
        metadata=relayable(context.invocation_metadata(), drop_headers), timeout=timeout
    )
    first = FirstStatus(upstream)
    pump = asyncio.ensure_future(_pump(requests, upstream, context))
    pump.add_done_callback(_pump_ended)
    try:
        await _relay_headers(context, await upstream.initial_metadata())
        while True:
            message = await upstream.read()
            if message is EOF:
                break
            yield bytes(message)
        code = await upstream.code()
    except grpc.aio.AioRpcError as e:
        code = e.code()
    finally:
        if not pump.done():
            pump.cancel()
        if not upstream.done():
            upstream.cancel()
    details = await upstream.details()
    received = await upstream.trailing_metadata()
    if code == grpc.StatusCode.INTERNAL and first.value is not None:
        code, details, received = first.value
    if code == grpc.StatusCode.OK:
        _relay_trailers(context, received)
        return
    await _relay_failure(
        route, context, code, details, await upstream.initial_metadata(), received, limit
    )


def _pump_ended(pump: asyncio.Future[None]) -> None:
    """Observes the end of a request pump: cancelled or done is normal; anything else
    (the caller's request stream broke) is logged rather than left unretrieved."""
    if not pump.cancelled() and pump.exception() is not None:
        log.debug("request stream of a relayed call ended: %r", pump.exception())


# how long a pump waits, once the caller's requests end, for news that the caller went
# away to arrive before it tells the upstream that the requests are complete: some loop
# turns, then a short time (grpc.aio gives no sign of a half-close, only of a cancel)
_CANCEL_NEWS_TURNS = 10
_CANCEL_NEWS_SECONDS = 0.002


async def _pump(requests: AsyncIterator[bytes], upstream: Any, context: Any) -> None:
    """Writes the caller's requests upstream, then half-closes it. grpc.aio ends the
    request stream of a caller that cancelled as it ends one that half-closed, with the
    cancellation reaching the handler a moment later: a half-close sent in between would
    tell the backend that a cancelled upload was complete. So the pump lets that moment
    pass (the handler cancels the pump when the news comes) and cancels the upstream
    call instead if the caller is gone. A caller through a tunnel (the exposer's side)
    says whether it half-closed, so its half-close is relayed at once."""
    try:
        async for message in requests:
            await upstream.write(message)
        if _requests_complete(context):  # a tunnelled caller's half-close: no doubt
            await upstream.done_writing()
            return
        for _ in range(_CANCEL_NEWS_TURNS):
            await asyncio.sleep(0)
        await asyncio.sleep(_CANCEL_NEWS_SECONDS)  # the handler cancels the pump if gone
        if _caller_gone(context) or context.done():
            upstream.cancel()
            return
        await upstream.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the upstream call ended; its status is relayed


__all__ = [
    "CallObserver",
    "CallTap",
    "ProxyHandler",
    "RelayStats",
    "Route",
    "RouteError",
    "relay_call",
    "relayable",
]
