"""The gateway's directory on its own: ownership of names and services, the grace period,
sharing by group and by the token file's lists, tunnel limits, and routing by index."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpctunnel.gateway.directory import Owner, Refused, TunnelDirectory

LEDGER = "acme.ledger.v1.Ledger"
BILLING = Owner("billing")
DEVICE = Owner("device")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _open(d: TunnelDirectory[str], owner: Owner, name: str, *services: str) -> str:
    d.check(owner, name, services)
    claim = d.admit(owner, name, services)
    tunnel = f"{owner.credential}:{name}"
    d.publish(claim, tunnel)
    return tunnel


def test_a_service_belongs_to_whoever_announced_it_first() -> None:
    d: TunnelDirectory[str] = TunnelDirectory()
    _open(d, BILLING, "billing", LEDGER)
    with pytest.raises(Refused, match=f"service {LEDGER} belongs to another credential"):
        d.check(DEVICE, "device-17", [LEDGER])
    assert d.owner_of(LEDGER) == BILLING
    assert {d.route(LEDGER) for _ in range(6)} == {"billing:billing"}


def test_tunnels_of_one_credential_share_a_service_and_its_calls() -> None:
    d: TunnelDirectory[str] = TunnelDirectory()
    _open(d, BILLING, "a", LEDGER)
    _open(d, BILLING, "b", LEDGER)
    assert sorted(d.route(LEDGER) or "" for _ in range(4)) == ["billing:a"] * 2 + ["billing:b"] * 2


def test_the_owner_keeps_its_service_for_the_grace_period() -> None:
    clock = Clock()
    d: TunnelDirectory[str] = TunnelDirectory(service_grace=30, clock=clock)
    claim = d.admit(BILLING, "billing", [LEDGER])
    d.publish(claim, "t")
    d.release(claim)
    assert d.route(LEDGER) is None and not d.serves(LEDGER)
    clock.now += 29.9
    with pytest.raises(Refused):
        d.check(DEVICE, "device-17", [LEDGER])
    _open(d, BILLING, "billing", LEDGER)  # the owner comes back within the grace
    assert d.route(LEDGER) == "billing:billing"


def test_after_the_grace_period_anyone_may_claim_the_service() -> None:
    clock = Clock()
    d: TunnelDirectory[str] = TunnelDirectory(service_grace=30, clock=clock)
    claim = d.admit(BILLING, "billing", [LEDGER])
    d.release(claim)
    clock.now += 30
    _open(d, DEVICE, "device-17", LEDGER)
    assert d.owner_of(LEDGER) == DEVICE
    with pytest.raises(Refused):
        d.check(BILLING, "billing", [LEDGER])


def test_a_grace_period_started_elsewhere_holds_for_what_is_left_of_it() -> None:
    clock = Clock()
    d: TunnelDirectory[str] = TunnelDirectory(service_grace=30, clock=clock)
    d.reserve(LEDGER, BILLING, 10.0)  # another node's grace, 10 s left of it
    assert d.owner_of(LEDGER) == BILLING and not d.serves(LEDGER)
    with pytest.raises(Refused):
        d.check(DEVICE, "device-17", [LEDGER])
    d.reserve(LEDGER, DEVICE, 30.0)  # owned now: a second reservation changes nothing
    assert d.owner_of(LEDGER) == BILLING
    clock.now += 10
    assert d.owner_of(LEDGER) is None
    d.reserve(LEDGER, DEVICE, 0.0)  # a grace that is over reserves nothing
    assert d.owner_of(LEDGER) is None


def test_the_end_of_an_own_tunnel_tells_of_the_grace_it_starts() -> None:
    d: TunnelDirectory[str] = TunnelDirectory(service_grace=30, clock=Clock())
    started: list[tuple[str, Owner]] = []
    d.on_grace = lambda service, owner: started.append((service, owner))
    first = d.admit(BILLING, "a", [LEDGER, "acme.v1.Other"])
    second = d.admit(BILLING, "b", [LEDGER])
    d.release(first)
    assert started == [("acme.v1.Other", BILLING)]  # the ledger is still announced by b
    d.release(second)
    assert started == [("acme.v1.Other", BILLING), (LEDGER, BILLING)]
    # another node's tunnel: that node tells of its grace, not this one
    d.release(d.admit(DEVICE, "r", ["acme.v1.Remote"], node="n2"))
    assert len(started) == 2


def test_a_group_shares_its_services() -> None:
    d: TunnelDirectory[str] = TunnelDirectory()
    _open(d, Owner("billing-eu", group="billing"), "eu", LEDGER)
    _open(d, Owner("billing-us", group="billing"), "us", LEDGER)
    assert {d.route(LEDGER) for _ in range(4)} == {"billing-eu:eu", "billing-us:us"}
    with pytest.raises(Refused):
        d.check(Owner("device", group="devices"), "d", [LEDGER])


def test_credentials_that_both_list_a_service_share_it() -> None:
    d: TunnelDirectory[str] = TunnelDirectory()
    _open(d, Owner("a", listed=frozenset({LEDGER})), "a", LEDGER)
    _open(d, Owner("b", listed=frozenset({LEDGER, "x.Y"})), "b", LEDGER)
    with pytest.raises(Refused):  # one side listing it is not enough
        d.check(Owner("c"), "c", [LEDGER])


def test_without_tokens_everyone_is_one_owner() -> None:
    d: TunnelDirectory[str] = TunnelDirectory()
    _open(d, Owner(), "a", LEDGER)
    _open(d, Owner(), "b", LEDGER)
    assert {d.route(LEDGER) for _ in range(4)} == {"None:a", "None:b"}


def test_a_name_belongs_to_one_credential() -> None:
    d: TunnelDirectory[str] = TunnelDirectory()
    _open(d, BILLING, "shared-name", "x.A")
    with pytest.raises(Refused, match="tunnel name 'shared-name' belongs to another credential"):
        d.check(DEVICE, "shared-name", ["x.B"])
    d.check(BILLING, "shared-name", ["x.A"])  # its own credential may reuse it


def test_a_pin_reaches_only_the_named_tunnel() -> None:
    d: TunnelDirectory[str] = TunnelDirectory()
    _open(d, BILLING, "a", LEDGER)
    _open(d, BILLING, "b", LEDGER)
    assert {d.route(LEDGER, "b") for _ in range(4)} == {"billing:b"}
    assert d.route(LEDGER, "nope") is None
    _open(d, DEVICE, "device-17", "other.Svc")
    assert d.route(LEDGER, "device-17") is None  # a tunnel that does not serve it


def test_tunnel_limits_count_per_credential() -> None:
    d: TunnelDirectory[str] = TunnelDirectory()
    first = d.admit(BILLING, "a", [])
    d.admit(BILLING, "b", [], kind="forward")
    with pytest.raises(Refused, match="already has 2 tunnels open") as refused:
        d.check(BILLING, "c", [], max_tunnels=2)
    assert refused.value.exhausted
    d.check(BILLING, "c", [], max_tunnels=2, leaving=[first])  # one it replaces
    d.release(first)
    d.check(BILLING, "c", [], max_tunnels=2)
    assert d.tunnels_of("billing") == 1


def test_releasing_twice_and_publishing_a_released_claim_change_nothing() -> None:
    d: TunnelDirectory[str] = TunnelDirectory()
    claim = d.admit(BILLING, "a", [LEDGER])
    d.release(claim)
    d.release(claim)
    d.publish(claim, "late")
    assert d.route(LEDGER) is None and d.tunnels_of("billing") == 0


_OWNERS = [Owner("a"), Owner("b", group="g"), Owner("c", group="g"), Owner()]
_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["open", "publish", "close", "wait"]),
        st.integers(0, 3),  # owner
        st.sampled_from(["s1", "s2", "s3"]),
        st.integers(0, 40),  # which claim / how long
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_ACTIONS)
def test_ownership_invariants_hold_for_any_sequence(
    actions: list[tuple[str, int, str, int]],
) -> None:
    """Whatever opens and closes in whatever order: every live tunnel of a service shares
    it with its owner, routing only returns such tunnels, and once everything has closed
    and the grace has passed the directory holds nothing."""
    clock = Clock()
    d: TunnelDirectory[str] = TunnelDirectory(service_grace=10, clock=clock)
    claims = []
    for action, who, service, n in actions:
        owner = _OWNERS[who]
        if action == "open":
            try:
                d.check(owner, f"n{who}", [service])
            except Refused:
                continue
            claims.append(d.admit(owner, f"n{who}", [service]))
        elif action == "publish" and claims:
            claim = claims[n % len(claims)]
            d.publish(claim, f"{id(claim)}")
        elif action == "close" and claims:
            d.release(claims.pop(n % len(claims)))
        elif action == "wait":
            clock.now += n / 4
        for svc in ("s1", "s2", "s3"):
            owner_now = d.owner_of(svc)
            live = [c for c in claims if c.tunnel is not None and svc in c.services]
            if live:
                assert owner_now is not None
                assert all(c.owner.shares(owner_now, svc) for c in live)
                assert d.route(svc) in {c.tunnel for c in live}
            else:
                assert d.route(svc) is None
    for claim in claims:
        d.release(claim)
    clock.now += 10
    d.admit(Owner("z"), "", [])  # admission sweeps expired graces
    assert all(d.owner_of(s) is None for s in ("s1", "s2", "s3"))
    assert d.exposed() == {}
