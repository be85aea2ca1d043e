"""The reverse tunnels a :class:`~grpctunnel.TunnelServiceHandler` holds, pooled by
affinity key, and the channels that balance calls over them.

Each live reverse tunnel is a :class:`ReverseTunnel`. The :class:`ReversePool` keeps
them in the order they opened and, beside that list, one list per affinity key (as the
Go library keeps a map from key to tunnels), so that a channel picks its next tunnel in
constant time: ``as_channel()`` from every tunnel, ``key_as_channel(key)`` from those of
one key. A channel over an arbitrary selection (``channel_for``) filters instead.
Whichever it is, a channel takes the tunnels of its selection in turn, skipping one that
has just closed, and ``channel_ready()`` waits for the pool to change.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING

import grpc

from grpctunnel import metadata as md
from grpctunnel.calls import CallingSession
from grpctunnel.channel import SingleSession, TunnelChannel

if TYPE_CHECKING:
    from grpctunnel.handler import TunnelRecord


class ReverseTunnel:
    """One live reverse tunnel, as the accepting server sees it. ``channel`` calls the
    client at its other end (closing that channel leaves the tunnel open: the client
    that dialled owns it); ``key`` is its affinity key."""

    _ids = itertools.count(1)

    def __init__(self, session: CallingSession, record: TunnelRecord | None = None) -> None:
        self.id = next(self._ids)
        self.session = session
        self.record = record  # the handler's record of the tunnel RPC (None: made by hand)
        self.key: Hashable = None
        self.channel = TunnelChannel(_OneReverseTunnel(session))

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
        return self.session.active_calls

    def metadata_value(self, key: str) -> str | bytes | None:
        return md.first_value(self.metadata, key)

    def __repr__(self) -> str:
        return f"<ReverseTunnel #{self.id} from {self.peer} key={self.key!r}>"


class _OneReverseTunnel(SingleSession):
    """The session source of one reverse tunnel addressed directly."""

    async def close(self, grace: float | None) -> None:
        """Closing one reverse tunnel's channel does not close the tunnel: the client
        that dialled owns it."""


class ReversePool:
    """The reverse tunnels of one handler, in the order they opened and by affinity
    key. A tunnel is in the pool from the moment it is ready for calls until its
    handler removes it; one that closed meanwhile is skipped by every pick."""

    def __init__(self) -> None:
        self._tunnels: list[ReverseTunnel] = []
        self._by_key: dict[Hashable, list[ReverseTunnel]] = {}
        self._changed = _Changed()

    def add(self, tunnel: ReverseTunnel) -> None:
        """Adds ``tunnel`` under its affinity key (``tunnel.key``, hashable)."""
        self._tunnels.append(tunnel)
        self._by_key.setdefault(tunnel.key, []).append(tunnel)
        self._changed.notify()

    def remove(self, tunnel: ReverseTunnel) -> bool:
        """Takes ``tunnel`` out of the pool; False if it was not in it."""
        if tunnel not in self._tunnels:
            return False
        self._tunnels.remove(tunnel)
        same_key = self._by_key[tunnel.key]
        same_key.remove(tunnel)
        if not same_key:
            del self._by_key[tunnel.key]
        self._changed.notify()
        return True

    def members(self) -> list[ReverseTunnel]:
        """Every tunnel in the pool, including one closed but not yet removed."""
        return list(self._tunnels)

    def live(self) -> list[ReverseTunnel]:
        """The tunnels that are open, in the order they opened."""
        return [t for t in self._tunnels if not t.closed]

    async def wait_changed(self) -> None:
        """Waits until a tunnel is added or removed."""
        await self._changed.wait()

    # -- channels ---------------------------------------------------------------------

    def channel(self) -> TunnelChannel:
        """Balances calls over every tunnel."""
        return TunnelChannel(_PoolSource(self, lambda: self._tunnels, ""))

    def key_channel(self, key: Hashable) -> TunnelChannel:
        """Balances calls over the tunnels whose affinity key is ``key``."""
        no_tunnels: Sequence[ReverseTunnel] = ()
        return TunnelChannel(
            _PoolSource(self, lambda: self._by_key.get(key, no_tunnels), f" for key {key!r}")
        )

    def filtered_channel(
        self, accepts: Callable[[ReverseTunnel], bool], description: str
    ) -> TunnelChannel:
        """Balances calls over the tunnels that ``accepts`` admits (asked afresh for
        every call: this one scans the pool)."""
        return TunnelChannel(
            _PoolSource(
                self, lambda: [t for t in self._tunnels if not t.closed and accepts(t)], description
            )
        )


class _PoolSource:
    """The session source of a pool's channel: the tunnels that ``selection`` returns
    (a list the pool keeps, or a filtered copy), taken in turn."""

    def __init__(
        self,
        pool: ReversePool,
        selection: Callable[[], Sequence[ReverseTunnel]],
        description: str,
    ) -> None:
        self._pool = pool
        self._selection = selection
        self._description = description
        self._turn = 0

    def pick(self) -> CallingSession | None:
        tunnels = self._selection()
        count = len(tunnels)
        for _ in range(count):  # one step, unless tunnels closed and are not yet removed
            self._turn += 1
            tunnel = tunnels[self._turn % count]
            if not tunnel.closed:
                return tunnel.session
        return None

    async def wait(self) -> CallingSession:
        while True:
            session = self.pick()
            if session is not None:
                return session
            await self._pool.wait_changed()

    def unavailable_details(self) -> str:
        return f"no reverse tunnel is open{self._description}"

    def state(self) -> grpc.ChannelConnectivity:
        if any(not t.closed for t in self._selection()):
            return grpc.ChannelConnectivity.READY
        return grpc.ChannelConnectivity.IDLE

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


__all__ = ["ReversePool", "ReverseTunnel"]
