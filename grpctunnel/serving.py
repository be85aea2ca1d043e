"""The serving side of a tunnel: runs ordinary grpc.aio servicers for calls that
arrive through it.

:class:`ServiceRegistry` accepts what ``add_XServicer_to_server`` passes to a
``grpc.aio.Server`` (generic and registered method handlers) and ``register_service``
(a servicer object plus its service name, typed from the protobuf descriptor pool);
:class:`ServiceRegistrar` gives a class that serves through tunnels that same surface.
:class:`ServingSession` turns each opened stream into a :class:`ServerCall`, which runs
the method handler in its own task with a :class:`TunnelServicerContext`: the full
``grpc.aio.ServicerContext`` API, with deadlines from ``grpc-timeout`` and cancellation
from the caller. As a grpc.aio server does, a synchronous (non-``async``) method runs
in a thread pool instead, with a :class:`SyncServicerContext`, so that it never blocks
the event loop and every other tunnel with it.

A serving session also watches its event loop: when it finds that the loop (or the whole
process) stood still for longer than ``stale_after`` seconds, its peer may already have
given up on the tunnel and told the callers their calls failed, so it drops the tunnel
without starting any call it then finds queued on it (see ``TunnelOptions.stale_after``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import logging
import threading
import weakref
from collections import deque
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc
from google.protobuf import descriptor_pool, message_factory

from grpctunnel import metadata as md
from grpctunnel.protocol import Code, ServingConnection
from grpctunnel.protocol import events as ev
from grpctunnel.protocol.wire import message_input
from grpctunnel.session import EOF, FrameStream, Session
from grpctunnel.v1 import tunnel_pb2

if TYPE_CHECKING:
    from grpctunnel.opening import TunnelOpening

log = logging.getLogger("grpctunnel")

MethodSpec = Mapping[str, Any]
# (tunnel metadata, method) -> None to allow the call, or the status to refuse it with
CallAuthorizer = Callable[[md.MetadataPairs, str], "tuple[grpc.StatusCode, str] | None"]
# the tunnel RPC as the serving side sees it: it receives requests, sends responses
ServingStream = FrameStream[tunnel_pb2.ClientToServer, tunnel_pb2.ServerToClient]
T = TypeVar("T")

_HEARTBEAT_MAX = 1.0  # seconds between two heartbeats of an event loop, at most


class _LoopWatch:
    """One heartbeat per event loop for all the serving sessions on it that watch for
    stalls: it notes the time every so often, and a session compares the time now with
    the last beat. One timer however many tunnels a process serves (a timer per session
    cost an exposer of 10,000 tunnels a tenth of a core doing nothing). A beat that
    comes late by more than a session's ``stale_after`` has that session check itself
    before anything else runs."""

    _of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWatch] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.last_beat = loop.time()
        self._sessions: set[ServingSession] = set()
        self._thresholds: collections.Counter[float] = collections.Counter()
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _LoopWatch:
        watch = cls._of_loop.get(loop)
        if watch is None:
            watch = cls._of_loop[loop] = cls(loop)
        return watch

    def add(self, session: ServingSession, stale_after: float) -> None:
        if not self._sessions:
            self.last_beat = self._loop.time()
        self._sessions.add(session)
        self._thresholds[stale_after] += 1
        if self._timer is None:
            self._schedule()

    def remove(self, session: ServingSession, stale_after: float) -> None:
        if session not in self._sessions:
            return
        self._sessions.discard(session)
        self._thresholds[stale_after] -= 1
        if not self._thresholds[stale_after]:
            del self._thresholds[stale_after]
        if not self._sessions and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        shortest = min(self._thresholds)
        period = min(_HEARTBEAT_MAX, max(shortest / 4, 0.01))
        self._timer = self._loop.call_later(period, self._beat)

    def _beat(self) -> None:
        self._timer = None
        if self._thresholds and self._loop.time() - self.last_beat > min(self._thresholds):
            for session in list(self._sessions):  # the loop stood still: each checks
                session.stalled()
        self.last_beat = self._loop.time()
        if self._sessions:
            self._schedule()


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "invocation_metadata")),
    grpc.HandlerCallDetails,
):
    """What generic handlers are asked about (the method and its metadata)."""


class ServiceRegistry:
    """The services one end of a tunnel serves, registered the ways a grpc.aio server
    accepts them."""

    def __init__(self) -> None:
        self._methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        self._generic: list[grpc.GenericRpcHandler[Any, Any]] = []
        self._service_names: list[str] = []

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        for handler in generic_rpc_handlers:
            if not hasattr(handler, "service"):
                raise TypeError(f"{handler!r} is not a grpc.GenericRpcHandler")
            self._generic.append(handler)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        for name, handler in method_handlers.items():
            self._methods[f"/{service_name}/{name}"] = handler
        if service_name not in self._service_names:
            self._service_names.append(service_name)

    def register_service(
        self,
        servicer: object,
        service_name: str,
        methods: Mapping[str, MethodSpec] | None = None,
    ) -> None:
        """Serves ``servicer``'s methods as ``service_name``.

        ``methods`` maps method names to ``{"is_client_stream": bool,
        "is_server_stream": bool}`` and optionally ``request_deserializer`` /
        ``response_serializer``. Message types (and, when ``methods`` is left out, the
        method list) come from the protobuf descriptor pool, so the service's ``_pb2``
        module must have been imported.
        """
        service = _find_service(service_name)
        if methods is None:
            if service is None:
                raise ValueError(
                    f"service {service_name!r} is not in the protobuf descriptor pool: import its "
                    "_pb2 module first, or pass the method table"
                )
            methods = {
                m.name: {
                    "is_client_stream": m.client_streaming,
                    "is_server_stream": m.server_streaming,
                }
                for m in service.methods
            }
        full_name = service.full_name if service is not None else service_name
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for name, spec in methods.items():
            behavior = getattr(servicer, name, None)
            if behavior is None:
                raise ValueError(f"{type(servicer).__name__} has no method {name!r}")
            deserializer = spec.get("request_deserializer")
            serializer = spec.get("response_serializer")
            if deserializer is None and service is not None:
                method = service.methods_by_name.get(name)
                if method is None:
                    raise ValueError(f"service {full_name} has no method {name!r}")
                deserializer = message_factory.GetMessageClass(method.input_type).FromString
            client_stream = bool(spec.get("is_client_stream", False))
            server_stream = bool(spec.get("is_server_stream", False))
            handlers[name] = _method_handler(
                behavior, client_stream, server_stream, deserializer, serializer
            )
        self.add_registered_method_handlers(full_name, handlers)

    def lookup(
        self, method: str, invocation_metadata: md.MetadataPairs
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._methods.get(method)
        if handler is not None:
            return handler
        if self._generic:
            details = _CallDetails(method, invocation_metadata)
            for generic in self._generic:
                handler = generic.service(details)
                if handler is not None:
                    return handler
        return None

    def service_names(self) -> list[str]:
        """Names of the services registered with their methods (generic handlers
        cannot be listed)."""
        return list(self._service_names)


class ServiceRegistrar:
    """The ``grpc.aio.Server`` surface that generated ``add_XServicer_to_server``
    functions (and ``register_service``) use, for a class that serves the services
    registered on it through tunnels: it registers them in its ``registry``."""

    def __init__(self) -> None:
        self.registry = ServiceRegistry()

    def register_service(
        self,
        servicer: object,
        service_name: str,
        methods: Mapping[str, MethodSpec] | None = None,
    ) -> None:
        """Serves ``servicer`` as ``service_name``; see
        :meth:`ServiceRegistry.register_service`."""
        self.registry.register_service(servicer, service_name, methods)

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self.registry.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.registry.add_registered_method_handlers(service_name, method_handlers)


def _find_service(name: str) -> Any:
    pool = descriptor_pool.Default()
    try:
        return pool.FindServiceByName(name)
    except KeyError:
        return None


def _serialize(message: Any) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()  # type: ignore[no-any-return]


def _method_handler(
    behavior: Callable[..., Any],
    client_stream: bool,
    server_stream: bool,
    deserializer: Callable[[bytes], Any] | None,
    serializer: Callable[[Any], bytes] | None,
) -> grpc.RpcMethodHandler[Any, Any]:
    serializer = serializer or _serialize
    if client_stream and server_stream:
        return grpc.stream_stream_rpc_method_handler(behavior, deserializer, serializer)
    if client_stream:
        return grpc.stream_unary_rpc_method_handler(behavior, deserializer, serializer)
    if server_stream:
        return grpc.unary_stream_rpc_method_handler(behavior, deserializer, serializer)
    return grpc.unary_unary_rpc_method_handler(behavior, deserializer, serializer)


class AbortError(grpc.aio.AbortError):  # type: ignore[misc,name-defined]
    """Raised by ``context.abort()`` to end the handler with the status it set."""


class ServingSession(
    Session[ServingConnection, tunnel_pb2.ClientToServer, tunnel_pb2.ServerToClient]
):
    """A session on the end of a tunnel that serves calls: those of ``registry``,
    each first allowed by ``authorize_call`` (when given).

    ``stale_after`` (seconds, None: never) drops the tunnel, without starting the calls
    queued on it, once its event loop is found to have stood still that long: a
    heartbeat notes the time every so often, and both the heartbeat and every frame
    read compare the time now with the last beat. ``handler_executor`` runs the
    synchronous servicer methods (None: a shared pool)."""

    def __init__(
        self,
        stream: ServingStream,
        conn: ServingConnection,
        opening: TunnelOpening,
        *,
        registry: ServiceRegistry,
        max_send_message_length: int | None = None,
        authorize_call: CallAuthorizer | None = None,
        stale_after: float | None = None,
        handler_executor: Executor | None = None,
    ) -> None:
        super().__init__(stream, conn, opening, max_send_message_length=max_send_message_length)
        self.registry = registry
        self.authorize_call = authorize_call
        self.handler_executor = handler_executor
        self.stale_after = stale_after
        self.stalled_for: float | None = None  # the stall the tunnel was dropped for
        self._loop = asyncio.get_running_loop()
        self._watch = _LoopWatch.of(self._loop) if stale_after is not None else None
        if stale_after is not None:
            self.stall_check = self.stalled

    # -- stalls ---------------------------------------------------------------------

    async def run(self) -> None:
        watch, stale_after = self._watch, self.stale_after
        if watch is not None and stale_after is not None:
            watch.add(self, stale_after)
        try:
            await super().run()
        finally:
            if watch is not None and stale_after is not None:
                watch.remove(self, stale_after)

    def stalled(self) -> bool:
        """Whether the tunnel was dropped because this side stood still longer than
        ``stale_after`` (a frozen process, a blocked event loop): checked now, before
        anything read is acted on. Dropping it fails its calls (UNAVAILABLE) and
        cancels its handlers; nothing read after the stall is dispatched."""
        if self.stalled_for is not None:
            return True
        if self.stale_after is None or self._watch is None or self.closed:
            return False
        gap = self._loop.time() - self._watch.last_beat
        if gap <= self.stale_after:
            return False
        self.stalled_for = gap
        reason = f"tunnel stalled for {gap:.1f}s; dropped without starting the calls queued on it"
        log.warning("tunnel with %s: %s", self.peer, reason)
        self.close(reason)
        return True

    # -- calls ----------------------------------------------------------------------

    def on_unclaimed_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.StreamOpened) and not self.closed:
            self._open_call(event)

    def _refuse(self, stream_id: int, code: Code, details: str) -> None:
        self.conn.reject_stream(stream_id, code, details)
        self.flush()

    def _open_call(self, event: ev.StreamOpened) -> None:
        invocation = md.from_proto(event.headers, binary_base64=self.binary_base64)
        conn = self.conn
        try:  # the hooks are the application's: what they raise fails this call only
            refusal = (
                None
                if self.authorize_call is None
                else self.authorize_call(self.tunnel_metadata, event.method)
            )
            handler = (
                None if refusal is not None else self.registry.lookup(event.method, invocation)
            )
        except Exception as e:
            log.exception("looking up the handler of %s raised", event.method)
            self._refuse(event.stream_id, Code.INTERNAL, f"error looking up {event.method}: {e!r}")
            return
        if refusal is not None:
            code, details = refusal
            self._refuse(event.stream_id, Code(code.value[0]), details)
            return
        if handler is None:
            service = event.method[1:].split("/", 1)[0]
            conn.reject_stream(
                event.stream_id,
                Code.UNIMPLEMENTED,
                f"unknown service or method {event.method} (service {service})",
            )
            self.flush()
            return
        timeout: float | None = None
        pairs: list[tuple[str, md.MetadataValue]] = []
        for key, value in invocation:
            if key == md.TIMEOUT_HEADER:
                try:
                    timeout = md.decode_timeout(str(value))
                except ValueError as e:
                    conn.reject_stream(event.stream_id, Code.INVALID_ARGUMENT, str(e))
                    self.flush()
                    return
            else:
                pairs.append((key, value))
        conn.accept_stream(event.stream_id, request_streaming=handler.request_streaming)
        call = ServerCall(self, event.stream_id, event.method, handler, tuple(pairs), timeout)
        self.add_listener(event.stream_id, call)
        call.start()


class ServerCall:
    """One tunnelled call being served: its request queue, context and handler task."""

    def __init__(
        self,
        session: ServingSession,
        stream_id: int,
        method: str,
        handler: grpc.RpcMethodHandler[Any, Any],
        invocation_metadata: md.MetadataPairs,
        timeout: float | None,
    ) -> None:
        self.session = session
        self.stream_id = stream_id
        self.method = method
        self.handler = handler
        self._loop = asyncio.get_running_loop()
        self._requests: deque[bytes | memoryview] = deque()
        self._half_closed = False
        # set when a request arrives, or the requests end: wakes every reader waiting
        self._request_ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._finished = False
        self._cancel_reason: str | None = None  # "deadline", "cancelled", "tunnel"
        self.deadline = self._loop.time() + timeout if timeout is not None else None
        self.context = TunnelServicerContext(self, invocation_metadata)

    def start(self) -> None:
        self._task = self._loop.create_task(self._run())
        self._task.add_done_callback(self._after_run)
        if self.deadline is not None:
            self._timer = self._loop.call_at(self.deadline, self._on_deadline)

    def _after_run(self, task: asyncio.Task[None]) -> None:
        """Finishes a call whose task ended without running ``_run`` to its end: one
        cancelled before its first step (the cancel or failure arrived with the frames
        that opened the stream) never enters ``_run`` at all."""
        if self._finished:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._cancel_reason == "deadline":
            self._close(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", ())
        self._done()

    # -- events ---------------------------------------------------------------------

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.MessageReceived):
            self._requests.append(event.data)
            self._request_ready.set()
        elif isinstance(event, ev.HalfClosed):
            self._half_closed = True
            self._request_ready.set()
        elif isinstance(event, ev.StreamCancelled):
            self._cancel("cancelled")
        elif isinstance(event, ev.StreamFailed):
            self._cancel("failed")

    def on_tunnel_closed(self, reason: str) -> None:
        self._cancel("tunnel")

    def _on_deadline(self) -> None:
        self._timer = None
        self._cancel("deadline")

    def _cancel(self, reason: str) -> None:
        if self._finished or self._cancel_reason is not None:
            return
        self._cancel_reason = reason
        self.context._mark_cancelled()
        self._request_ready.set()  # readers in other tasks or threads stop waiting
        if self._task is not None:
            self._task.cancel()

    @property
    def half_closed(self) -> bool:
        """The caller sent its half-close: no more requests will come."""
        return self._half_closed

    # -- requests -------------------------------------------------------------------

    async def read_request(self) -> Any:
        """The next request message, or EOF once the caller half-closed (or the call
        is over). Raises ``CancelledError`` once the call was cancelled. Any number of
        readers may wait at once (the handler's task, another task, a thread)."""
        while not self._requests:
            if self._cancel_reason is not None:
                raise asyncio.CancelledError()
            if self._half_closed or self._finished:
                return EOF
            self._request_ready.clear()
            await self._request_ready.wait()
        data = self._requests.popleft()
        conn = self.session.conn
        conn.message_consumed(self.stream_id)
        if conn.wants_to_send():
            self.session.flush()
        deserializer = self.handler.request_deserializer
        data = message_input(data, deserializer)
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except Exception as e:
            self.context._set_final(
                grpc.StatusCode.INTERNAL, f"Exception deserializing request: {e!r}"
            )
            raise AbortError() from None

    async def request_iterator(self) -> AsyncIterator[Any]:
        while True:
            request = await self.read_request()
            if request is EOF:
                return
            yield request

    async def write_response(self, message: Any, *, last: bool = False) -> None:
        """Queues one response message and waits until it is framed (its stream's
        window let it out), so that a streaming handler goes no faster than its caller
        reads. ``last``: the only response of a unary method, which the status follows
        at once; when its stream's window lets it all out, it is not waited for, so that
        the message and the status go out together (in one message of the tunnel RPC)
        rather than one after the other."""
        if self._finished:
            raise asyncio.InvalidStateError("RPC already finished")
        serializer = self.handler.response_serializer
        try:
            data = serializer(message) if serializer is not None else message
        except Exception as e:
            self.context._set_final(
                grpc.StatusCode.INTERNAL, f"Failed to serialize response: {e!r}"
            )
            raise AbortError() from None
        session = self.session
        limit = session.max_send_message_length
        if limit is not None and len(data) > limit:
            self.context._set_final(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(data)} vs. {limit})",
            )
            raise AbortError()
        self.context._headers_sent = True
        if session.conn.send_message(self.stream_id, data):
            session.flush()
            if not last or not session.conn.fits_window(self.stream_id):
                await session.wait_writable(self.stream_id)

    def send_headers(self, pairs: md.MetadataPairs) -> None:
        session = self.session
        try:
            headers = md.to_proto(pairs, binary_base64=session.binary_base64)
        except md.MetadataError as e:
            self.context._set_final(grpc.StatusCode.INTERNAL, str(e))
            raise AbortError() from None
        session.conn.send_headers(self.stream_id, headers)
        session.flush()

    # -- running --------------------------------------------------------------------

    async def _run(self) -> None:
        ctx = self.context
        handler = self.handler
        try:
            behavior = _behavior(handler)
            sync = _is_sync(behavior)
            if handler.request_streaming:
                requests: Any = _SyncRequests(self) if sync else self.request_iterator()
            else:
                requests = await self.read_request()
                if requests is EOF:
                    ctx._set_final(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "the call ended without its request message",
                    )
                    raise AbortError()
            session = self.session
            if session.stall_check is not None and session.stall_check():
                # this side stood still: the caller may have been told the call failed
                raise asyncio.CancelledError()
            if sync:
                result = await self._run_in_thread(behavior, requests)
            else:
                result = behavior(requests, ctx)
            if handler.response_streaming:
                if inspect.isasyncgen(result):
                    async for response in result:
                        await self.write_response(response)
                elif inspect.isawaitable(result):
                    await result
                elif result is not None:
                    for response in result:
                        await self.write_response(response)
            else:
                if inspect.isawaitable(result):
                    result = await result
                if ctx._code in (None, grpc.StatusCode.OK):
                    if result is None:
                        ctx._set_final(grpc.StatusCode.INTERNAL, "the handler returned no response")
                    else:
                        await self.write_response(result, last=True)
        except AbortError:
            pass
        except asyncio.CancelledError:
            reason = self._cancel_reason
            if reason is None:
                raise  # the session or the loop is shutting down
            if reason == "deadline":
                self._close(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", ())
            self._done()
            return
        except Exception as e:
            log.exception("handler for %s raised", self.method)
            ctx._set_final(grpc.StatusCode.UNKNOWN, f"Unexpected {type(e)}: {e}")
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        code = ctx._code or grpc.StatusCode.OK
        self._close(code, ctx._details, ctx._trailing)
        self._done()

    async def _run_in_thread(self, behavior: Callable[..., Any], requests: Any) -> Any:
        """Runs a synchronous method in the session's executor, as grpc.aio does, with a
        :class:`SyncServicerContext`; a response iterator it returns is iterated there
        too (each response written from the thread, waiting for flow control). Returns
        what is left for the event loop: the response of a unary method, or an
        awaitable or async iterator the method returned (None once it streamed)."""
        context = SyncServicerContext(self.context)
        streaming = self.handler.response_streaming

        def call() -> Any:
            result = behavior(requests, context)
            if not streaming or result is None or _is_async_result(result):
                return result
            for response in result:
                self.from_thread(self.write_response(response))
            return None

        executor = self.session.handler_executor or _default_executor()
        return await self._loop.run_in_executor(executor, call)

    def from_thread(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs ``coroutine`` on the call's event loop and waits for its result, from
        a thread of the executor. A call cancelled meanwhile raises ``grpc.RpcError``
        there, as a cancelled call does in a grpc server."""
        loop = self._loop
        if loop.is_closed():
            coroutine.close()
            raise grpc.RpcError("the event loop of the call is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        while True:
            try:
                return future.result(timeout=_THREAD_POLL)
            except concurrent.futures.TimeoutError:
                if loop.is_closed() or not loop.is_running():  # never to be answered
                    future.cancel()
                    raise grpc.RpcError("the event loop of the call stopped") from None
            except (concurrent.futures.CancelledError, asyncio.CancelledError):
                raise grpc.RpcError("the call was cancelled") from None

    def _close(
        self, code: grpc.StatusCode, details: str | None, trailers: md.MetadataPairs
    ) -> None:
        session = self.session
        status, rest = md.status_to_proto(code, details, trailers)
        try:
            proto_trailers = md.to_proto(rest, binary_base64=session.binary_base64)
        except md.MetadataError as e:
            status = md.status_to_proto(grpc.StatusCode.INTERNAL, str(e), ())[0]
            proto_trailers = None
        if session.conn.close_stream(self.stream_id, status, proto_trailers):
            session.flush()

    def _done(self) -> None:
        self._finished = True
        self._request_ready.set()  # a reader still waiting (another task) gets EOF
        self.session.remove_listener(self.stream_id)
        self.session.release_writable(self.stream_id)
        self.context._run_callbacks()


_THREAD_POLL = 1.0  # seconds a handler thread waits on the loop before checking it runs
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _default_executor() -> ThreadPoolExecutor:
    """The pool that runs synchronous servicer methods when the options name none:
    one per process, of ``min(32, CPUs + 4)`` threads (Python's default), created
    when first needed."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(thread_name_prefix="grpctunnel-handler")
        return _executor


def _is_sync(behavior: Callable[..., Any]) -> bool:
    """Whether a method is synchronous (run in a thread), as grpc.aio decides it."""
    return not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior))


def _is_async_result(result: Any) -> bool:
    return inspect.isawaitable(result) or inspect.isasyncgen(result)


class _SyncRequests(Iterator[Any]):
    """The request iterator a synchronous request-streaming method gets: each
    ``next()`` waits, in the method's thread, for the next request on the loop."""

    def __init__(self, call: ServerCall) -> None:
        self._call = call

    def __iter__(self) -> _SyncRequests:
        return self

    def __next__(self) -> Any:
        request = self._call.from_thread(self._call.read_request())
        if request is EOF:
            raise StopIteration
        return request


def _behavior(handler: grpc.RpcMethodHandler[Any, Any]) -> Callable[..., Any]:
    if handler.request_streaming and handler.response_streaming:
        behavior = handler.stream_stream
    elif handler.request_streaming:
        behavior = handler.stream_unary
    elif handler.response_streaming:
        behavior = handler.unary_stream
    else:
        behavior = handler.unary_unary
    if behavior is None:
        raise TypeError("method handler has no behavior for its call kind")
    return behavior  # type: ignore[no-any-return]


class TunnelServicerContext(grpc.aio.ServicerContext):  # type: ignore[type-arg]
    """The ``grpc.aio.ServicerContext`` a handler sees for a tunnelled call."""

    def __init__(self, call: ServerCall, invocation_metadata: md.MetadataPairs) -> None:
        self._call = call
        self._invocation_metadata = invocation_metadata
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing: md.MetadataPairs = ()
        self._headers_sent = False
        self._cancelled = False
        self._done = False
        self._callbacks: list[Callable[[Any], None]] = []

    # the tunnel this call came through
    def tunnel_session(self) -> ServingSession:
        """The session of the tunnel this call came through."""
        return self._call.session

    def tunnel_metadata(self) -> md.MetadataPairs:
        """The metadata the tunnel RPC itself was opened with (e.g. its credentials)."""
        return self._call.session.tunnel_metadata

    async def read(self) -> Any:
        if self._call.handler.request_streaming is False:
            raise grpc.aio.UsageError("read() is only for methods that stream requests")  # type: ignore[attr-defined]
        return await self._call.read_request()

    async def write(self, message: Any) -> None:
        await self._call.write_response(message)

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        if self._headers_sent:
            raise grpc.aio.UsageError("initial metadata was already sent")  # type: ignore[attr-defined]
        self._headers_sent = True
        self._call.send_headers(tuple(initial_metadata))

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        if code == grpc.StatusCode.OK:
            log.error("abort() called with StatusCode.OK; returning UNKNOWN")
            code = grpc.StatusCode.UNKNOWN
        self._set_final(code, details)
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise AbortError()

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self) -> Any:
        return self._trailing

    def invocation_metadata(self) -> Any:
        return self._invocation_metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code or grpc.StatusCode.OK

    def details(self) -> str:
        return self._details or ""

    def set_compression(self, compression: grpc.Compression) -> None:
        pass  # the tunnel RPC's own compression applies to everything in it

    def disable_next_message_compression(self) -> None:
        pass

    def peer(self) -> str:
        return self._call.session.peer

    def peer_identities(self) -> Iterable[bytes] | None:
        return None

    def peer_identity_key(self) -> str | None:
        return None

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return {}

    def time_remaining(self) -> float | None:  # type: ignore[override]
        deadline = self._call.deadline
        if deadline is None:
            return None
        return max(deadline - asyncio.get_running_loop().time(), 0.0)

    def cancelled(self) -> bool:
        return self._cancelled

    def requests_complete(self) -> bool:
        """Whether the caller half-closed: its requests are all in. Unlike grpc.aio,
        whose request stream ends alike for a caller that half-closed and one that
        cancelled, a tunnelled call is told each apart (a cancel ends it at once)."""
        return self._call.half_closed and not self._cancelled

    def done(self) -> bool:
        return self._done

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._done:
            callback(self)
        else:
            self._callbacks.append(callback)

    # -- for ServerCall -------------------------------------------------------------

    def _set_final(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._details = details

    def _mark_cancelled(self) -> None:
        self._cancelled = True

    def _run_callbacks(self) -> None:
        self._done = True
        for callback in self._callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("servicer context done callback failed")
        self._callbacks.clear()


class SyncServicerContext:
    """What a synchronous servicer method, run in a thread, gets as its context: the
    methods of grpc.aio's own context for such methods (those of a sync
    ``grpc.ServicerContext`` that make sense here), each safe to call from the thread.

    ``abort()`` and ``abort_with_status()`` raise, ending the method with that status;
    ``send_initial_metadata()`` waits until the headers are queued on the loop;
    ``set_code()``, ``set_details()``, ``set_trailing_metadata()`` take effect when the
    method returns. ``is_active()`` turns False once the call is cancelled (deadline,
    caller, lost tunnel): a thread cannot be interrupted, so a long method should look
    at it; after that, reading a request or writing a response raises ``grpc.RpcError``.
    ``add_callback(fn)`` calls ``fn()`` on the event loop when the call ends.
    """

    def __init__(self, context: TunnelServicerContext) -> None:
        self._context = context
        self._call = context._call

    # the tunnel this call came through
    def tunnel_metadata(self) -> md.MetadataPairs:
        return self._context.tunnel_metadata()

    def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        if code == grpc.StatusCode.OK:
            log.error("abort() called with StatusCode.OK; returning UNKNOWN")
            code = grpc.StatusCode.UNKNOWN
        self._context._set_final(code, details)
        if trailing_metadata:
            self._context._trailing = tuple(trailing_metadata)
        raise AbortError()

    def abort_with_status(self, status: grpc.Status) -> NoReturn:
        self.abort(status.code, status.details, status.trailing_metadata)

    def send_initial_metadata(self, initial_metadata: Any) -> None:
        self._call.from_thread(self._context.send_initial_metadata(initial_metadata))

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._context.set_trailing_metadata(trailing_metadata)

    def trailing_metadata(self) -> Any:
        return self._context.trailing_metadata()

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._context.set_details(details)

    def code(self) -> grpc.StatusCode:
        return self._context.code()

    def details(self) -> str:
        return self._context.details()

    def set_compression(self, compression: grpc.Compression) -> None:
        pass

    def disable_next_message_compression(self) -> None:
        pass

    def peer(self) -> str:
        return self._context.peer()

    def peer_identities(self) -> Iterable[bytes] | None:
        return None

    def peer_identity_key(self) -> str | None:
        return None

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return {}

    def time_remaining(self) -> float | None:
        deadline = self._call.deadline
        if deadline is None:
            return None
        return max(deadline - self._call._loop.time(), 0.0)  # the loop's clock, any thread

    def is_active(self) -> bool:
        return not (self._context.cancelled() or self._context.done())

    def cancelled(self) -> bool:
        return self._context.cancelled()

    def add_callback(self, callback: Callable[[], Any]) -> bool:
        self._call._loop.call_soon_threadsafe(
            self._context.add_done_callback, lambda _context: callback()
        )
        return True


__all__: Sequence[str] = [
    "ServerCall",
    "ServiceRegistrar",
    "ServiceRegistry",
    "ServingSession",
    "ServingStream",
    "SyncServicerContext",
    "TunnelServicerContext",
]
