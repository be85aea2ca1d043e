"""The calls a :class:`~grpctunnel.channel.TunnelChannel` makes, and the session that
carries them.

:class:`CallingSession` is a session (``grpctunnel.session``) on the end of a tunnel that
opens calls. Each call is one stream on it and a grpc.aio call object to the caller
(:class:`UnaryUnaryCall` and its kin): awaitable, async-iterable, ``read``/``write``/
``done_writing``, metadata, status, ``cancel``, failing with ``grpc.aio.AioRpcError``.
A call asks the channel's session source for its session, and keeps it for its life.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator
from typing import TYPE_CHECKING, Any

import grpc

from grpctunnel import metadata as md
from grpctunnel.protocol import CallingConnection, UsageError
from grpctunnel.protocol import events as ev
from grpctunnel.protocol.wire import message_input
from grpctunnel.session import EOF, FrameStream, Session
from grpctunnel.v1 import tunnel_pb2

if TYPE_CHECKING:
    from grpctunnel.channel import SessionSource
    from grpctunnel.opening import TunnelOpening

log = logging.getLogger("grpctunnel")

Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None
# the tunnel RPC as the calling side sees it: it receives responses, sends requests
CallingStream = FrameStream[tunnel_pb2.ServerToClient, tunnel_pb2.ClientToServer]

_CANCELLED_DETAILS = "Locally cancelled by application!"
_DEADLINE_DETAILS = "Deadline Exceeded"


class CallingSession(
    Session[CallingConnection, tunnel_pb2.ServerToClient, tunnel_pb2.ClientToServer]
):
    """A session on the end of a tunnel that opens calls."""

    def __init__(
        self,
        stream: CallingStream,
        conn: CallingConnection,
        opening: TunnelOpening,
        *,
        max_send_message_length: int | None = None,
    ) -> None:
        super().__init__(stream, conn, opening, max_send_message_length=max_send_message_length)
        self._ready = asyncio.get_running_loop().create_future()
        if self.conn.ready:
            self._ready.set_result(None)

    async def wait_ready(self) -> None:
        """Waits for the peer's settings (when negotiated). Raises the reason if the
        tunnel ends first."""
        await asyncio.shield(self._ready)

    @property
    def is_ready(self) -> bool:
        return self._ready.done() and not self._ready.exception() and not self.closed

    async def wait_established(self, timeout: float | None) -> bool:
        """Waits up to ``timeout`` seconds (None: without limit) for the peer's settings
        (when negotiated): True once they came. False if the tunnel ended first, or if
        they did not come in time, in which case the tunnel is closed with
        DEADLINE_EXCEEDED ("tunnel not established within ...")."""
        if self.is_ready or self.closed:
            return self.is_ready
        closed = asyncio.ensure_future(self.wait_closed())
        try:
            await asyncio.wait(
                {self._ready, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closed.cancel()
        if self.is_ready:
            return True
        if not self.closed:
            self.close(
                f"tunnel not established within {timeout:g}s: no settings frame from the peer",
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        return False

    def on_unclaimed_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.SettingsReceived) and not self._ready.done():
            self._ready.set_result(None)

    def cancel_calls(self) -> None:
        """Cancels every call in progress (as closing a grpc.aio channel does): each
        ends with CANCELLED and the peer is told."""
        for call in list(self.listeners.values()):
            if isinstance(call, TunnelCall):
                call.cancel()


def unavailable_error(details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None
    )


class TunnelCall:
    """One tunnelled call, seen from the caller. The subclasses below only say
    which grpc.aio call type they are and whether requests and responses stream."""

    _request_streaming = False
    _response_streaming = False

    def __init__(
        self,
        source: SessionSource,
        method: str,
        serializer: Serializer,
        deserializer: Deserializer,
        request: Any,
        timeout: float | None,
        metadata: Any,
        wait_for_ready: bool,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._metadata = tuple(metadata) if metadata else ()
        self._deadline = self._loop.time() + timeout if timeout is not None else None
        self._session: CallingSession | None = None
        self._stream_id = 0
        self._messages: deque[bytes | memoryview] = deque()
        # set when a message arrives or the call ends: wakes every reader waiting
        self._message_ready = asyncio.Event()
        self._opened = asyncio.Event()
        self._headers: grpc.aio.Metadata | None = None
        self._headers_event = asyncio.Event()
        self._done_event = asyncio.Event()
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailers = grpc.aio.Metadata()
        self._cancelled = False
        self._writing_done = False
        self._callbacks: list[Callable[[Any], None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._request_task: asyncio.Task[None] | None = None
        self._opening_task: asyncio.Task[None] | None = None

        first: bytes | None = None
        if not self._request_streaming:
            first = self._serialize_or_fail(request)
            if first is None:
                return
        if self._deadline is not None:
            self._timer = self._loop.call_at(self._deadline, self._on_deadline)
        session = source.pick()
        if session is not None:
            self._open(session, first)
        elif wait_for_ready:
            self._opening_task = self._loop.create_task(self._open_when_ready(source, first))
        else:
            self._finish(grpc.StatusCode.UNAVAILABLE, source.unavailable_details())
            return
        if self._request_streaming and request is not None:
            self._request_task = self._loop.create_task(self._consume_requests(request))

    # -- opening and sending --------------------------------------------------------

    async def _open_when_ready(self, source: SessionSource, first: bytes | None) -> None:
        try:
            session = await source.wait()
        except grpc.aio.AioRpcError as e:
            self._finish(e.code(), e.details() or "")
            return
        if not self.done():
            self._open(session, first)

    def _open(self, session: CallingSession, first: bytes | None) -> None:
        pairs = self._metadata
        if self._deadline is not None:
            remaining = self._deadline - self._loop.time()
            pairs = (*pairs, (md.TIMEOUT_HEADER, md.encode_timeout(remaining)))
        try:
            headers = md.to_proto(pairs, binary_base64=session.binary_base64)
        except md.MetadataError as e:
            self._finish(grpc.StatusCode.INTERNAL, str(e))
            return
        if session.closed:
            self._finish(grpc.StatusCode.UNAVAILABLE, session.close_reason)
            return
        conn = session.conn
        try:
            self._stream_id = conn.open_stream(
                self._method, headers, response_streaming=self._response_streaming
            )
        except UsageError as e:  # a malformed method name: never sent (it crashes Go peers)
            self._finish(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        self._session = session
        session.add_listener(self._stream_id, self)
        if first is not None:
            conn.send_message(self._stream_id, first)
            conn.half_close(self._stream_id)
            self._writing_done = True
        session.flush()
        self._opened.set()

    def _serialize_or_fail(self, request: Any) -> bytes | None:
        try:
            data = self._serializer(request) if self._serializer is not None else request
        except Exception as e:
            self._finish(grpc.StatusCode.INTERNAL, f"Exception serializing request: {e!r}")
            return None
        if not isinstance(data, bytes | bytearray | memoryview):
            self._finish(
                grpc.StatusCode.INTERNAL, f"request serialized to {type(data).__name__}, not bytes"
            )
            return None
        data = bytes(data)
        return data

    async def _write(self, request: Any) -> None:
        if self.done():
            await self._raise_if_failed()
            raise asyncio.InvalidStateError("RPC already finished")
        if self._writing_done:
            raise asyncio.InvalidStateError("RPC is half closed after calling done_writing")
        data = self._serialize_or_fail(request)
        if data is None:
            await self._raise_if_failed()
            return
        await self._wait_opened()
        session = self._session
        if session is None or self.done():
            await self._raise_if_failed()
            raise asyncio.InvalidStateError("RPC already finished")
        limit = session.max_send_message_length
        if limit is not None and len(data) > limit:
            self._abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(data)} vs. {limit})",
            )
            await self._raise_if_failed()
        session.conn.send_message(self._stream_id, data)
        session.flush()
        try:
            await session.wait_writable(self._stream_id)
        except asyncio.CancelledError:  # as in grpc.aio: cancelling a write cancels the call
            self.cancel()
            raise
        if self.done():  # the call ended while the message waited for flow credit
            await self._raise_if_failed()

    async def _done_writing(self) -> None:
        if self.done() or self._writing_done:
            return
        self._writing_done = True
        await self._wait_opened()
        if self._session is not None and not self.done():
            self._session.conn.half_close(self._stream_id)
            self._session.flush()

    async def _consume_requests(self, requests: Any) -> None:
        try:
            if isinstance(requests, AsyncIterable):
                async for request in requests:
                    await self._write(request)
            else:
                for request in requests:
                    await self._write(request)
            await self._done_writing()
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
            pass  # the call ended; its status says why
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._abort(grpc.StatusCode.UNKNOWN, f"request iterator raised {e!r}")

    async def _wait_opened(self) -> None:
        if self._opened.is_set() or self.done():
            return
        opened = asyncio.ensure_future(self._opened.wait())
        finished = asyncio.ensure_future(self._done_event.wait())
        try:
            await asyncio.wait({opened, finished}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            opened.cancel()
            finished.cancel()

    # -- events from the session ----------------------------------------------------

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.MessageReceived):
            self._messages.append(event.data)
            self._message_ready.set()
        elif isinstance(event, ev.HeadersReceived):
            self._set_headers(event.headers)
        elif isinstance(event, ev.StreamClosed):
            session = self._session
            assert session is not None
            self._set_headers(None)
            trailers = md.from_proto(event.trailers, binary_base64=session.binary_base64)
            code, details, trailers = md.status_from_proto(event.status, trailers)
            self._finish(code, details, trailers)
        elif isinstance(event, ev.StreamFailed):
            self._abort(md.code_from_number(int(event.code)), event.message, tell_peer=False)

    def on_tunnel_closed(self, reason: str) -> None:
        session = self._session
        code = session.close_code if session is not None else grpc.StatusCode.UNAVAILABLE
        self._abort(code, reason, tell_peer=False)

    def _set_headers(self, headers: Any) -> None:
        if self._headers is not None:
            return
        pairs = (
            md.from_proto(headers, binary_base64=self._session.binary_base64)
            if headers is not None and self._session is not None
            else ()
        )
        self._headers = grpc.aio.Metadata(*pairs)
        self._headers_event.set()

    # -- ending ---------------------------------------------------------------------

    def _on_deadline(self) -> None:
        self._timer = None
        self._abort(grpc.StatusCode.DEADLINE_EXCEEDED, _DEADLINE_DETAILS)

    def _abort(self, code: grpc.StatusCode, details: str, *, tell_peer: bool = True) -> None:
        """Ends the call from this side: the peer is told (cancel) and whatever it
        still sends is ignored."""
        if self.done():
            return
        self._messages.clear()
        session = self._session
        if session is not None:
            if tell_peer:
                session.conn.cancel(self._stream_id)
                session.flush()
        self._finish(code, details)

    def _finish(self, code: grpc.StatusCode, details: str, trailers: md.MetadataPairs = ()) -> None:
        if self._code is not None:
            return
        self._code = code
        self._details = details
        self._trailers = grpc.aio.Metadata(*trailers)
        if self._headers is None:
            self._headers = grpc.aio.Metadata()
            self._headers_event.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        session = self._session
        if session is not None:
            session.remove_listener(self._stream_id)
            session.release_writable(self._stream_id)
        if self._request_task is not None and not self._request_task.done():
            self._request_task.cancel()
        if self._opening_task is not None and not self._opening_task.done():
            self._opening_task.cancel()
        self._message_ready.set()
        self._done_event.set()
        for callback in self._callbacks:
            self._loop.call_soon(callback, self)
        self._callbacks.clear()

    # -- grpc.aio.Call --------------------------------------------------------------

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._code is not None

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - self._loop.time(), 0.0)

    def cancel(self) -> bool:
        if self.done():
            return False
        self._cancelled = True
        self._abort(grpc.StatusCode.CANCELLED, _CANCELLED_DETAILS)
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self.done():
            self._loop.call_soon(callback, self)
        else:
            self._callbacks.append(callback)

    async def initial_metadata(self) -> grpc.aio.Metadata:
        await self._guarded_wait(self._headers_event)
        assert self._headers is not None
        return self._headers

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        await self._guarded_wait(self._done_event)
        return self._trailers

    async def code(self) -> grpc.StatusCode:
        await self._guarded_wait(self._done_event)
        assert self._code is not None
        return self._code

    async def details(self) -> str:
        await self._guarded_wait(self._done_event)
        return self._details

    async def wait_for_connection(self) -> None:
        await self._wait_opened()
        await self._raise_if_failed()

    def __repr__(self) -> str:
        state = self._code.name if self._code is not None else "in progress"
        return f"<{type(self).__name__} {self._method} {state}>"

    # -- helpers --------------------------------------------------------------------

    async def _guarded_wait(self, event: asyncio.Event) -> None:
        """Waits; if the waiting task is cancelled, the call is cancelled with it."""
        if event.is_set():
            return
        try:
            await event.wait()
        except asyncio.CancelledError:
            self.cancel()
            raise

    def _error(self) -> grpc.aio.AioRpcError:
        assert self._code is not None
        return grpc.aio.AioRpcError(
            self._code,
            self._headers or grpc.aio.Metadata(),
            self._trailers,
            self._details,
            None,
        )

    async def _raise_if_failed(self) -> None:
        if self._code is None or self._code == grpc.StatusCode.OK:
            return
        if self._cancelled:
            raise asyncio.CancelledError()
        raise self._error()

    async def _read(self) -> Any:
        while not self._messages:
            if self.done():
                await self._raise_if_failed()
                return EOF
            # every reader waits on the one event: a second concurrent read() neither
            # replaces the first's wake-up nor misses the end of the call
            self._message_ready.clear()
            try:
                await self._message_ready.wait()
            except asyncio.CancelledError:
                self.cancel()
                raise
        data = self._messages.popleft()
        if self._session is not None:
            self._session.conn.message_consumed(self._stream_id)
            if self._session.conn.wants_to_send():
                self._session.flush()
        deserializer = self._deserializer
        data = message_input(data, deserializer)
        if deserializer is None:
            return data
        try:
            return deserializer(data)  # type: ignore[arg-type]  # a view: protobuf's FromString
        except Exception as e:
            self._abort(grpc.StatusCode.INTERNAL, f"Exception deserializing response: {e!r}")
            raise self._error() from None

    async def _response(self) -> Any:
        await self._guarded_wait(self._done_event)
        await self._raise_if_failed()
        if not self._messages:
            self._code = grpc.StatusCode.INTERNAL
            self._details = "the server closed the call without sending a response"
            raise self._error()
        return await self._read()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            message = await self._read()
            if message is EOF:
                return
            yield message


class UnaryUnaryCall(TunnelCall, grpc.aio.UnaryUnaryCall[Any, Any]):  # type: ignore[misc]
    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()


class UnaryStreamCall(TunnelCall, grpc.aio.UnaryStreamCall[Any, Any]):  # type: ignore[misc]
    _response_streaming = True

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def read(self) -> Any:
        return await self._read()


class StreamUnaryCall(TunnelCall, grpc.aio.StreamUnaryCall[Any, Any]):  # type: ignore[misc]
    _request_streaming = True

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def write(self, request: Any) -> None:
        self._check_no_iterator()
        await self._write(request)

    async def done_writing(self) -> None:
        self._check_no_iterator()
        await self._done_writing()

    def _check_no_iterator(self) -> None:
        if self._request_task is not None:
            raise grpc.aio.UsageError(
                "write() is not allowed on a call made with a request iterator"
            )  # type: ignore[attr-defined]


class StreamStreamCall(StreamUnaryCall, grpc.aio.StreamStreamCall[Any, Any]):  # type: ignore[misc]
    _response_streaming = True

    def __await__(self) -> Generator[Any, None, Any]:  # not awaitable in grpc.aio either
        raise TypeError("a stream-stream call is not awaitable; iterate it or call read()")

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def read(self) -> Any:
        return await self._read()


__all__ = [
    "CallingSession",
    "CallingStream",
    "StreamStreamCall",
    "StreamUnaryCall",
    "TunnelCall",
    "UnaryStreamCall",
    "UnaryUnaryCall",
    "unavailable_error",
]
