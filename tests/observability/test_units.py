"""The pieces on their own: label bounds and reasons of the metrics, the admin right, the
JSON log formatter."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from grpctunnel.gateway import metrics as m
from grpctunnel.gateway.admin import CLOSED_BY_ADMIN
from grpctunnel.gateway.announce import TAKEN_OVER
from grpctunnel.gateway.auth import (
    AuthConfigError,
    Grant,
    TokenAuthority,
    bearer_metadata,
    check,
)
from grpctunnel.gateway.proxy import RelayStats
from grpctunnel_cli.logs import JsonFormatter

LIST = "/grpctunnel.admin.v1.Admin/ListTunnels"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("tunnel closed by peer", "peer"),
        ("tunnel closed", "disconnected"),
        ("tunnel lost: Socket closed", "lost"),
        (f"tunnel name 'x' {TAKEN_OVER} of the same credential", "taken_over"),
        ("tunnel 'x' replaced by a reconnection of the same exposer", "replaced"),
        (CLOSED_BY_ADMIN, "admin"),
        ("tunnel server shutting down", "shutdown"),
        ("tunnel protocol error: bad frame", "protocol_error"),
        ("something else entirely, 1234", "other"),
    ],
)
def test_close_reasons_come_from_a_fixed_set(text: str, reason: str) -> None:
    assert m.closed_reason(text) == reason
    assert reason in m.CLOSED_REASONS


def test_refusal_reasons_come_from_a_fixed_set() -> None:
    for code in grpc.StatusCode:
        assert m.refused_reason(code) in m.REFUSED_REASONS
    assert m.refused_reason(grpc.StatusCode.PERMISSION_DENIED) == "permission_denied"
    assert m.refused_reason(grpc.StatusCode.DATA_LOSS) == "other"


def _series(metrics: m.GatewayMetrics, name: str) -> list[dict[str, str]]:
    return [
        dict(sample.labels)
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    ]


def test_method_labels_are_bounded_per_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(m, "MAX_METHODS_PER_SERVICE", 3)
    monkeypatch.setattr(m, "MAX_SERVICES", 2)
    metrics = m.GatewayMetrics()
    metrics.bind(RelayStats())
    for i in range(10):  # each answered OK: only the first three are named
        metrics.call_ended(f"/a.Svc/M{i}", grpc.StatusCode.OK, 0.1, routed=True)
    metrics.call_ended("/a.Svc/M0", grpc.StatusCode.INTERNAL, 0.1, routed=True)  # known
    metrics.call_ended("/a.Svc/Never", grpc.StatusCode.UNAVAILABLE, 0.1, routed=True)
    for service in ("b.Svc", "c.Svc", "d.Svc"):  # only two services are named
        metrics.call_ended(f"/{service}/X", grpc.StatusCode.OK, 0.1, routed=True)
    metrics.call_ended("/made.Up/X", grpc.StatusCode.UNAVAILABLE, 0.0, routed=False)
    labels = {
        (s["service"], s["method"], s["code"]) for s in _series(metrics, "grpctunnel_calls_total")
    }
    assert labels == {
        ("a.Svc", "M0", "OK"),
        ("a.Svc", "M1", "OK"),
        ("a.Svc", "M2", "OK"),
        ("a.Svc", m.UNKNOWN, "OK"),
        ("a.Svc", "M0", "INTERNAL"),
        ("a.Svc", m.UNKNOWN, "UNAVAILABLE"),
        ("b.Svc", "X", "OK"),
        (m.OTHER, m.UNKNOWN, "OK"),
        (m.UNKNOWN, m.UNKNOWN, "UNAVAILABLE"),
    }


def test_cluster_hooks() -> None:
    metrics = m.GatewayMetrics()
    metrics.node_seen("n1")
    metrics.node_seen("n2")
    metrics.node_seen("n1")
    metrics.node_gone("n2")
    metrics.call_relayed_to_node(grpc.StatusCode.OK)
    assert metrics.registry.get_sample_value("grpctunnel_cluster_nodes") == 1
    assert (
        metrics.registry.get_sample_value("grpctunnel_cluster_relayed_calls_total", {"code": "OK"})
        == 1
    )


def test_two_gateways_metrics_do_not_collide() -> None:
    one, two = m.GatewayMetrics(), m.GatewayMetrics()
    one.tunnel_opened("reverse")
    assert one.registry.get_sample_value("grpctunnel_tunnels_open", {"direction": "reverse"}) == 1
    assert two.registry.get_sample_value("grpctunnel_tunnels_open", {"direction": "reverse"}) == 0


def _token_file(tmp_path: Path, entry: dict[str, Any]) -> Path:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [{"token": "t", **entry}]}))
    return path


def test_the_admin_right(tmp_path: Path) -> None:
    single = TokenAuthority.single("t")
    assert check(single, LIST, bearer_metadata("t")) is None  # one token: every right
    default = TokenAuthority.from_file(_token_file(tmp_path, {"name": "n"}))
    refusal = check(default, LIST, bearer_metadata("t"))
    assert refusal is not None and refusal[0] == grpc.StatusCode.PERMISSION_DENIED
    assert '"admin": true' in refusal[1]
    admin = TokenAuthority.from_file(
        _token_file(tmp_path, {"name": "n", "admin": True, "call": False, "expose": False})
    )
    assert check(admin, LIST, bearer_metadata("t")) is None
    assert admin.authenticate(bearer_metadata("t")) == Grant(
        name="n", may_expose=False, may_call=False, may_admin=True
    )
    with pytest.raises(AuthConfigError, match="'admin' must be true or false"):
        TokenAuthority.from_file(_token_file(tmp_path, {"admin": "yes"}))


def test_json_formatter() -> None:
    formatter = JsonFormatter({"node": "n1"})
    record = logging.LogRecord("grpctunnel", logging.INFO, __file__, 1, "hi %s", ("there",), None)
    record.event = "call"
    record.tunnel = "t1"
    record.duration = 0.25
    line = json.loads(formatter.format(record))
    assert line["event"] == "call" and line["level"] == "info"
    assert line["message"] == "hi there" and line["tunnel"] == "t1" and line["node"] == "n1"
    assert line["duration"] == 0.25 and line["time"].endswith("Z")
    plain = logging.LogRecord("grpctunnel", logging.WARNING, __file__, 1, "x", (), None)
    assert json.loads(formatter.format(plain))["event"] == "log"
