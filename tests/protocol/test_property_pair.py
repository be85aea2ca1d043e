"""Property (b): a back-to-back pair with random message sizes, chunk limits and
windows, and random interleavings of application reads and frame pumping.

* every message arrives intact and in order, both ways, on every stream;
* no sender ever exceeds the window its peer advertised, nor its chunk limit (checked
  on each data frame from the wire alone, by the harness's WireChecker);
* a receiver never holds more than its window plus one message of unread data;
* once the consumers keep consuming, everything completes within a bounded number of
  rounds: the pair never deadlocks;

with batch frames (the extension between peers of this project) on and off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpctunnel.protocol import (
    Event,
    HalfClosed,
    MessageReceived,
    StreamCancelled,
    StreamClosed,
    StreamFailed,
    StreamOpened,
)

from .harness import Pair, md, payload

# GRPCTUNNEL_PROPERTY_EXAMPLES=5000 for a longer hunt
PAIR = settings(
    max_examples=int(os.environ.get("GRPCTUNNEL_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

message_sizes = st.one_of(
    st.integers(0, 16), st.integers(0, 2500), st.sampled_from([0, 1, 64, 1024, 4096])
)


@dataclass
class StreamPlan:
    requests: list[int]
    responses: list[int]
    request_streaming: bool
    response_streaming: bool


@st.composite
def stream_plans(draw: st.DrawFn) -> StreamPlan:
    requests = draw(st.lists(message_sizes, max_size=4))
    responses = draw(st.lists(message_sizes, max_size=4))
    return StreamPlan(
        requests,
        responses,
        request_streaming=len(requests) > 1 or draw(st.booleans()),
        response_streaming=len(responses) > 1 or draw(st.booleans()),
    )


@dataclass
class Side:
    """One application: what it still has to send, and what it has received but not
    yet read (it reads only when the schedule says so)."""

    to_send: dict[int, list[bytes]] = field(default_factory=dict)
    unread: dict[int, list[bytes]] = field(default_factory=dict)
    read: dict[int, list[bytes]] = field(default_factory=dict)


OPS = [
    "flush_client",
    "flush_server",
    "to_server",
    "to_server_one",
    "to_client",
    "to_client_one",
    "client_reads",
    "server_reads",
    "client_sends",
    "server_sends",
    "step",
]


@PAIR
@given(
    negotiated=st.booleans(),
    batching=st.booleans(),
    client_window=st.one_of(st.integers(16, 4096), st.just(65536)),
    server_window=st.one_of(st.integers(16, 4096), st.just(65536)),
    client_chunk=st.one_of(st.integers(16, 3000), st.just(16384)),
    server_chunk=st.one_of(st.integers(16, 3000), st.just(16384)),
    plans=st.lists(stream_plans(), min_size=1, max_size=3),
    schedule=st.lists(st.sampled_from(OPS), max_size=120),
    stall=st.sampled_from(["client", "server", "both"]),
    stall_rounds=st.integers(0, 60),
)
def test_pair_delivers_everything_in_order_within_windows(
    negotiated: bool,
    batching: bool,
    client_window: int,
    server_window: int,
    client_chunk: int,
    server_chunk: int,
    plans: list[StreamPlan],
    schedule: list[str],
    stall: str,
    stall_rounds: int,
) -> None:
    p = Pair(
        negotiated=negotiated,
        batching=batching,
        client={"receive_window": client_window, "max_chunk_size": client_chunk},
        server={"receive_window": server_window, "max_chunk_size": server_chunk},
    )
    p.handshake()
    client, server = Side(), Side()
    plan_of: dict[int, StreamPlan] = {}
    half_closed: set[int] = set()
    closed: dict[int, StreamClosed] = {}
    bad: list[Event] = []

    for i, plan in enumerate(plans):
        sid = p.client.open_stream(
            "/test.Svc/M", md(i=str(i)), response_streaming=plan.response_streaming
        )
        plan_of[sid] = plan
        client.to_send[sid] = [payload(n, ("req", sid, j)) for j, n in enumerate(plan.requests)]
        client.unread[sid], client.read[sid] = [], []
        server.unread[sid], server.read[sid] = [], []

    p.request_streaming = lambda e: plan_of[e.stream_id].request_streaming

    def on_server(e: Event) -> None:
        if isinstance(e, StreamOpened):
            plan = plan_of[e.stream_id]
            server.to_send[e.stream_id] = [
                payload(n, ("resp", e.stream_id, j)) for j, n in enumerate(plan.responses)
            ]
        elif isinstance(e, MessageReceived):
            server.unread[e.stream_id].append(e.data)
        elif isinstance(e, HalfClosed):
            half_closed.add(e.stream_id)
        else:
            bad.append(e)

    def on_client(e: Event) -> None:
        if isinstance(e, MessageReceived):
            client.unread[e.stream_id].append(e.data)
        elif isinstance(e, StreamClosed):
            closed[e.stream_id] = e
        elif isinstance(e, StreamFailed | StreamCancelled):
            bad.append(e)

    p.on_server_event = on_server
    p.on_client_event = on_client

    client_half_closed: set[int] = set()
    server_closed: set[int] = set()

    def client_sends() -> int:
        n = 0
        for sid, msgs in client.to_send.items():
            if msgs:
                assert p.client.send_message(sid, msgs.pop(0))
                n += 1
            elif sid not in client_half_closed:
                p.client.half_close(sid)
                client_half_closed.add(sid)
                n += 1
        return n

    def server_sends() -> int:
        n = 0
        for sid, msgs in server.to_send.items():
            if msgs:
                assert p.server.send_message(sid, msgs.pop(0))
                n += 1
            elif (
                sid in half_closed
                and not server.unread[sid]
                and len(server.read[sid]) == len(plan_of[sid].requests)
                and sid not in server_closed
            ):
                assert p.server.close_stream(sid, None, md(done="1"))
                server_closed.add(sid)
                n += 1
        return n

    def reads(side: Side, conn: object) -> int:
        n = 0
        for sid, msgs in side.unread.items():
            if msgs:
                side.read[sid].append(msgs.pop(0))
                conn.message_consumed(sid)  # type: ignore[attr-defined]
                n += 1
        return n

    def check_held() -> None:
        """Unread data a receiver holds: at most its window plus one message."""
        if p.client.revision == 0:
            return
        for sid, plan in plan_of.items():
            biggest_req = max(plan.requests, default=0)
            biggest_resp = max(plan.responses, default=0)
            held_s = p.delivered_c2s.get(sid, 0) - sum(len(m) for m in server.read[sid])
            assert held_s <= server_window + biggest_req, (sid, held_s)
            held_c = p.delivered_s2c.get(sid, 0) - sum(len(m) for m in client.read[sid])
            assert held_c <= client_window + biggest_resp, (sid, held_c)

    actions = {
        "flush_client": p.flush_client,
        "flush_server": p.flush_server,
        "to_server": p.deliver_to_server,
        "to_server_one": lambda: p.deliver_to_server(1),
        "to_client": p.deliver_to_client,
        "to_client_one": lambda: p.deliver_to_client(1),
        "client_reads": lambda: reads(client, p.client),
        "server_reads": lambda: reads(server, p.server),
        "client_sends": client_sends,
        "server_sends": server_sends,
        "step": p.step,
    }
    # a random interleaving: consumers may stall for a while
    for op in schedule:
        actions[op]()
        check_held()
        assert not bad, bad

    # a stall: both sides send and pump but one or both read nothing
    for _ in range(stall_rounds):
        client_sends()
        server_sends()
        p.step()
        check_held()
        if stall == "client":
            reads(server, p.server)
        elif stall == "server":
            reads(client, p.client)
        assert not bad, bad

    # then everybody keeps going: it must all finish, and every round must make
    # progress (a round in which nothing at all moves is a deadlock)
    for _ in range(5_000):
        if len(closed) == len(plans):
            break
        moved = client_sends() + server_sends() + p.step()
        check_held()
        moved += reads(client, p.client) + reads(server, p.server)
        assert not bad, bad
        assert moved, f"deadlock: {len(closed)} of {len(plans)} streams finished"
    else:
        raise AssertionError(f"no end: {len(closed)} of {len(plans)} streams finished")
    p.pump()
    while reads(client, p.client) + reads(server, p.server):
        pass

    for sid, plan in plan_of.items():
        assert server.read[sid] == [
            payload(n, ("req", sid, j)) for j, n in enumerate(plan.requests)
        ]
        assert client.read[sid] == [
            payload(n, ("resp", sid, j)) for j, n in enumerate(plan.responses)
        ]
        assert closed[sid].status is None
        assert list(closed[sid].trailers.md["done"].val) == ["1"]
    assert p.client.active_streams == 0
    assert p.server.active_streams == 0
    assert not p.client.wants_to_send() and not p.server.wants_to_send()
    assert not p.in_flight_c2s and not p.in_flight_s2c
    assert not bad, bad
    if not batching:
        assert p.batches_c2s == p.batches_s2c == 0
