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
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from grpctunnel import metadata as md
from grpctunnel.channel import CallingSession, TunnelChannel
from grpctunnel.client import _ForwardTunnel
from grpctunnel.options import TunnelOptions
from grpctunnel.protocol import CallingConnection, ServingConnection
from grpctunnel.serving import ServiceRegistry, ServingSession
from grpctunnel.session import EOF, TunnelClosed
from grpctunnel.v1 import tunnel_pb2

_CLOSED = object()


class _Pipe:
    """One direction of an in-memory tunnel RPC: frames written at one end are read,
    reparsed, at the other. Bounded, so a slow reader pushes back on the writer."""

    def __init__(self, parse: Callable[[bytes], Any], maxsize: int = 64) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self._parse = parse

    async def write(self, frame: Any) -> None:
        await self._queue.put(frame.SerializeToString())

    async def read(self) -> Any:
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # stay closed for later reads
            return EOF
        return self._parse(item)

    def close(self) -> None:
        try:
            self._queue.put_nowait(_CLOSED)
        except asyncio.QueueFull:
            self._queue.get_nowait()
            self._queue.put_nowait(_CLOSED)


class _End:
    """One end of the pair: reads from one pipe, writes to the other."""

    def __init__(self, reading: _Pipe, writing: _Pipe) -> None:
        self._reading = reading
        self._writing = writing

    async def read(self) -> Any:
        return await self._reading.read()

    async def write(self, frame: Any) -> None:
        await self._writing.write(frame)

    def cancel(self) -> None:
        self._writing.close()

    async def done_writing(self) -> None:
        self._writing.close()


class TunnelPair:
    """A forward tunnel whose two ends live in this process."""

    def __init__(
        self,
        options: TunnelOptions | None = None,
        *,
        extended: bool = True,
        negotiate: bool = True,
        tunnel_metadata: md.MetadataPairs = (),
    ) -> None:
        self.options = options or TunnelOptions()
        self.extended = extended
        self.negotiate = negotiate
        self.tunnel_metadata = tunnel_metadata
        self.server = _Registrar()
        self._channel: TunnelChannel | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.serving_session: ServingSession | None = None
        self.calling_session: CallingSession | None = None

    @property
    def channel(self) -> TunnelChannel:
        if self._channel is None:
            raise RuntimeError("enter the TunnelPair (async with) before using its channel")
        return self._channel

    async def __aenter__(self) -> TunnelPair:
        to_server = _Pipe(tunnel_pb2.ClientToServer.FromString)
        to_client = _Pipe(tunnel_pb2.ServerToClient.FromString)
        params = self.options.connection_params(extended_peer=self.extended)
        serving_conn = ServingConnection(negotiated=self.negotiate, **params)
        serving_conn.start()
        self.serving_session = ServingSession(
            _End(to_server, to_client),
            serving_conn,
            peer="in-memory",
            tunnel_metadata=self.tunnel_metadata,
            binary_base64=self.extended,
            batch_frames=self.extended,
            registry=self.server.registry,
            max_send_message_length=self.options.max_send_message_length,
        )
        self.serving_session.flush()
        self._tasks.append(
            asyncio.get_running_loop().create_task(_run_quietly(self.serving_session))
        )
        calling_end = _End(to_client, to_server)
        self.calling_session = CallingSession(
            calling_end,
            CallingConnection(negotiated=self.negotiate, **params),
            peer="in-memory",
            tunnel_metadata=(),
            binary_base64=self.extended,
            batch_frames=self.extended,
            max_send_message_length=self.options.max_send_message_length,
        )
        tunnel = _ForwardTunnel(self.calling_session, calling_end)
        await self.calling_session.wait_ready()
        self._channel = TunnelChannel(tunnel)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._channel is not None:
            await self._channel.close()
        if self.serving_session is not None:
            self.serving_session.close("tunnel pair closed")
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _Registrar:
    """The ``grpc.aio.Server``-like surface that generated ``add_XServicer_to_server``
    functions register with."""

    def __init__(self) -> None:
        self.registry = ServiceRegistry()

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.registry.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.registry.add_registered_method_handlers(service_name, method_handlers)

    def register_service(
        self,
        servicer: object,
        service_name: str,
        methods: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.registry.register_service(servicer, service_name, methods)


async def _run_quietly(session: ServingSession) -> None:
    try:
        await session.run()
    except TunnelClosed:
        pass
    finally:
        # as when a tunnel RPC ends: the calling end sees its frames end too
        if isinstance(session.stream, _End):
            session.stream.cancel()


__all__ = ["TunnelPair"]
