"""The gateway's directory: who owns each tunnel name and service, and which live tunnels
serve each, kept up to date as tunnels open and close so that routing a call costs the
same with ten tunnels or ten thousand.

Every tunnel the gateway admits gets a :class:`Claim`: its credential (an
:class:`Owner`), the name and services it announced. Admission is where the rules hold:

* A **name** belongs to the credential whose tunnels hold it; another credential
  announcing it is refused. (Takeover of a name by a newer instance of the same
  credential is the gateway's business, decided from :meth:`TunnelDirectory.holding`.)
* A **service** belongs to the owner whose tunnels first announced it, for as long as any
  of its tunnels announce it and for a grace period after the last one closed, so that a
  reconnecting exposer gets its service back before anyone else can claim it. Tunnels of
  the same credential share the service; so do credentials of one ``group``, and two
  credentials whose token-file entries both list the service in ``expose_services``.
  Any other credential announcing an owned service is refused, whole: the tunnel does
  not open. Without tokens every tunnel has the same (anonymous) owner, so nothing is
  ever refused for ownership.

A claim becomes routable once its tunnel is up (:meth:`TunnelDirectory.publish`), and
stops being routable when it closes (:meth:`TunnelDirectory.release`). Routing
(:meth:`TunnelDirectory.route`) takes the live tunnels of a service in turn, or those of
one name when the call is pinned; both are dictionary look-ups. The directory is pure
bookkeeping: no asyncio, no grpc; the clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

DEFAULT_SERVICE_GRACE = 30.0  # seconds an owner keeps a service after its last tunnel

T = TypeVar("T")


class Refused(Exception):
    """A tunnel may not open; ``reason`` says why (PERMISSION_DENIED or
    RESOURCE_EXHAUSTED, by :attr:`exhausted`)."""

    def __init__(self, reason: str, *, exhausted: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exhausted = exhausted


@dataclass(frozen=True)
class Owner:
    """The credential a tunnel was opened with, as ownership sees it.

    ``credential`` is None when the gateway requires no tokens. ``group`` is the token
    file's ``group`` of the credential (None if it has none); ``listed`` the services its
    entry lists in ``expose_services`` (None: not narrowed).
    """

    credential: str | None = None
    group: str | None = None
    listed: frozenset[str] | None = None

    def shares(self, other: Owner, service: str) -> bool:
        """Whether this owner's tunnels may serve ``service``, owned by ``other``."""
        if self.credential == other.credential:
            return True
        if self.group is not None and self.group == other.group:
            return True
        return (
            self.listed is not None
            and other.listed is not None
            and service in self.listed
            and service in other.listed
        )

    def describe(self) -> str:
        return "no credential" if self.credential is None else f"credential {self.credential!r}"


@dataclass(eq=False)
class Claim(Generic[T]):
    """One admitted tunnel: what it announced, and its tunnel once it is routable.
    ``holder`` is whatever the caller keeps with it (the gateway: its tunnel record)."""

    owner: Owner
    name: str
    services: tuple[str, ...]
    kind: str = "reverse"
    holder: object = None
    tunnel: T | None = None
    released: bool = False
    # the cluster node whose tunnel this is (None: this gateway's own), and when it was
    # admitted there (seconds since the Unix epoch): the older of two claims wins
    node: str | None = None
    since: float = 0.0


@dataclass
class _Service(Generic[T]):
    owner: Owner
    claims: int = 0  # unreleased claims announcing it (routable or not yet)
    live: list[Claim[T]] = field(default_factory=list)  # routable, in turn order
    # routable claims of other cluster nodes: used only when no tunnel here serves it
    remote: list[Claim[T]] = field(default_factory=list)
    held: list[Claim[T]] = field(default_factory=list)  # the unreleased claims
    turn: int = 0
    released_at: float | None = None  # when the last claim went; owned until + grace


