"""The calling side of a tunnel, as a ``grpc.aio.Channel``.

:class:`TunnelChannel` gives generated stubs what a grpc.aio channel gives them:
multicallables whose calls are grpc.aio call objects (``grpctunnel.calls``). Each call is
one stream on a :class:`~grpctunnel.calls.CallingSession`; the channel asks its
:class:`SessionSource` for a session per call, so the same channel type serves a forward
tunnel (one session, :class:`SingleSession`) and the reverse tunnels of a handler (a
pool of sessions, balanced: ``grpctunnel.reverse``).
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc

from grpctunnel.calls import (
    CallingSession,
    Deserializer,
    Serializer,
    StreamStreamCall,
    StreamUnaryCall,
    TunnelCall,
    UnaryStreamCall,
    UnaryUnaryCall,
    unavailable_error,
)


class SessionSource(Protocol):
    """Where a channel gets the session for each call."""

    def pick(self) -> CallingSession | None:
        """A live session, or None when there is none now."""

    async def wait(self) -> CallingSession:
        """Waits for a live session."""

    def unavailable_details(self) -> str:
        """Why there is no session, for the UNAVAILABLE error."""

    def state(self) -> grpc.ChannelConnectivity: ...

    async def close(self, grace: float | None) -> None: ...


class SingleSession:
    """A session source of exactly one session: a forward tunnel, or one reverse
    tunnel addressed directly. Subclasses say what closing its channel does."""

    def __init__(self, session: CallingSession) -> None:
        self.session = session

    def pick(self) -> CallingSession | None:
        return None if self.session.closed else self.session

    async def wait(self) -> CallingSession:
        if self.session.closed:
            raise unavailable_error(self.unavailable_details())
        return self.session

    def unavailable_details(self) -> str:
        return self.session.close_reason or "tunnel closed"

    def state(self) -> grpc.ChannelConnectivity:
        closed = self.session.closed
        return grpc.ChannelConnectivity.SHUTDOWN if closed else grpc.ChannelConnectivity.READY

    async def close(self, grace: float | None) -> None:
        raise NotImplementedError


class TunnelChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` whose calls travel through tunnels."""

    def __init__(self, source: SessionSource) -> None:
        self._source = source

    async def __aenter__(self) -> TunnelChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        await self._source.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._source.state()

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self._source.state() == last_observed_state:
            if last_observed_state != grpc.ChannelConnectivity.READY:
                await self._source.wait()
            else:
                session = self._source.pick()
                if session is None:
                    return
                await session.wait_closed()

    async def channel_ready(self) -> None:
        await self._source.wait()

    def unary_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> _MultiCallable:  # type: ignore[override]
        return _MultiCallable(
            self._source, method, request_serializer, response_deserializer, UnaryUnaryCall
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> _MultiCallable:  # type: ignore[override]
        return _MultiCallable(
            self._source, method, request_serializer, response_deserializer, UnaryStreamCall
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> _MultiCallable:  # type: ignore[override]
        return _MultiCallable(
            self._source, method, request_serializer, response_deserializer, StreamUnaryCall
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> _MultiCallable:  # type: ignore[override]
        return _MultiCallable(
            self._source, method, request_serializer, response_deserializer, StreamStreamCall
        )


class _MultiCallable(
    grpc.aio.UnaryUnaryMultiCallable[Any, Any],
    grpc.aio.UnaryStreamMultiCallable[Any, Any],
    grpc.aio.StreamUnaryMultiCallable[Any, Any],
    grpc.aio.StreamStreamMultiCallable[Any, Any],
):
    """Makes calls of one method, of the kind given by ``call_class``."""

    def __init__(
        self,
        source: SessionSource,
        method: str,
        serializer: Serializer,
        deserializer: Deserializer,
        call_class: type[TunnelCall],
    ) -> None:
        self._source = source
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._call_class = call_class

    def __call__(  # type: ignore[override]
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._call_class(
            self._source,
            self._method,
            self._serializer,
            self._deserializer,
            request,
            timeout,
            metadata,
            bool(wait_for_ready),
        )


__all__ = ["SessionSource", "SingleSession", "TunnelChannel"]
