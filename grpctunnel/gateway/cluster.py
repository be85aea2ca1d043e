"""Many gateway nodes acting as one: the view they share through Redis.

``grpctunnel serve --cluster redis://HOST:PORT/DB --advertise HOST:PORT`` runs a
:class:`~grpctunnel.gateway.cluster_gateway.ClusterGateway` and a :class:`ClusterNode`,
which keeps this node's part of the shared view in Redis and applies the other nodes'
parts to the gateway (:class:`~grpctunnel.gateway.cluster_view.ClusterView`).

What is kept in Redis (``P`` is :attr:`ClusterSettings.prefix`, ``N`` a node id)::

    P:nodes        a set: the ids of the nodes that joined (stale ones are removed)
    P:alive:N      the node's heartbeat: its advertised address, expiring after
                   heartbeat_ttl unless the node renews it (every ttl / 3)
    P:node:N       a hash: "~node" (id, address, start time as JSON), "~v" (the version
                   of the node's state), and one field per tunnel: entry id -> JSON
                   (name, services, owning credential, exposer instance, slot, when)
                   and one field "~grace:S" per service S whose last tunnel on the
                   node closed less than a grace period ago (its owner, and until when)
    P:events       a pub/sub channel: each change of a node's state, with its version
                   ({"node", "v", "op": "put" | "del" | "grace" | "reset" | "bye", ...})

A node writes only its own keys, each change in one transaction with its message; the
others apply a message when its version follows the last one they applied of that
node, and otherwise (a gap: a message missed) read that node's hash again. Every
``resync_interval`` seconds each node reads all the hashes anyway, which heals anything
missed. A node whose heartbeat key expired is dropped from the view (within
``heartbeat_ttl`` + ttl / 3 of its last heartbeat): its tunnels stop being routable and
the calls relayed to it fail with UNAVAILABLE naming it.

Redis holds nothing a node cannot rebuild: each node keeps its own tunnels in memory
and the state of the others as last seen. When Redis cannot be reached the node says
it is *degraded*, keeps serving its own tunnels and its last view of the others, and
retries; when Redis is back (restarted empty, say) it writes its whole state again,
reads everyone else's, and says it *recovered*. Peers are not dropped for a missing
heartbeat until Redis has been reachable for a whole ``heartbeat_ttl`` again, so that a
Redis restart never drops a live node.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from grpctunnel.gateway.cluster_link import DEFAULT_CONNECT_TIMEOUT, PeerLink
from grpctunnel.gateway.cluster_view import (
    BadEntry,
    ClusterView,
    NodeInfo,
    ServiceGrace,
    TunnelEntry,
)
from grpctunnel.options import TunnelClientOptions, rpc_message_limit

log = logging.getLogger("grpctunnel")

DEFAULT_HEARTBEAT_TTL = 3.0
DEFAULT_RESYNC_INTERVAL = 5.0
DEFAULT_PREFIX = "grpctunnel"

_VERSION = "~v"
_NODE = "~node"
_GRACE = "~grace:"
_REDIS_TIMEOUT = 1.0  # seconds for one Redis command (a stuck Redis counts as down)
_STOP_TIMEOUT = 1.0  # seconds to say goodbye when leaving


@dataclass
class ClusterSettings:
    """How a node joins its cluster.

    ``redis_url`` is the shared Redis (``redis://[:password@]HOST:PORT/DB``); ``advertise``
    where the other nodes reach this one (``HOST:PORT``); ``token`` the cluster
    credential every node holds. ``peer_credentials`` makes the connections to other
    nodes TLS (as their servers are). A node that misses heartbeats for
    ``heartbeat_ttl`` seconds is dropped from the view; every node reads the whole view
    again every ``resync_interval`` seconds.
    """

    redis_url: str
    advertise: str
    token: str
    heartbeat_ttl: float = DEFAULT_HEARTBEAT_TTL
    resync_interval: float = DEFAULT_RESYNC_INTERVAL
    peer_credentials: grpc.ChannelCredentials | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    prefix: str = DEFAULT_PREFIX
    node_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_ttl / 3


def redacted(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class ClusterNode:
    """This node's membership of the cluster: heartbeats, publishing its tunnels,
    applying the others'; see the module documentation. ``start()`` joins (it returns
    even when Redis cannot be reached: the node then runs degraded until it can),
    ``stop()`` leaves."""

    def __init__(
        self,
        view: ClusterView,
        settings: ClusterSettings,
        *,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.view = view
        self.settings = settings
        self.node_id = settings.node_id
        self.info = NodeInfo(self.node_id, settings.advertise, time.time())
        self.redis = client or aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=_REDIS_TIMEOUT,
            socket_connect_timeout=_REDIS_TIMEOUT,
            decode_responses=True,
            health_check_interval=0,
        )
        p = settings.prefix
        self._nodes_key = f"{p}:nodes"
        self._events = f"{p}:events"
        self._prefix = p
        self._version = 0
        self._pending: list[tuple[str, TunnelEntry | ServiceGrace | str, int]] = []
        self._wake = asyncio.Event()
        self._republish = True  # the whole state must be written (joined, or recovered)
        self._reachable: bool | None = None  # None: not tried yet
        self._reachable_since = 0.0  # monotonic; -inf until the first connection
        self._down_since = 0.0
        self._resyncing: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.joined = asyncio.Event()
        view.on_local_change = self._local_change
        view.on_local_grace = self._local_grace

    # -- keys -------------------------------------------------------------------------

    def _alive(self, node: str) -> str:
        return f"{self._prefix}:alive:{node}"

    def _state(self, node: str) -> str:
        return f"{self._prefix}:node:{node}"

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Joins: writes this node's state, reads the others', and starts the loops."""
        try:
            await self._heartbeat()
        except (RedisError, OSError) as error:
            self._unreachable(error)
        else:
            await self._resync_all()
        self._tasks = [
            asyncio.ensure_future(self._loop(self._heartbeat, self.settings.heartbeat_interval)),
            asyncio.ensure_future(self._loop(self._resync_all, self.settings.resync_interval)),
            asyncio.ensure_future(self._subscribe_forever()),
            asyncio.ensure_future(self._write_forever()),
        ]
        where = redacted(self.settings.redis_url)
        if self._reachable:
            log.info(
                "cluster: joined as node %s (advertised at %s) through %s; %d other nodes, "
                "%d of their tunnels",
                self.node_id,
                self.settings.advertise,
                where,
                len(self.view.peers),
                sum(len(p.entries) for p in self.view.peers.values()),
            )
        else:
            log.warning(
                "cluster: node %s (advertised at %s) started degraded: Redis at %s cannot be "
                "reached; serving this node's own tunnels until it can",
                self.node_id,
                self.settings.advertise,
                where,
            )

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def leave(self) -> None:
        """Leaves the view: the others are told at once (when Redis can be reached)
        and route nothing new here; the links to them stay open for the calls in
        flight until :meth:`close`."""
        if self._stopping:
            return
        self._stopping = True
        for task in (*self._tasks, *self._spawned):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._spawned, return_exceptions=True)
        if self._reachable:
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(self._leave(), _STOP_TIMEOUT)
        log.info("cluster: node %s left the cluster", self.node_id)

    async def close(self) -> None:
        """Leaves (if it has not), closes the links to the other nodes and Redis."""
        await self.leave()
        await self.view.close()
        with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self.redis.aclose(), _STOP_TIMEOUT)

    async def _leave(self) -> None:
        self._version += 1
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._alive(self.node_id), self._state(self.node_id))
        pipe.srem(self._nodes_key, self.node_id)
        pipe.publish(self._events, self._message("bye"))
        await pipe.execute()

    async def _loop(self, step: Any, interval: float) -> None:
        """Runs ``step`` every ``interval`` seconds (letting time pass is the point);
        a Redis failure makes the node degraded until a step succeeds again."""
        while True:
            await asyncio.sleep(interval)
            try:
                await step()
            except (RedisError, OSError) as error:
                self._unreachable(error)
            except Exception:
                log.exception("cluster: %s failed", getattr(step, "__name__", step))

    # -- reachability -----------------------------------------------------------------

    def _unreachable(self, error: BaseException) -> None:
        self._republish = True
        if self._reachable is False:
            return
        self._reachable = False
        self._down_since = time.monotonic()
        log.warning(
            "cluster: degraded: Redis at %s cannot be reached (%s); serving this node's %d "
            "tunnels and the last view of %d other nodes until it can",
            redacted(self.settings.redis_url),
            error,
            len(self.view.local_entries()),
            len(self.view.peers),
        )

    def _reached(self) -> bool:
        """Redis answered; True if it had not been reachable before (joined or
        recovered)."""
        if self._reachable:
            return False
        first = self._reachable is None
        self._reachable = True
        self._reachable_since = float("-inf") if first else time.monotonic()
        if not first:
            log.info(
                "cluster: recovered: Redis at %s reachable again after %.1fs; republishing "
                "this node's %d tunnels",
                redacted(self.settings.redis_url),
                time.monotonic() - self._down_since,
                len(self.view.local_entries()),
            )
        return True

    @property
    def degraded(self) -> bool:
        return self._reachable is not True

    def _settled(self) -> bool:
        """Whether Redis has been reachable long enough for every live node to have
        renewed its heartbeat: only then is a missing heartbeat a dead node."""
        return time.monotonic() - self._reachable_since >= self.settings.heartbeat_ttl

    # -- writing this node's state ----------------------------------------------------

    def _message(self, op: str, **more: Any) -> str:
        return json.dumps({"node": self.node_id, "v": self._version, "op": op, **more})

    def _local_change(self, entry: TunnelEntry | None, removed: str | None) -> None:
        self._version += 1
        if entry is not None:
            self._pending.append(("put", entry, self._version))
        elif removed is not None:
            self._pending.append(("del", removed, self._version))
        self._wake.set()

    def _local_grace(self, grace: ServiceGrace) -> None:
        self._version += 1
        self._pending.append(("grace", grace, self._version))
        self._wake.set()

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.degraded:
                self._pending.clear()  # all of it is written again on recovery
                continue
            try:
                await self._write()
            except (RedisError, OSError) as error:
                self._unreachable(error)

    async def _write(self) -> None:
        """Writes the changes made since the last write, each with its message."""
        if self._republish:
            await self._publish_all()
            return
        ops, self._pending = self._pending, []
        if not ops:
            return
        key = self._state(self.node_id)
        pipe = self.redis.pipeline(transaction=True)
        for op, what, version in ops:
            if isinstance(what, TunnelEntry):
                pipe.hset(key, mapping={what.id: what.to_json(), _VERSION: version})
                message = {"node": self.node_id, "v": version, "op": op, "entry": what.to_json()}
            elif isinstance(what, ServiceGrace):
                field = _GRACE + what.service
                pipe.hset(key, mapping={field: what.to_json(), _VERSION: version})
                message = {"node": self.node_id, "v": version, "op": op, "grace": what.to_json()}
            else:
                pipe.hdel(key, what)
                pipe.hset(key, _VERSION, version)
                message = {"node": self.node_id, "v": version, "op": op, "id": what}
            pipe.publish(self._events, json.dumps(message))
        try:
            await pipe.execute()
        except BaseException:
            self._republish = True
            raise

    async def _publish_all(self) -> None:
        """Writes this node's whole state anew (joining, or after Redis was lost)."""
        self._version += 1
        self._pending.clear()
        entries = self.view.local_entries()
        key = self._state(self.node_id)
        mapping: dict[Any, Any] = {e.id: e.to_json() for e in entries}
        mapping.update({_GRACE + g.service: g.to_json() for g in self.view.local_graces()})
        mapping[_NODE] = self.info.to_json()
        mapping[_VERSION] = self._version
        ttl_ms = int(self.settings.heartbeat_ttl * 1000)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=mapping)
        pipe.pexpire(key, ttl_ms * 10)
        pipe.sadd(self._nodes_key, self.node_id)
        pipe.set(self._alive(self.node_id), self.settings.advertise, px=ttl_ms)
        pipe.publish(self._events, self._message("reset"))
        await pipe.execute()
        self._republish = False

    async def _heartbeat(self) -> None:
        """Renews this node's heartbeat (and republishes everything if Redis lost it),
        and drops the nodes whose heartbeat expired."""
        ttl_ms = int(self.settings.heartbeat_ttl * 1000)
        peers = list(self.view.peers)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self._alive(self.node_id), self.settings.advertise, px=ttl_ms, get=True)
        pipe.pexpire(self._state(self.node_id), ttl_ms * 10)
        pipe.sadd(self._nodes_key, self.node_id)
        for peer in peers:
            pipe.exists(self._alive(peer))
        expired = [_GRACE + service for service in self.view.expired_graces()]
        if expired:
            pipe.hdel(self._state(self.node_id), *expired)
        results = await pipe.execute()
        recovered = self._reached()
        if results[0] is None and self.joined.is_set():
            # the others dropped this node: tell them all again
            log.info(
                "cluster: this node's heartbeat had expired (it was frozen or cut off, or "
                "Redis lost its data): announcing it again"
            )
            self._republish = True
        if self._republish:
            await self._publish_all()
            self.joined.set()
        if recovered and self._reachable_since != float("-inf"):
            await self._resync_all()
        if self._settled():
            for peer, alive in zip(peers, results[3 : 3 + len(peers)], strict=True):
                if not alive:
                    await self._drop(
                        peer, f"sent no heartbeat for {self.settings.heartbeat_ttl:g}s"
                    )

    async def _drop(self, node: str, why: str) -> None:
        peer = await self.view.drop(node, why)
        if peer is not None:
            log.warning(
                "cluster: %s left: %s; its %d tunnels are no longer routable",
                peer.describe(),
                why,
                peer.lost,
            )

    # -- reading the others' ----------------------------------------------------------

    async def _resync_all(self) -> None:
        """Reads every node's state and applies what changed."""
        members = await self.redis.smembers(self._nodes_key)
        nodes = {str(n) for n in members if n != self.node_id}
        ordered = sorted(nodes)
        pipe = self.redis.pipeline(transaction=False)
        for node in ordered:
            pipe.exists(self._alive(node))
            pipe.hgetall(self._state(node))
        results = await pipe.execute()
        self._reached()
        gone: list[str] = []
        for i, node in enumerate(ordered):
            alive, state = results[2 * i], results[2 * i + 1]
            if not alive:
                if not state:
                    gone.append(node)
                if node in self.view.peers and self._settled():
                    await self._drop(
                        node, f"sent no heartbeat for {self.settings.heartbeat_ttl:g}s"
                    )
                continue
            self._apply_state(node, state)
        if self._settled():
            for node in [n for n in self.view.peers if n not in nodes]:
                await self._drop(node, "is no longer a member")
        if gone:
            await self.redis.srem(self._nodes_key, *gone)

    async def _resync(self, node: str) -> None:
        """Reads one node's state again (a message of it was missed, or it reset)."""
        if node in self._resyncing:
            return
        self._resyncing.add(node)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.exists(self._alive(node))
            pipe.hgetall(self._state(node))
            alive, state = await pipe.execute()
            if alive:
                self._apply_state(node, state)
        except (RedisError, OSError) as error:
            self._unreachable(error)
        finally:
            self._resyncing.discard(node)

    def _apply_state(self, node: str, state: dict[str, str]) -> None:
        """Applies a node's hash, if it is whole (it has a version and a node record)."""
        if _VERSION not in state or _NODE not in state:
            return  # being written anew: its reset message follows
        try:
            info = NodeInfo.from_json(state[_NODE])
            version = int(state[_VERSION])
            entries = [TunnelEntry.from_json(v) for k, v in state.items() if not k.startswith("~")]
            graces = [ServiceGrace.from_json(v) for k, v in state.items() if k.startswith(_GRACE)]
        except (BadEntry, ValueError) as e:
            log.warning("cluster: ignoring the state of node %s: %s", node, e)
            return
        if info.id != node:
            return
        new = node not in self.view.peers
        if self.view.replace(info, version, entries):
            self.view.reserve(graces, node, None)
        if new:
            log.info(
                "cluster: node %s (%s) appeared, with %d tunnels",
                node,
                info.advertise,
                len(entries),
            )

    async def _subscribe_forever(self) -> None:
        """Applies the others' changes as they are published; resubscribes (and reads
        the whole view again, for what was missed) after Redis was lost."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._events)
                await self._resync_all()  # what was published while not subscribed
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message["data"])
            except (RedisError, OSError) as error:
                self._unreachable(error)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            # Redis is down: try again after a heartbeat's interval (letting time pass
            # is the point: the heartbeat loop notices when it is back)
            await asyncio.sleep(self.settings.heartbeat_interval)

    def _on_message(self, data: str) -> None:
        try:
            message = json.loads(data)
            node, version, op = message["node"], int(message["v"]), message["op"]
        except (ValueError, KeyError, TypeError):
            log.debug("cluster: ignoring a malformed message")
            return
        if node == self.node_id or not isinstance(node, str):
            return
        if op == "bye":
            self._spawn(self._drop(node, "left the cluster"))
            return
        peer = self.view.peers.get(node)
        if op not in ("put", "del", "grace") or peer is None or version != peer.version + 1:
            if peer is None or version > peer.version:
                self._spawn(self._resync(node))
            return
        try:
            if op == "put":
                entry = TunnelEntry.from_json(message["entry"])
                if entry.node != node:
                    return
                self.view.put(node, version, entry)
            elif op == "grace":
                self.view.reserve([ServiceGrace.from_json(message["grace"])], node, version)
            else:
                self.view.delete(node, version, str(message["id"]))
        except (BadEntry, KeyError) as e:
            log.warning("cluster: ignoring a message of node %s: %s", node, e)


def peer_link_factory(
    settings: ClusterSettings,
    auth: Any,
    *,
    max_message_length: int | None,
    channel_options: Sequence[tuple[str, Any]] = (),
) -> Any:
    """What opens the forward tunnel to each node that appears in the view."""
    limit = rpc_message_limit(max_message_length)  # the link carries one tunnel RPC
    options = [
        *channel_options,
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
    ]

    def make(info: NodeInfo) -> PeerLink:
        return PeerLink(
            info.id,
            info.advertise,
            auth,
            credentials=settings.peer_credentials,
            channel_options=options,
            tunnel_options=TunnelClientOptions(
                max_receive_message_length=max_message_length,
                max_send_message_length=max_message_length,
            ),
            connect_timeout=settings.connect_timeout,
        )

    return make


def cluster_gateway(cluster: ClusterSettings, settings: Any) -> Any:
    """What :class:`~grpctunnel.gateway.GatewayServer` builds its gateway with when it
    is a node of ``cluster`` (``settings``: its ``GatewaySettings``)."""
    from grpctunnel import keepalive
    from grpctunnel.gateway.cluster_auth import NodeAuth
    from grpctunnel.gateway.cluster_gateway import ClusterGateway

    auth = NodeAuth(cluster.token, cluster.node_id)
    make_link = peer_link_factory(
        cluster,
        auth,
        max_message_length=settings.max_message_length,
        channel_options=keepalive.channel_options(
            settings.keepalive_interval, settings.keepalive_timeout
        ),
    )
    return functools.partial(ClusterGateway, node_auth=auth, make_link=make_link)


async def join_cluster(gateway: Any, cluster: ClusterSettings) -> ClusterNode:
    """Joins ``gateway`` (built by :func:`cluster_gateway`) to ``cluster``."""
    node = ClusterNode(gateway.view, cluster)
    await node.start()
    return node


__all__ = [
    "DEFAULT_HEARTBEAT_TTL",
    "DEFAULT_RESYNC_INTERVAL",
    "ClusterNode",
    "ClusterSettings",
    "cluster_gateway",
    "join_cluster",
    "peer_link_factory",
    "redacted",
]