class TunnelDirectory(Generic[T]):
    """Names, services and live tunnels, indexed; see the module documentation."""

    def __init__(
        self,
        *,
        service_grace: float = DEFAULT_SERVICE_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service_grace = service_grace
        self._clock = clock
        self._services: dict[str, _Service[T]] = {}
        self._names: dict[str, list[Claim[T]]] = {}
        self._per_credential: dict[str | None, set[Claim[T]]] = {}  # unreleased claims
        # services in their grace period, oldest first: swept as time passes, so that
        # names announced once and never again do not pile up
        self._graces: deque[tuple[float, str]] = deque()
        # while set, routing keeps to this gateway's own tunnels (a cluster node sets it
        # while it routes a call another node relayed to it)
        self.local_only = False
        # told of each grace period that the end of one of this gateway's own tunnels
        # started (a cluster node shares them with nodes that join later)
        self.on_grace: Callable[[str, Owner], None] | None = None

    # -- admission ------------------------------------------------------------------

    def check(
        self,
        owner: Owner,
        name: str,
        services: Iterable[str],
        *,
        max_tunnels: int | None = None,
        leaving: Iterable[Claim[T]] = (),
    ) -> None:
        """Raises :class:`Refused` when a tunnel of ``owner`` announcing ``name`` and
        ``services`` may not open (``leaving``: claims it replaces, which do not count
        against ``max_tunnels``)."""
        if name:
            for claim in self._names.get(name, ()):
                if claim.owner.credential != owner.credential:
                    raise Refused(f"tunnel name {name!r} belongs to another credential")
        now = self._clock()
        for service in services:
            state = self._owned(service, now)
            if state is not None and not owner.shares(state.owner, service):
                raise Refused(f"service {service} belongs to another credential")
        if max_tunnels is not None:
            going = sum(1 for c in leaving if c.owner.credential == owner.credential)
            held = self.tunnels_of(owner.credential) - going
            if held >= max_tunnels:
                raise Refused(
                    f"{owner.describe()} already has {held} tunnels open "
                    f"(its limit is {max_tunnels})",
                    exhausted=True,
                )

    def admit(
        self,
        owner: Owner,
        name: str,
        services: Iterable[str],
        *,
        kind: str = "reverse",
        holder: object = None,
        node: str | None = None,
        since: float | None = None,
    ) -> Claim[T]:
        """Records a tunnel that passed :meth:`check`: its name and services are held
        from now on (it is not routable until :meth:`publish`). ``node`` names the
        cluster node that holds the tunnel, when it is not this gateway's own; ``since``
        is when it was admitted (now, unless given)."""
        claim: Claim[T] = Claim(owner, name, tuple(dict.fromkeys(services)), kind, holder)
        claim.node = node
        claim.since = time.time() if since is None else since
        now = self._clock()
        self._sweep(now)
        for service in claim.services:
            state = self._owned(service, now)
            if state is None:
                state = self._services[service] = _Service(owner)
            state.claims += 1
            state.held.append(claim)
            state.released_at = None
        if name:
            self._names.setdefault(name, []).append(claim)
        self._per_credential.setdefault(owner.credential, set()).add(claim)
        return claim

    def publish(self, claim: Claim[T], tunnel: T) -> None:
        """The claim's tunnel is up: calls may be routed to it."""
        if claim.released or claim.tunnel is not None:
            return
        claim.tunnel = tunnel
        for service in claim.services:
            state = self._services[service]
            (state.live if claim.node is None else state.remote).append(claim)

    def release(self, claim: Claim[T]) -> None:
        """The claim's tunnel has ended (or never opened): no more calls go to it, and
        services that no tunnel announces any more start their grace period."""
        if claim.released:
            return
        claim.released = True
        now = self._clock()
        graced: list[str] = []
        for service in claim.services:
            state = self._services.get(service)
            if state is None:
                continue
            routable = state.live if claim.node is None else state.remote
            if claim.tunnel is not None and claim in routable:
                routable.remove(claim)
            if claim in state.held:
                state.held.remove(claim)
            state.claims -= 1
            if state.claims == 0:
                state.released_at = now
                self._graces.append((now, service))
                graced.append(service)
        if claim.node is None and self.on_grace is not None:
            for service in graced:
                self.on_grace(service, self._services[service].owner)
        claim.tunnel = None
        if claim.name:
            holders = self._names.get(claim.name, [])
            if claim in holders:
                holders.remove(claim)
            if not holders:
                self._names.pop(claim.name, None)
        held = self._per_credential.get(claim.owner.credential)
        if held is not None:
            held.discard(claim)
            if not held:
                del self._per_credential[claim.owner.credential]

    # -- routing --------------------------------------------------------------------

    def route(
        self,
        service: str,
        pin: str | None = None,
        usable: Callable[[T], bool] | None = None,
        *,
        local_only: bool = False,
        advance: bool = True,
    ) -> T | None:
        """A live tunnel serving ``service`` (through the tunnel named ``pin``, if
        given), in turn; None when there is none. With ``usable``, the next one in turn
        for which ``usable(tunnel)`` holds (None when it holds for none). This gateway's
        own tunnels come first: those of other cluster nodes are routed to only when
        none of its own serves the call, and never with ``local_only``. Without
        ``advance`` the turn stays where it is (a look that is not a call: reflection)."""
        state = self._services.get(service)
        if state is None:
            return None
        local_only = local_only or self.local_only
        candidates = state.live
        if pin is not None:
            candidates = [
                c
                for c in self._names.get(pin, ())
                if c.tunnel is not None
                and service in c.services
                and state.owner.shares(c.owner, service)
                and not (local_only and c.node is not None)
            ]
            local = [c for c in candidates if c.node is None]
            candidates = local or candidates
        elif not candidates and not local_only:
            candidates = state.remote
        if not candidates:
            return None
        if advance:
            state.turn += 1
        count = len(candidates)
        if usable is None:
            return candidates[state.turn % count].tunnel
        for step in range(count):
            tunnel = candidates[(state.turn + step) % count].tunnel
            if tunnel is not None and usable(tunnel):
                return tunnel
        return None

    def live(self, service: str) -> list[T]:
        """The live tunnels serving ``service`` now, in turn order."""
        state = self._services.get(service)
        if state is None:
            return []
        return [c.tunnel for c in (*state.live, *state.remote) if c.tunnel is not None]

    def serves(self, service: str) -> bool:
        """Whether some live tunnel (here or on another cluster node) serves
        ``service`` now."""
        state = self._services.get(service)
        return state is not None and bool(state.live or state.remote)

    def holding(self, name: str) -> list[Claim[T]]:
        """The unreleased claims under tunnel ``name``."""
        return list(self._names.get(name, ()))

    def exposed(self, *, local_only: bool = False) -> dict[str, list[str]]:
        """Service name -> names of the live tunnels serving it, for every service
        served now (by this gateway's own tunnels only, with ``local_only``)."""
        out: dict[str, list[str]] = {}
        for service, state in self._services.items():
            routable = state.live if local_only else (*state.live, *state.remote)
            names = list(dict.fromkeys(c.name for c in routable))
            if names:
                out[service] = names
        return out

    def conflicts(
        self, owner: Owner, name: str, services: Iterable[str]
    ) -> tuple[list[Claim[T]], list[str]]:
        """What a claim of ``owner`` for ``name`` and ``services`` would conflict
        with: the unreleased claims of other owners (of the name, or of a service it
        may not share), and the services owned by another owner only within their
        grace period. (Admission refuses such a claim; a claim another cluster node
        already admitted is settled by age instead.)"""
        found: list[Claim[T]] = []
        if name:
            found.extend(
                c for c in self._names.get(name, ()) if c.owner.credential != owner.credential
            )
        graced: list[str] = []
        now = self._clock()
        for service in services:
            state = self._owned(service, now)
            if state is None or owner.shares(state.owner, service):
                continue
            if state.held:
                found.extend(c for c in state.held if c not in found)
            else:
                graced.append(service)
        return found, graced

    def forget(self, service: str) -> None:
        """Forgets the owner of ``service`` if no claim holds it (ends its grace)."""
        state = self._services.get(service)
        if state is not None and state.claims == 0:
            del self._services[service]

    def reserve(self, service: str, owner: Owner, remaining: float) -> None:
        """Keeps ``service`` for ``owner`` for ``remaining`` more seconds of a grace
        period started elsewhere (on another cluster node), unless it is owned now."""
        now = self._clock()
        if remaining <= 0 or self._owned(service, now) is not None:
            return
        released_at = now - max(0.0, self.service_grace - remaining)
        self._services[service] = _Service(owner, released_at=released_at)
        self._graces.append((now, service))

    def owner_of(self, service: str) -> Owner | None:
        """Who owns ``service`` now (within its grace period too), or None."""
        state = self._owned(service, self._clock())
        return state.owner if state is not None else None

    def tunnels_of(self, credential: str | None) -> int:
        """How many admitted tunnels (forward and reverse) ``credential`` holds."""
        return len(self._per_credential.get(credential, ()))

    def claims_of(self, credential: str | None) -> list[Claim[T]]:
        """The admitted (unreleased) claims of ``credential``, here and on other nodes."""
        return list(self._per_credential.get(credential, ()))

    # -- internals --------------------------------------------------------------------

    def _sweep(self, now: float) -> None:
        graces = self._graces
        while graces and now - graces[0][0] >= self.service_grace:
            _, service = graces.popleft()
            self._owned(service, now)

    def _owned(self, service: str, now: float) -> _Service[T] | None:
        """The service's state if it is owned now; forgets one whose grace is over."""
        state = self._services.get(service)
        if state is None:
            return None
        if state.claims == 0 and state.released_at is not None:
            if now - state.released_at >= self.service_grace:
                del self._services[service]
                return None
        return state


__all__ = ["DEFAULT_SERVICE_GRACE", "Claim", "Owner", "Refused", "TunnelDirectory"]
