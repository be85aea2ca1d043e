"""An in-memory tunnel pair for testing servicers through a tunnel, with no sockets.

::

    async with TunnelPair() as pair:
        echo_pb2_grpc.add_EchoServicer_to_server(MyEcho(), pair.server)
        reply = await echo_pb2_grpc.EchoStub(pair.channel).Echo(request)

``pair.server`` accepts what a ``grpc.aio.Server`` accepts from generated code (and
``register_service``); ``pair.channel`` is a ``grpc.aio.Channel``. Frames are
serialized on the way through, exactly as on the wire, so what passes here passes a
real tunnel. ``extended=False`` makes both ends behave like a Go peer (64 KiB windows,
16 KiB chunks, binary metadata as text); ``negotiate=False`` uses protocol revision zero.

By default the pair is a forward tunnel: the side that calls dialled, as with a
:class:`~grpctunnel.PendingChannel`, and closing ``pair.channel`` ends the tunnel.
``reverse=True`` makes it a reverse tunnel: the side that serves dialled, as with a
:class:`~grpctunnel.ReverseTunnelServer`, and ``pair.channel`` is the channel of the
:class:`~grpctunnel.ReverseTunnel` the accepting side holds (``pair.reverse_tunnel``).
Either way ``tunnel_metadata`` is what the dialling side opened the tunnel with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from grpctunnel import metadata as md
from grpctunnel.calls import CallingSession
from grpctunnel.channel import TunnelChannel
from grpctunnel.client import ForwardTunnel, ServedTunnel
from grpctunnel.opening import TunnelOpening, calling_session, serving_session
from grpctunnel.options import TunnelOptions
from grpctunnel.protocol.wire import decode_client_frame, decode_server_frame
from grpctunnel.reverse import ReverseTunnel
from grpctunnel.serving import ServiceRegistrar, ServingSession
from grpctunnel.session import EOF, Frame, TunnelClosed

F = TypeVar("F", bound=Frame)
R = TypeVar("R", bound=Frame)
S = TypeVar("S", bound=Frame)

_CLOSED = object()
_PEER = "in-memory"


class _Pipe(Generic[F]):
    """One direction of an in-memory tunnel RPC: frames written at one end are read,
    reparsed, at the other. Bounded, so a slow reader pushes back on the writer."""

    def __init__(self, parse: Callable[[bytes], F], maxsize: int = 64) -> None:
        self._queue: asyncio.Queue[bytes | object] = asyncio.Queue(maxsize)
        self._parse = parse

    async def write(self, frame: F) -> None:
        await self._queue.put(frame.SerializeToString())

    async def read(self) -> F:
        item = await self._queue.get()
        if not isinstance(item, bytes):  # closed
            self._queue.put_nowait(_CLOSED)  # stay closed for later reads
            return EOF  # type: ignore[no-any-return]
        return self._parse(item)

    def close(self) -> None:
        try:
            self._queue.put_nowait(_CLOSED)
        except asyncio.QueueFull:
            self._queue.get_nowait()
            self._queue.put_nowait(_CLOSED)


class _End(Generic[R, S]):
    """One end of the pair, as the tunnel RPC of either side: reads from one pipe,
    writes to the other."""

    def __init__(self, reading: _Pipe[R], writing: _Pipe[S]) -> None:
        self._reading = reading
        self._writing = writing

    async def read(self) -> R:
        return await self._reading.read()

    async def write(self, frame: S, /) -> None:
        await self._writing.write(frame)

    def cancel(self) -> bool:
        self._writing.close()
        return True

    async def done_writing(self) -> None:
        self._writing.close()


class TunnelPair:
    """A tunnel whose two ends live in this process: a forward tunnel, or with
    ``reverse=True`` a reverse one (see the module's documentation)."""

    def __init__(
        self,
        options: TunnelOptions | None = None,
        *,
        extended: bool = True,
        negotiate: bool = True,
        tunnel_metadata: md.MetadataPairs = (),
        reverse: bool = False,
    ) -> None:
        # no peer of an in-memory tunnel gives up on it: a test stopped in a debugger
        # must not find its tunnel dropped as stalled (see TunnelOptions.stale_after)
        self.options = options or TunnelOptions(stale_after=None)
        self.extended = extended
        self.negotiate = negotiate
        self.tunnel_metadata = tunnel_metadata
        self.reverse = reverse
        self.server = ServiceRegistrar()
        self._channel: TunnelChannel | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.serving_session: ServingSession | None = None
        self.calling_session: CallingSession | None = None
        # reverse: what each side holds of the tunnel
        self.reverse_tunnel: ReverseTunnel | None = None
        self._served: ServedTunnel | None = None

    @property
    def channel(self) -> TunnelChannel:
        if self._channel is None:
            raise RuntimeError("enter the TunnelPair (async with) before using its channel")
        return self._channel

    def _opening(self, metadata: md.MetadataPairs) -> TunnelOpening:
        """What one end learns as the tunnel opens, ``metadata`` being what the other
        end opened it with (no negotiation headers: the flags say what they would)."""
        return TunnelOpening(
            metadata,
            _PEER,
            negotiated=self.negotiate,
            extended=self.extended,
            batches=self.extended,
            encoded_frames=True,  # the pipe serializes each frame with its own method
        )

    async def __aenter__(self) -> TunnelPair:
        # the tunnel RPC's own (de)serializers (grpctunnel.rpc): frames go as bytes
        to_serving = _Pipe(decode_client_frame)
        to_calling = _Pipe(decode_server_frame)
        serving_end = _End(to_serving, to_calling)
        calling_end = _End(to_calling, to_serving)
        # the accepting side sees the dialling side's metadata
        dialled_with, answered_with = self.tunnel_metadata, ()
        serving_sees, calling_sees = (
            (answered_with, dialled_with) if self.reverse else (dialled_with, answered_with)
        )
        serving = serving_session(
            serving_end, self._opening(serving_sees), self.options, self.server.registry
        )
        calling = calling_session(calling_end, self._opening(calling_sees), self.options)
        self.serving_session, self.calling_session = serving, calling
        loop = asyncio.get_running_loop()
        if self.reverse:
            self._served = ServedTunnel(serving, serving_end)
            self._tasks.append(loop.create_task(_run_quietly(calling, calling_end.cancel)))
            await calling.wait_ready()
            self.reverse_tunnel = ReverseTunnel(calling)
            self._channel = self.reverse_tunnel.channel
        else:
            self._tasks.append(loop.create_task(_run_quietly(serving, serving_end.cancel)))
            tunnel = ForwardTunnel(calling, calling_end)
            await calling.wait_ready()
            self._channel = TunnelChannel(tunnel)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._served is not None:
            # as closing a forward pair's channel: the calls in progress are cancelled,
            # then the dialling side ends the tunnel
            if self.calling_session is not None:
                self.calling_session.cancel_calls()
            await self._served.close()
        elif self._channel is not None:
            await self._channel.close()
        for session in (self.serving_session, self.calling_session):
            if session is not None:
                session.close("tunnel pair closed")
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _run_quietly(
    session: CallingSession | ServingSession, end_rpc: Callable[[], object]
) -> None:
    """Runs the session of the accepting side; when it ends, ``end_rpc`` ends its end
    of the RPC, as when a tunnel RPC ends (the dialling side sees its frames end)."""
    try:
        await session.run()
    except TunnelClosed:
        pass
    finally:
        end_rpc()


__all__ = ["TunnelPair"]
