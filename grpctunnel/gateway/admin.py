"""The gateway's admin service, ``grpctunnel.admin.v1.Admin``: who is connected, as it
happens, and closing a tunnel by name (proto/grpctunnel/admin/v1/admin.proto).

The gateway keeps a :class:`TunnelEntry` per open tunnel in an :class:`AdminService`,
telling it as each opens (:meth:`AdminService.opened`) and closes
(:meth:`AdminService.closed`); ``ListTunnels`` lists them, ``WatchTunnels`` sends them
all, then every open and close as it happens, and ``CloseTunnel`` asks the gateway to
drain and close the tunnels of a name. With tokens, only a token with the admin right
may use it (:attr:`~grpctunnel.gateway.auth.Grant.may_admin`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from grpctunnel.admin.v1 import admin_pb2, admin_pb2_grpc
from grpctunnel.gateway.proxy import RelayStats

log = logging.getLogger("grpctunnel")

DEFAULT_CLOSE_GRACE = 10.0  # seconds calls in flight get when a tunnel is closed by name
MAX_CLOSE_GRACE = 300.0
MIN_REFRESH = 0.5  # seconds: the shortest refresh a watcher may ask for
WATCH_BACKLOG = 1024  # events a watcher may fall behind by before its watch is ended
CLOSED_BY_ADMIN = "closed by an administrator"

_DIRECTIONS = {
    "forward": admin_pb2.DIRECTION_FORWARD,
    "reverse": admin_pb2.DIRECTION_REVERSE,
}


@dataclass(eq=False)
class TunnelEntry:
    """One open tunnel as the admin service shows it. ``stats`` counts the calls relayed
    into it (reverse tunnels) or that came in through it and were relayed (forward
    tunnels); ``active``, when given, says how many calls are on it now, relayed or not
    (forward tunnels); ``draining`` is set while it is being closed.
    ``node`` is the cluster node that holds it (None: this one)."""

    direction: str
    name: str
    services: tuple[str, ...]
    peer: str
    stats: RelayStats | None = None
    active: Callable[[], int] | None = None
    opened_at: float = field(default_factory=time.time)
    draining: bool = False
    node: str | None = None
    id: int = field(default_factory=itertools.count(1).__next__)

    def to_proto(self, node: str) -> admin_pb2.Tunnel:
        opened = timestamp_pb2.Timestamp()
        opened.FromNanoseconds(int(self.opened_at * 1e9))
        stats = self.stats
        in_flight = stats.in_flight if stats is not None else 0
        if self.active is not None:  # every call on it, relayed or not
            in_flight = self.active()
        return admin_pb2.Tunnel(
            id=self.id,
            name=self.name,
            services=self.services,
            peer=self.peer,
            node=self.node or node,
            direction=_DIRECTIONS.get(self.direction, admin_pb2.DIRECTION_UNSPECIFIED),
            opened_at=opened,
            calls_in_flight=max(0, in_flight),
            calls_done=stats.done if stats is not None else 0,
            errors=stats.failed if stats is not None else 0,
            request_bytes=stats.request_bytes if stats is not None else 0,
            response_bytes=stats.response_bytes if stats is not None else 0,
            draining=self.draining,
        )


class _Watcher:
    """One WatchTunnels call: the events it has yet to send."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[admin_pb2.TunnelEvent] = asyncio.Queue()
        self.overflowed = False

    def put(self, event: admin_pb2.TunnelEvent) -> None:
        if self.events.qsize() >= WATCH_BACKLOG:
            self.overflowed = True
            self.events.put_nowait(admin_pb2.TunnelEvent())  # wakes it to end
            return
        self.events.put_nowait(event)


# closes the reverse tunnels of a name after draining them for up to a grace period, in
# seconds; says how many there were
Closer = Callable[[str, float, bool], Awaitable[int]]


class AdminService(admin_pb2_grpc.AdminServicer):
    """The tunnels of one gateway node, and the admin RPCs over them. ``node`` is the
    name the node goes by in listings; ``close`` drains and closes tunnels by name."""

    def __init__(self, close: Closer, node: str = "") -> None:
        self._close = close
        self.node = node
        self._entries: dict[int, TunnelEntry] = {}
        self._watchers: set[_Watcher] = set()

    # -- what the gateway calls -------------------------------------------------------

    def opened(self, entry: TunnelEntry) -> None:
        self._entries[entry.id] = entry
        self._publish(admin_pb2.TunnelEvent(opened=entry.to_proto(self.node)))

    def closed(self, entry: TunnelEntry, reason: str) -> None:
        if self._entries.pop(entry.id, None) is None:
            return
        closed = admin_pb2.TunnelClosed(tunnel=entry.to_proto(self.node), reason=reason)
        self._publish(admin_pb2.TunnelEvent(closed=closed))

    def entries(self) -> list[TunnelEntry]:
        """The open tunnels, oldest first."""
        return sorted(self._entries.values(), key=lambda e: e.id)

    def _publish(self, event: admin_pb2.TunnelEvent) -> None:
        for watcher in self._watchers:
            watcher.put(event)

    def _snapshot(self) -> admin_pb2.ListTunnelsResponse:
        return admin_pb2.ListTunnelsResponse(
            tunnels=[entry.to_proto(self.node) for entry in self.entries()]
        )

    # -- the RPCs ---------------------------------------------------------------------

    async def ListTunnels(
        self,
        request: admin_pb2.ListTunnelsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.ListTunnelsResponse:
        return self._snapshot()

    async def WatchTunnels(
        self,
        request: admin_pb2.WatchTunnelsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        asked = request.refresh_seconds
        refresh = max(MIN_REFRESH, asked) if asked > 0 else None
        watcher = _Watcher()
        self._watchers.add(watcher)  # with the snapshot below, no await between: no gap
        snapshot = admin_pb2.TunnelEvent(snapshot=self._snapshot())
        try:
            await context.write(snapshot)
            loop = asyncio.get_running_loop()
            next_refresh = loop.time() + refresh if refresh is not None else None
            while True:
                timeout = None if next_refresh is None else max(0.0, next_refresh - loop.time())
                try:
                    event = await asyncio.wait_for(watcher.events.get(), timeout)
                except asyncio.TimeoutError:
                    assert refresh is not None and next_refresh is not None
                    next_refresh = loop.time() + refresh
                    await context.write(admin_pb2.TunnelEvent(snapshot=self._snapshot()))
                    continue
                if watcher.overflowed:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the watcher fell more than {WATCH_BACKLOG} events behind; watch again",
                    )
                await context.write(event)
        finally:
            self._watchers.discard(watcher)

    async def CloseTunnel(
        self,
        request: admin_pb2.CloseTunnelRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.CloseTunnelResponse:
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name the tunnel to close")
        grace = request.grace_seconds if request.grace_seconds > 0 else DEFAULT_CLOSE_GRACE
        grace = min(grace, MAX_CLOSE_GRACE)
        closed = await self._close(request.name, grace, request.this_node_only)
        if not closed:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no reverse tunnel named {request.name!r} is open"
            )
        return admin_pb2.CloseTunnelResponse(closed=closed)


__all__ = [
    "CLOSED_BY_ADMIN",
    "DEFAULT_CLOSE_GRACE",
    "AdminService",
    "Closer",
    "TunnelEntry",
]
