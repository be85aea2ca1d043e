"""The node-to-node hop: one forward tunnel from this node to another, carrying every call
this node relays there.

:class:`PeerLink` is the tunnel to one peer node. It is opened when first needed (the
first call routed to the peer, or the first tunnel the peer announces), over one gRPC
connection to the peer's advertised address, with this node's cluster credential in the
tunnel's open metadata (see :mod:`~grpctunnel.gateway.cluster_auth`); from then on every
relayed call is one stream of that tunnel (frames batched between two peers of this
project). A link that breaks is reopened by the next call that needs it. A call waits
for the link to open (within its deadline, and at most ``connect_timeout``); when it
cannot be opened, the call fails with UNAVAILABLE naming the node.

:class:`HopChannel` is the ``grpc.aio.Channel`` a route to a peer relays through: the
link's tunnel, each call marked with this node's hop proof (so the peer routes it to
its own tunnels only) and, when it is for one tunnel name, pinned to it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import grpc

from grpctunnel import metadata as md
from grpctunnel.calls import CallingSession, unavailable_error
from grpctunnel.channel import TunnelChannel
from grpctunnel.client import ForwardTunnel
from grpctunnel.gateway.announce import PIN_HEADER
from grpctunnel.gateway.cluster_auth import NodeAuth
from grpctunnel.opening import TunnelOpening, calling_session
from grpctunnel.options import TunnelClientOptions
from grpctunnel.rpc import TunnelServiceStub, tunnel_rpc

log = logging.getLogger("grpctunnel")

DEFAULT_CONNECT_TIMEOUT = 3.0


class PeerLink:
    """The forward tunnel to one peer node, opened when needed and reopened after a
    loss; the session source of the peer's :class:`HopChannel` objects."""

    def __init__(
        self,
        node_id: str,
        address: str,
        auth: NodeAuth,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        tunnel_options: TunnelClientOptions | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self._auth = auth
        self._credentials = credentials
        self._channel_options = list(channel_options)
        self._tunnel_options = tunnel_options or TunnelClientOptions()
        self.connect_timeout = connect_timeout
        self._channel: grpc.aio.Channel | None = None
        self._tunnel: ForwardTunnel | None = None
        self._opening: asyncio.Task[ForwardTunnel] | None = None
        self._last_error = "not connected yet"
        self._closed = False
        self.opened = 0  # tunnels opened so far (the first, and reopenings)

    def describe(self) -> str:
        return f"node {self.node_id} at {self.address}"

    # -- SessionSource ----------------------------------------------------------------

    def pick(self) -> CallingSession | None:
        tunnel = self._tunnel
        if tunnel is not None and not tunnel.session.closed:
            return tunnel.session
        return None

    async def wait(self) -> CallingSession:
        session = self.pick()
        if session is not None:
            return session
        if self._closed:
            raise unavailable_error(self.unavailable_details())
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._open())
            self._opening.add_done_callback(_observed)
        try:
            tunnel = await asyncio.shield(self._opening)
        except grpc.aio.AioRpcError as e:
            raise unavailable_error(
                f"{self.describe()} unreachable: {e.code().name}: {e.details()}"
            ) from None
        return tunnel.session

    def unavailable_details(self) -> str:
        if self._closed:
            return f"{self.describe()} left the cluster"
        return f"{self.describe()} unreachable: {self._last_error}"

    def state(self) -> grpc.ChannelConnectivity:
        if self._closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        if self.pick() is not None:
            return grpc.ChannelConnectivity.READY
        return grpc.ChannelConnectivity.IDLE

    async def close(self, grace: float | None = None) -> None:
        """Ends the link for good (the peer left): calls in progress on it fail."""
        self._closed = True
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            await tunnel.close(grace)
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(None)

    @property
    def connected(self) -> bool:
        return self.pick() is not None

    # -- opening ----------------------------------------------------------------------

    def _grpc_channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(
                    self.address, self._credentials, options=self._channel_options
                )
            else:
                self._channel = grpc.aio.insecure_channel(
                    self.address, options=self._channel_options
                )
        return self._channel

    async def _open(self) -> ForwardTunnel:
        """Opens the tunnel: its RPC, the peer's answer and settings, within
        ``connect_timeout``. Raises ``AioRpcError`` when it cannot."""
        try:
            tunnel = await asyncio.wait_for(self._dial(), self.connect_timeout)
        except asyncio.TimeoutError:
            self._last_error = f"no answer within {self.connect_timeout:g}s"
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                self._last_error,
                None,
            ) from None
        except grpc.aio.AioRpcError as e:
            self._last_error = f"{e.code().name}: {e.details()}"
            raise
        if self._closed:
            await tunnel.close(None)
            raise unavailable_error(self.unavailable_details())
        self._tunnel = tunnel
        self.opened += 1
        log.debug("cluster: tunnel to %s open", self.describe())
        return tunnel

    async def _dial(self) -> ForwardTunnel:
        stub = TunnelServiceStub(self._grpc_channel())
        sent = (
            *md.tunnel_open_headers(),
            *self._tunnel_options.metadata,
            *self._auth.tunnel_metadata(),
        )
        rpc, encoded = tunnel_rpc(stub, reverse=False)
        call: Any = rpc(metadata=sent, wait_for_ready=False)
        try:
            headers = tuple(await call.initial_metadata())
            if call.done():
                code = await call.code()
                raise grpc.aio.AioRpcError(
                    code if code != grpc.StatusCode.OK else grpc.StatusCode.UNAVAILABLE,
                    grpc.aio.Metadata(),
                    grpc.aio.Metadata(),
                    await call.details() or "the tunnel ended as it opened",
                    None,
                )
        except BaseException:
            call.cancel()
            raise
        session = calling_session(
            call,
            TunnelOpening(headers, self.describe(), encoded_frames=encoded),
            self._tunnel_options,
        )
        tunnel = ForwardTunnel(session, call)
        ready = asyncio.ensure_future(session.wait_ready())
        try:
            await asyncio.wait({ready, tunnel.task}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await tunnel.close(None)
            raise
        finally:
            ready.cancel()
            await asyncio.gather(ready, return_exceptions=True)
        if not session.is_ready:
            reason = session.close_reason or "the tunnel closed as it opened"
            await tunnel.close(None)
            raise unavailable_error(reason)
        return tunnel


def _observed(task: asyncio.Task[Any]) -> None:
    """The outcome of an opening is awaited by the calls that wanted it, or by none."""
    if not task.cancelled():
        task.exception()


class HopChannel(TunnelChannel):
    """A channel through a :class:`PeerLink`: each call waits for the link (within its
    deadline), carries this node's hop proof, and, given ``pin``, the pin header that
    sends it to that tunnel name on the peer. Closing it leaves the link open (other
    routes share it)."""

    def __init__(self, link: PeerLink, extra: md.MetadataPairs, pin: str = "") -> None:
        super().__init__(link)
        self.link = link
        self._extra = (*extra, (PIN_HEADER, pin)) if pin else tuple(extra)

    async def close(self, grace: float | None = None) -> None:
        return None

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Hop(super().unary_unary(method, *args, **kwargs), self._extra)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Hop(super().unary_stream(method, *args, **kwargs), self._extra)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Hop(super().stream_unary(method, *args, **kwargs), self._extra)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Hop(super().stream_stream(method, *args, **kwargs), self._extra)


class _Hop:
    """A multicallable whose calls carry the hop's metadata and wait for the link."""

    def __init__(self, inner: Any, extra: md.MetadataPairs) -> None:
        self._inner = inner
        self._extra = extra

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        sent = (*(metadata or ()), *self._extra)
        return self._inner(request, timeout=timeout, metadata=sent, wait_for_ready=True)


__all__ = ["DEFAULT_CONNECT_TIMEOUT", "HopChannel", "PeerLink"]
