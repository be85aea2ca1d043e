"""Runs one tunnel over one tunnel RPC: the read loop, the write loop, and the table of
the tunnelled calls on it.

A session owns a protocol connection (``grpctunnel.protocol``) and a
:class:`FrameStream`: the grpc.aio call object of the tunnel RPC on the dialling side,
its servicer context on the accepting side (both offer ``read()`` and ``write()``). The
read loop feeds every frame to the connection and hands the resulting events to the
stream's listener; the write loop writes whatever the connection has to send, woken
whenever there may be something. When the tunnel RPC ends, for whatever reason, every
call on it is failed and every handler cancelled at once.

The calling and serving sides (``grpctunnel.calls``, ``grpctunnel.serving``) subclass
:class:`Session`; ``grpctunnel.opening`` builds either from the tunnel's opening.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

import grpc
from google.protobuf.message import DecodeError

from grpctunnel import metadata as md
from grpctunnel.protocol import (
    CallingConnection,
    ProtocolError,
    ServingConnection,
)
from grpctunnel.protocol import events as ev
from grpctunnel.protocol.batch import Encoded
from grpctunnel.protocol.wire import MAX_MESSAGE_SIZE
from grpctunnel.v1 import tunnel_pb2

if TYPE_CHECKING:
    from grpctunnel.opening import TunnelOpening

log = logging.getLogger("grpctunnel")

EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]

Conn = TypeVar("Conn", CallingConnection, ServingConnection)
Received = TypeVar("Received", covariant=True)
Sent = TypeVar("Sent", contravariant=True)
# the frames of one side: what it receives, what it sends (the same two types on both
# sides, crossed; see grpctunnel.opening for the two pairings)
Frame = tunnel_pb2.ClientToServer | tunnel_pb2.ServerToClient
In = TypeVar("In", bound=Frame)
Out = TypeVar("Out", bound=Frame)


class FrameStream(Protocol[Received, Sent]):
    """What a session reads frames from and writes frames to: the tunnel RPC.

    ``read()`` returns the next frame, or ``grpc.aio.EOF`` once the other side ended
    its half of the RPC (grpc's own type stubs leave the sentinel out as well)."""

    async def read(self) -> Received: ...

    async def write(self, frame: Sent, /) -> None: ...


class StreamListener(Protocol):
    """A tunnelled call (calling side) or handler (serving side) on a session."""

    def on_event(self, event: ev.Event) -> None: ...

    def on_tunnel_closed(self, reason: str) -> None: ...


class TunnelClosed(Exception):
    """Why a session ended: ``code`` and ``details`` as the tunnel RPC should report.

    ``code`` is the real one: the status the tunnel RPC ended with when it failed
    (ABORTED for a tunnel taken over, UNAUTHENTICATED for a refused credential, ...),
    the one it was closed with from this side, INTERNAL for a bug in our own event
    handling. The calls on the tunnel fail with UNAVAILABLE whatever it is (INTERNAL
    for such a bug): see :attr:`Session.close_code`."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Session(Generic[Conn, In, Out]):
    """One tunnel: a connection, a frame stream, and the calls on it.

    ``opening`` says who the peer is, what metadata it opened the tunnel with, and
    what the opening agreed (binary metadata as base64, frame batches);
    ``max_send_message_length`` bounds each message this side sends (None: only the
    protocol's own bound, a size that fits the frame's uint32, 4 GiB less a byte)."""

    def __init__(
        self,
        stream: FrameStream[In, Out],
        conn: Conn,
        opening: TunnelOpening,
        *,
        max_send_message_length: int | None = None,
    ) -> None:
        self.stream: FrameStream[In, Out] = stream
        self.conn: Conn = conn
        self.peer = opening.peer
        self.tunnel_metadata = opening.metadata
        self.binary_base64 = opening.extended
        self.max_send_message_length = (
            MAX_MESSAGE_SIZE
            if max_send_message_length is None
            else min(max_send_message_length, MAX_MESSAGE_SIZE)
        )
        self._listeners: dict[int, StreamListener] = {}
        self.closed = False
        self.close_reason = ""
        # what the calls on the tunnel failed with when it ended: UNAVAILABLE, or
        # INTERNAL when our own event handling broke
        self.close_code = grpc.StatusCode.UNAVAILABLE
        self.error: TunnelClosed | None = None  # set when the tunnel ended abnormally
        self._wake = asyncio.Event()
        self._writable: dict[int, asyncio.Future[None]] = {}
        self._done = asyncio.get_running_loop().create_future()
        self._loops: tuple[asyncio.Future[None], ...] = ()
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._writing = False  # the write loop is writing a batch of frames
        self._drain_waiters: list[asyncio.Future[None]] = []

    # -- for the adapters -----------------------------------------------------------

    def flush(self) -> None:
        """Wakes the write loop: the connection may have frames to send."""
        self._wake.set()

    async def wait_writable(self, stream_id: int) -> None:
        """Waits until the stream's queued message bytes have all been framed (its
        send window allowed them), or the stream or tunnel is over."""
        if self.closed or not self.conn.queued_bytes(stream_id):
            return
        fut = self._writable.get(stream_id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._writable[stream_id] = fut
        await asyncio.shield(fut)

    def release_writable(self, stream_id: int) -> None:
        """Wakes whoever waits in :meth:`wait_writable` for a stream that has ended
        (its queued bytes will never be framed)."""
        fut = self._writable.pop(stream_id, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    @property
    def listeners(self) -> Mapping[int, StreamListener]:
        """The calls in progress on the tunnel, by stream id (read-only: calls come
        and go through :meth:`add_listener` and :meth:`remove_listener`)."""
        return self._listeners

    @property
    def active_calls(self) -> int:
        """How many calls are in progress on the tunnel."""
        return len(self._listeners)

    def add_listener(self, stream_id: int, listener: StreamListener) -> None:
        """Routes the events of stream ``stream_id`` to ``listener`` until
        :meth:`remove_listener`, or until the tunnel ends."""
        self._listeners[stream_id] = listener

    def remove_listener(self, stream_id: int) -> None:
        """Forgets a finished call; wakes ``wait_idle`` when it was the last."""
        self._listeners.pop(stream_id, None)
        if not self._listeners and self._idle_waiters:
            for fut in self._idle_waiters:
                if not fut.done():
                    fut.set_result(None)
            self._idle_waiters.clear()

    async def wait_idle(self, timeout: float | None) -> bool:
        """Waits up to ``timeout`` seconds until no call is in progress on the tunnel
        and the frames that ended the last ones have been written. Returns whether it
        became idle."""

        async def idle() -> None:
            if self._listeners and not self.closed:
                fut = asyncio.get_running_loop().create_future()
                self._idle_waiters.append(fut)
                await asyncio.shield(fut)
            await self.drain()

        try:
            await asyncio.wait_for(idle(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def drain(self) -> None:
        """Waits until every frame queued so far has been written to the tunnel RPC
        (or the tunnel is over): a call's final frames, before closing the tunnel."""
        if self.closed or (not self._writing and not self.conn.wants_to_send()):
            return
        fut = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        self._wake.set()
        await asyncio.shield(fut)

    async def wait_closed(self) -> None:
        """Waits until the tunnel has ended (its calls failed, its handlers cancelled)."""
        await asyncio.shield(self._done)

    def close(self, reason: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        """Ends the tunnel from this side: every call on it fails (UNAVAILABLE with
        ``reason``), every handler is cancelled, and :meth:`run` raises
        :class:`TunnelClosed`."""
        if self.closed:
            return
        self.error = TunnelClosed(code, reason)
        self._teardown(reason)
        for task in self._loops:
            task.cancel()

    # -- the loops ------------------------------------------------------------------

    async def run(self) -> None:
        """Runs the tunnel until its RPC ends. Raises :class:`TunnelClosed` when it
        ended abnormally (protocol error, broken RPC); returns on a clean end."""
        writer = asyncio.ensure_future(self._write_loop())
        reader = asyncio.ensure_future(self._read_loop())
        self._loops = (reader, writer)
        reason = "tunnel closed"
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if self.closed or task.cancelled():
                    continue  # close() was called
                exc = task.exception()
                if exc is not None:
                    raise exc
            reason = "tunnel closed by peer"
        except ProtocolError as e:
            self.error = TunnelClosed(_grpc_code(e.code), f"tunnel protocol error: {e.message}")
            log.warning("tunnel with %s ended: protocol error: %s", self.peer, e.message)
            reason = self.error.details
        except EventHandlingError as e:  # a bug of ours: not a lost tunnel
            cause = e.__cause__
            log.error(
                "tunnel with %s ended: error handling %s of stream %d",
                self.peer,
                type(e.event).__name__,
                e.event.stream_id,
                exc_info=cause,
            )
            self.error = TunnelClosed(
                grpc.StatusCode.INTERNAL, f"internal error in the tunnel: {cause!r}"
            )
            reason = self.error.details
            self._teardown(reason, grpc.StatusCode.INTERNAL)
        except grpc.aio.AioRpcError as e:
            # the RPC's own code travels on (ABORTED: taken over, UNAUTHENTICATED, ...);
            # the calls on the tunnel still fail with UNAVAILABLE
            code = e.code()
            self.error = TunnelClosed(
                grpc.StatusCode.UNAVAILABLE if code == grpc.StatusCode.OK else code,
                f"tunnel lost: {e.details()}",
            )
            reason = self.error.details
        except asyncio.CancelledError:
            reason = "tunnel closed"
            self._teardown(reason)
            raise
        except DecodeError as e:  # bytes that are no frame at all
            self.error = TunnelClosed(
                grpc.StatusCode.INVALID_ARGUMENT, f"tunnel protocol error: malformed frame: {e}"
            )
            log.warning("tunnel with %s ended: %s", self.peer, self.error.details)
            reason = self.error.details
        except Exception as e:  # a broken frame stream, a failed write
            self.error = TunnelClosed(grpc.StatusCode.UNAVAILABLE, f"tunnel lost: {e!r}")
            reason = self.error.details
        finally:
            for task in (reader, writer):
                task.cancel()
            # before any await: a cancellation arriving while the loops wind down (the
            # tunnel RPC being cancelled just after it ended) must not skip the teardown
            self._teardown(reason)
            await asyncio.gather(reader, writer, return_exceptions=True)
        if self.error is not None:
            raise self.error

    async def _read_loop(self) -> None:
        # every message read is a plain frame, or a batch of them (the connection
        # checks it was negotiated); the connection takes them in one at a time, so
        # that a listener acts on each frame's events before the next is taken in.
        # Backpressure: while the connection's unsent control frames (refusals, window
        # updates, cancels) are backlogged, the peer is not reading what we owe it, so
        # we read nothing more of it until the write loop has written them all; its
        # writes then stall in the transport (see grpctunnel.protocol.connection).
        read = self.stream.read
        conn = self.conn
        unbatch = conn.unbatch
        receive = conn.receive
        listeners = self.listeners
        stalled = self.stall_check  # (serving side) frames read after a stall are dropped
        while True:
            frame: Any = await read()  # the connection's In frames (no type ties the two)
            if frame is EOF:
                return
            if stalled is not None and stalled():
                return  # the tunnel was dropped: nothing read now is acted on
            for one in unbatch(frame):
                while conn.output_backlogged:
                    await self.drain()
                    if self.closed:
                        return
                for event in receive(one):
                    listener = listeners.get(event.stream_id)
                    try:
                        if listener is not None:
                            listener.on_event(event)
                        else:
                            self.on_unclaimed_event(event)
                    except Exception as e:
                        raise EventHandlingError(event) from e
            if conn.wants_to_send():
                self._wake.set()

    async def _write_loop(self) -> None:
        # the connection's frames are this side's Out frames, or frames in their wire
        # form when the stream's serializer takes them (no type ties Conn to Out)
        write = cast("Callable[[Frame | Encoded], Awaitable[None]]", self.stream.write)
        take = self.conn.take_frames
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            self._writing = True
            while True:
                frames = take()
                if not frames:
                    break
                if self._writable:
                    self._notify_writable()
                for frame in frames:
                    await write(frame)
            self._writing = False
            if self._drain_waiters:
                _resolve_all(self._drain_waiters)

    def _notify_writable(self) -> None:
        queued = self.conn.queued_bytes
        for stream_id in [s for s in self._writable if not queued(s)]:
            fut = self._writable.pop(stream_id)
            if not fut.done():
                fut.set_result(None)

    def on_unclaimed_event(self, event: ev.Event) -> None:
        """An event for a stream with no listener (overridden by the serving side,
        where StreamOpened creates the listener)."""

    # whether frames read now must be dropped, the tunnel with them, because this
    # process or its event loop was stalled (set by the serving side; None: never)
    stall_check: Callable[[], bool] | None = None

    def _teardown(self, reason: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.close_code = code
        listeners = list(self._listeners.values())
        self._listeners.clear()
        for listener in listeners:
            try:
                listener.on_tunnel_closed(reason)
            except Exception:  # pragma: no cover - a listener bug must not stop teardown
                log.exception("error while failing a call on a closed tunnel")
        for fut in self._writable.values():
            if not fut.done():
                fut.set_result(None)
        self._writable.clear()
        for fut in self._idle_waiters:
            if not fut.done():
                fut.set_result(None)
        self._idle_waiters.clear()
        _resolve_all(self._drain_waiters)
        if not self._done.done():
            self._done.set_result(None)


class EventHandlingError(Exception):
    """A listener failed to handle an event of the connection: a bug in this library
    (or in a hook it calls), which ends the tunnel with INTERNAL (see ``__cause__``)."""

    def __init__(self, event: ev.Event) -> None:
        super().__init__(f"error handling {type(event).__name__} of stream {event.stream_id}")
        self.event = event


def _resolve_all(futures: list[asyncio.Future[None]]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(None)
    futures.clear()


def _grpc_code(code: int) -> grpc.StatusCode:
    return md.code_from_number(int(code))
