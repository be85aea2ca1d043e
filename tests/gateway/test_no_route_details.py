"""The "no tunnel exposes service X" error stays one readable line however many services
and tunnels there are."""

from __future__ import annotations

import pytest

from grpctunnel.gateway.gateway import no_route_details

pytestmark = pytest.mark.timeout(10)


def test_nothing_exposed() -> None:
    assert no_route_details("a.B", None, {}) == (
        "no tunnel exposes service a.B; exposed now: nothing"
    )


def test_a_few_are_all_named() -> None:
    exposed = {"x.Y": ["t2", "t1"], "w.V": ["t1"]}
    assert no_route_details("a.B", "t9", exposed) == (
        "no tunnel exposes service a.B through tunnel 't9'; exposed now: w.V (via t1); "
        "x.Y (via t1, t2)"
    )


def test_many_services_and_tunnels_are_capped() -> None:
    exposed = {f"pkg.S{i:02}": [f"tunnel-{j}" for j in range(50)] for i in range(400)}
    details = no_route_details("a.B", None, exposed)
    assert "\n" not in details
    assert len(details) < 700, len(details)
    first = "pkg.S00 (via tunnel-0, tunnel-1, tunnel-10, and 47 more)"
    assert details.startswith(f"no tunnel exposes service a.B; exposed now: {first}; pkg.S01")
    assert details.endswith(
        "pkg.S09 (via tunnel-0, tunnel-1, tunnel-10, and 47 more); and 390 more"
    )
