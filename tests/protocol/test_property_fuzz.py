"""Property (a): random and malformed frame sequences, mixed with random application
actions, thrown at both connection kinds. The only exception that may escape is
ProtocolError, and after every step the window and queue invariants hold.

Frames arrive as the session reads them: one message of the tunnel RPC at a time, put
through ``unbatch()``, its plain frames fed to ``receive()`` one by one. With batching
negotiated or not, some messages are batches: of random frames, of a whole call
(``new_stream``, its requests and half-close, as a peer of this project sends them),
or malformed (nested, carrying a frame kind of their own, empty); and what the
connection sends is checked to be packed as the batch extension says (only when
negotiated, small frames only, never a batch of one).

The frames are drawn step by step with the connection's current state in view, so
that most of them hit live streams (a plausible frame with a random flaw: a lying
size, a chunk past the window, a second message, a frame after half-close...) while
about one in 25 is pure noise (stream ids 0, -1 and huge, unset oneof, anything).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from google.rpc import status_pb2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from grpctunnel.protocol import (
    CallingConnection,
    Code,
    ConnectionConfig,
    ProtocolError,
    ServingConnection,
    StreamOpened,
)
from grpctunnel.protocol.batch import BATCH_BYTES, BATCH_FRAME_LIMIT
from grpctunnel.protocol.stream import StreamState
from grpctunnel.v1 import tunnel_pb2

from .harness import C2S, EMPTY, S2C, check_invariants, chunk_of, kind, md

Frame = TypeVar("Frame", C2S, S2C)

T = TypeVar("T")

# GRPCTUNNEL_PROPERTY_EXAMPLES=5000 for a longer hunt
FUZZ = settings(
    max_examples=int(os.environ.get("GRPCTUNNEL_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MAX_ID = 2**63 - 1  # stream ids are int64
NOISE_IDS = [0, -1, -2, 2**31, 2**62, MAX_ID, -(2**63)]
noise_ids = st.one_of(st.sampled_from(NOISE_IDS), st.integers(-3, 12))
uint32 = st.one_of(
    st.integers(0, 5000),
    st.integers(0, 70_000),
    st.sampled_from([0, 1, 2**31, 2**32 - 65536, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)
lengths = st.one_of(st.integers(0, 40), st.integers(0, 3000), st.integers(0, 20_000))
send_lengths = st.one_of(st.integers(0, 40), st.integers(0, 3000))
bad_methods = st.one_of(
    st.sampled_from(["/a.B/C", "", "bad", "/only", "/a/b/c", "/x y/z", "/p.S/M\n", "/"]),
    st.text(max_size=12),
)
revisions = st.one_of(st.sampled_from([0, 1]), st.integers(-3, 5), st.just(2**31 - 1))
one_in_25 = st.integers(0, 24)
take_budgets = st.sampled_from([1, 1000, 1 << 20])
close_codes = st.sampled_from([None, Code.OK, Code.INTERNAL])
accept_modes = st.sampled_from(["stream", "unary", "none", "reject"])

C2S_KINDS = [
    "new_stream",
    "request_message",
    "more_request_data",
    "half_close",
    "cancel",
    "window_update",
    None,
]
S2C_KINDS = [
    "response_headers",
    "response_message",
    "more_response_data",
    "close_stream",
    "window_update",
    "settings",
    None,
]

_BUF = bytes(range(251)) * 100


def blob(n: int) -> bytes:
    return _BUF[:n]


def pick(data: st.DataObject, seq: Sequence[T], label: str) -> T:
    """One element of a non-empty sequence (cheaper than a fresh sampled_from)."""
    return seq[data.draw(st.integers(0, len(seq) - 1), label=label)]


def partial_remaining(conn: CallingConnection | ServingConnection, sid: int) -> int | None:
    stream = conn._streams.get(sid)
    if stream is None or stream.partial is None:
        return None
    return stream.partial.size - stream.partial.received


def draw_message(data: st.DataObject) -> tunnel_pb2.MessageData:
    n = data.draw(lengths, label="chunk length")
    size = data.draw(
        st.one_of(
            st.just(n),  # a whole message in one frame
            st.integers(n, n + 300),  # more chunks to come
            st.integers(n, n + 20_000),
            uint32,  # anything, even less than the chunk
        ),
        label="size",
    )
    return tunnel_pb2.MessageData(size=size, data=blob(n))


def draw_more(data: st.DataObject, remaining: int | None) -> bytes:
    if remaining is None or data.draw(st.integers(0, 3), label="random more?") == 0:
        return blob(data.draw(lengths, label="more length"))
    # mostly a plausible chunk: all of the rest, or some of it (sometimes a bit too much)
    return blob(data.draw(st.one_of(st.just(remaining), st.integers(0, remaining + 5))))


def data_kind(data: st.DataObject, partial: int | None, first: str, more: str) -> str:
    """A message start or more data, mostly whichever fits the stream's state."""
    fitting = more if partial is not None else first
    other = first if partial is not None else more
    return fitting if data.draw(st.integers(0, 5), label="misfit?") else other


def check_out_frames(frames: list[Any], conn: CallingConnection | ServingConnection) -> None:
    plain: list[Any] = []
    for f in frames:
        if not f.batch:
            plain.append(f)
            continue
        assert conn.config.batching, "a batch to a peer that did not negotiate them"
        assert kind(f) is None and f.stream_id == 0
        inner = list(f.batch)
        assert len(inner) >= 2, "a batch of one frame"
        assert all(not g.batch and g.ByteSize() < BATCH_FRAME_LIMIT for g in inner)
        assert sum(g.ByteSize() for g in inner) <= BATCH_BYTES
        plain.extend(inner)
    for f in plain:
        k = kind(f)
        assert k is not None
        type(f).FromString(f.SerializeToString())
        assert f.stream_id == -1 if k == "settings" else f.stream_id > 0
        c = chunk_of(f)
        if c is not None:
            assert len(c) <= conn.max_chunk_size
        if k == "new_stream":
            assert f.new_stream.method_name
        if k == "window_update":
            assert 0 < f.window_update < 2**32


GOOD_BATCHES = ["frames", "call"]
BAD_BATCHES = ["nested", "with a kind", "empty"]
# how a run's peer batches: never; only as the extension allows (when negotiated);
# or anyhow (malformed batches, batches when not negotiated), which ends the tunnel
batch_habits = st.sampled_from(["never", "proper", "proper", "proper", "anyhow"])


def batch_of(frames: list[Frame]) -> Frame:
    outer = type(frames[0])()
    outer.batch.extend(frames)
    return outer


def draw_tunnel_message(
    data: st.DataObject,
    plain: list[Frame],
    call: Callable[[], list[Frame]] | None,
    batching: bool,
    habit: str,
) -> Frame:
    """One message of the tunnel RPC: mostly the first plain frame alone, sometimes a
    batch (malformed, or when not negotiated, only with the ``anyhow`` habit).
    ``plain`` are frames drawn for the connection's current state, ``call`` makes a
    whole call."""
    if habit == "never" or (habit == "proper" and not batching):
        return plain[0]
    if data.draw(st.integers(0, 5 if habit == "proper" else 15), label="batch?"):
        return plain[0]
    shapes = GOOD_BATCHES if habit == "proper" else GOOD_BATCHES + BAD_BATCHES
    shape = pick(data, shapes if call is not None else shapes[:1] + shapes[2:], "shape")
    if shape == "frames":
        return batch_of(plain)
    if shape == "call":
        assert call is not None
        return batch_of(call())
    if shape == "nested":
        return batch_of([plain[0], batch_of(plain)])
    if shape == "with a kind":
        outer = batch_of(plain)
        outer.MergeFrom(plain[0])  # a frame kind of its own, and its stream id
        return outer
    return type(plain[0])(stream_id=plain[0].stream_id)  # empty: a frame of no kind


def feed(
    data: st.DataObject,
    conn: CallingConnection | ServingConnection,
    message: Any,
    side: str,
) -> None:
    """Feeds one message as the session does: answers each StreamOpened (serving side)
    before the next frame is taken in, and takes in nothing while the output is
    backlogged (the session waits for it to be written; here it is taken at once)."""
    frames = conn.unbatch(message)
    if message.batch:
        event(f"{side}: a batch taken in")
    for one in frames:
        if conn.output_backlogged:
            event(f"{side}: output backlogged")
            check_out_frames(conn.take_frames(), conn)
        for e in conn.receive(one):
            event(f"{side}: {type(e).__name__}")
            if isinstance(e, StreamOpened) and isinstance(conn, ServingConnection):
                how = data.draw(accept_modes)
                if how == "reject":
                    conn.reject_stream(e.stream_id, Code.UNIMPLEMENTED, "no")
                elif how != "none":
                    conn.accept_stream(e.stream_id, request_streaming=how == "stream")


# -- the calling side ------------------------------------------------------------------


def calling_frame(data: st.DataObject, c: CallingConnection) -> S2C:
    live = [i for i, x in c._streams.items() if x.announced]
    finished = [i for i in range(1, c._last_stream_id + 1) if i not in c._streams]
    if data.draw(one_in_25, label="noise?") == 24:
        k = pick(data, S2C_KINDS, "noise kind")
        sid = data.draw(noise_ids, label="noise id")
    elif not live:
        # nothing to talk about yet: a (repeated) settings frame, or a late frame
        k = pick(data, S2C_KINDS[:-2] if finished else ["settings"], "kind")
        sid = pick(data, finished, "finished id") if finished else -1
    else:
        if finished and data.draw(st.integers(0, 4), label="finished?") == 0:
            sid = pick(data, finished, "finished id")
        else:
            sid = pick(data, live, "live id")
        k = pick(
            data,
            ["response_headers", "data", "data", "data", "data", "close_stream", "window_update"],
            "kind",
        )
        if k == "data":
            k = data_kind(data, partial_remaining(c, sid), "response_message", "more_response_data")
    f = S2C(stream_id=sid)
    if k == "settings":
        f.stream_id = pick(data, [-1] * 12 + [0, 1, 2**62], "settings id")
        f.settings.supported_protocol_revisions.extend(  # type: ignore[arg-type]
            data.draw(st.lists(revisions, max_size=4), label="revisions")
        )
        f.settings.initial_window_size = data.draw(uint32, label="window")
    elif k == "response_headers":
        f.response_headers.CopyFrom(
            md(h="v") if data.draw(st.booleans()) else tunnel_pb2.Metadata()
        )
    elif k == "response_message":
        f.response_message.CopyFrom(draw_message(data))
    elif k == "more_response_data":
        f.more_response_data = draw_more(data, partial_remaining(c, sid))
    elif k == "close_stream":
        f.close_stream.SetInParent()
        if data.draw(st.booleans()):
            f.close_stream.status.code = data.draw(st.integers(0, 20))
            f.close_stream.status.message = "m"
    elif k == "window_update":
        f.window_update = data.draw(uint32, label="credit")
    return f


CALLING_OPS = ["frame"] * 6 + [
    "open",
    "send",
    "send",
    "half_close",
    "cancel",
    "consume",
    "take",
    "take",
]


@FUZZ
@given(
    negotiated=st.booleans(),
    batching=st.booleans(),
    habit=batch_habits,
    good_settings_first=st.sampled_from([True] * 6 + [False]),
    window=st.sampled_from([1, 7, 1000, 65536, 2**32 - 1]),
    peer_window=st.sampled_from([0, 1, 100, 65536, 2**32 - 1]),
    chunk=st.sampled_from([3, 100, 16384]),
    max_msg=st.sampled_from([None, 0, 100, 10_000]),
    steps=st.integers(1, 80),
    data=st.data(),
)
def test_calling_connection_survives_random_frames(
    negotiated: bool,
    batching: bool,
    habit: str,
    good_settings_first: bool,
    window: int,
    peer_window: int,
    chunk: int,
    max_msg: int | None,
    steps: int,
    data: st.DataObject,
) -> None:
    c = CallingConnection(
        ConnectionConfig(
            negotiated=negotiated,
            receive_window=window,
            max_chunk_size=chunk,
            max_receive_message_size=max_msg,
            batching=batching,
        )
    )
    if good_settings_first:
        c.receive(
            S2C(
                stream_id=-1,
                settings=tunnel_pb2.Settings(
                    supported_protocol_revisions=[0, 1],  # type: ignore[list-item]
                    initial_window_size=peer_window,
                ),
            )
        )
    for _ in range(steps):
        op = pick(data, CALLING_OPS, "op")
        if op == "frame" and c.ready and not any(x.announced for x in c._streams.values()):
            op = "open" if data.draw(st.integers(0, 4), label="open first?") else op
        sids = sorted(c._streams) or [1]
        try:
            if op == "frame":
                n = data.draw(st.integers(1, 4), label="frames")
                plain = [calling_frame(data, c) for _ in range(n)]
                feed(data, c, draw_tunnel_message(data, plain, None, batching, habit), "calling")
            elif op == "open":
                if c.ready:
                    c.open_stream(
                        "/pkg.Service/Method", response_streaming=data.draw(st.booleans())
                    )
                    if data.draw(st.integers(0, 3)):
                        check_out_frames(c.take_frames(), c)
            elif op == "send":
                c.send_message(pick(data, sids, "sid"), blob(data.draw(send_lengths)))
            elif op == "half_close":
                c.half_close(pick(data, sids, "sid"))
            elif op == "cancel":
                c.cancel(pick(data, sids, "sid"))
            elif op == "consume":
                c.message_consumed(pick(data, sids, "sid"))
            elif op == "take":
                check_out_frames(c.take_frames(data.draw(take_budgets)), c)
        except ProtocolError as e:
            assert e.code == Code.INTERNAL and e.message
            event("calling: ProtocolError")
            event("calling ProtocolError: " + e.message[:30])
            return
        check_invariants(c)
    check_out_frames(c.take_frames(), c)
    check_invariants(c)


# -- the serving side ------------------------------------------------------------------


def serving_frame(data: st.DataObject, s: ServingConnection) -> C2S:
    hi = s._highest_stream_id
    live = sorted(i for i, x in s._streams.items() if x.state is not StreamState.CLOSING) or sorted(
        s._streams
    )
    if data.draw(one_in_25, label="noise?") == 24:
        k = pick(data, C2S_KINDS, "noise kind")
        sid = data.draw(
            st.one_of(noise_ids, st.integers(hi - 2, min(hi + 3, MAX_ID))), label="noise id"
        )
    elif not live or data.draw(st.integers(0, 5), label="open?") == 0:
        k = "new_stream"
        sid = data.draw(st.integers(min(hi + 1, MAX_ID), min(hi + 3, MAX_ID)), label="new id")
    else:
        if hi and data.draw(st.integers(0, 6), label="any old id?") == 0:
            sid = data.draw(st.integers(1, hi), label="old id")
        else:
            sid = pick(data, live, "live id")
        k = pick(data, ["data"] * 5 + ["half_close", "cancel", "window_update"], "kind")
        if k == "data":
            k = data_kind(data, partial_remaining(s, sid), "request_message", "more_request_data")
    f = C2S(stream_id=sid)
    if k == "new_stream":
        if data.draw(st.integers(0, 5), label="odd method?"):
            f.new_stream.method_name = "/pkg.Service/Method"
        else:
            f.new_stream.method_name = data.draw(bad_methods, label="method")
        f.new_stream.initial_window_size = data.draw(uint32, label="window")
        if data.draw(st.integers(0, 5), label="odd revision?"):
            f.new_stream.protocol_revision = pick(data, s.config.supported_revisions, "revision")  # type: ignore[assignment]
        else:
            f.new_stream.protocol_revision = data.draw(revisions, label="revision")  # type: ignore[assignment]
        if data.draw(st.booleans()):
            f.new_stream.request_headers.CopyFrom(md(k="v"))
    elif k == "request_message":
        f.request_message.CopyFrom(draw_message(data))
    elif k == "more_request_data":
        f.more_request_data = draw_more(data, partial_remaining(s, sid))
    elif k in ("half_close", "cancel"):
        getattr(f, k).CopyFrom(EMPTY)
    elif k == "window_update":
        f.window_update = data.draw(uint32, label="credit")
    return f


def whole_call(data: st.DataObject, s: ServingConnection) -> list[C2S]:
    """A call as a peer of this project batches it: its new_stream, requests (one
    message, sometimes a second on a unary method, sometimes cut in chunks) and
    half-close, sometimes with a flaw."""
    sid = min(s._highest_stream_id + 1, MAX_ID)
    revision = pick(data, s.config.supported_revisions, "revision")
    frames = [
        C2S(
            stream_id=sid,
            new_stream=tunnel_pb2.NewStream(
                method_name="/pkg.Service/Method",
                initial_window_size=data.draw(uint32, label="window"),
                protocol_revision=revision,  # type: ignore[arg-type]
            ),
        )
    ]
    for _ in range(data.draw(st.integers(0, 2), label="requests")):
        whole = blob(data.draw(send_lengths, label="request length"))
        cut = data.draw(st.integers(0, len(whole)), label="cut")
        frames.append(
            C2S(
                stream_id=sid,
                request_message=tunnel_pb2.MessageData(size=len(whole), data=whole[:cut]),
            )
        )
        if cut < len(whole):
            frames.append(C2S(stream_id=sid, more_request_data=whole[cut:]))
    if data.draw(st.integers(0, 5), label="half-close?"):
        frames.append(C2S(stream_id=sid, half_close=EMPTY))
    if data.draw(st.integers(0, 7), label="flaw?") == 0:
        frames.insert(data.draw(st.integers(1, len(frames))), serving_frame(data, s))
    return frames


SERVING_OPS = ["frame"] * 7 + [
    "send_headers",
    "send",
    "send",
    "close",
    "reject",
    "consume",
    "take",
    "take",
]


@FUZZ
@given(
    negotiated=st.booleans(),
    batching=st.booleans(),
    habit=batch_habits,
    window=st.sampled_from([1, 7, 1000, 65536, 2**32 - 1]),
    chunk=st.sampled_from([3, 100, 16384]),
    max_msg=st.sampled_from([None, 0, 100, 10_000]),
    supported=st.sampled_from([(0, 1), (0, 1), (0,), (1,)]),
    limit=st.sampled_from([None, None, 0, 2]),
    bound=st.sampled_from([8192, 3]),
    steps=st.integers(1, 80),
    data=st.data(),
)
def test_serving_connection_survives_random_frames(
    negotiated: bool,
    batching: bool,
    habit: str,
    window: int,
    chunk: int,
    max_msg: int | None,
    supported: tuple[int, ...],
    limit: int | None,
    bound: int,
    steps: int,
    data: st.DataObject,
) -> None:
    s = ServingConnection(
        ConnectionConfig(
            negotiated=negotiated,
            receive_window=window,
            max_chunk_size=chunk,
            max_receive_message_size=max_msg,
            supported_revisions=supported,
            batching=batching,
            max_concurrent_streams=limit,
            max_unsent_control_frames=bound,
        )
    )
    s.start()
    check_out_frames(s.take_frames(), s)
    for _ in range(steps):
        op = pick(data, SERVING_OPS, "op")
        sids = sorted(s._streams) or [1]
        try:
            if op == "frame":
                n = data.draw(st.integers(1, 4), label="frames")
                plain = [serving_frame(data, s) for _ in range(n)]
                message = draw_tunnel_message(
                    data, plain, lambda: whole_call(data, s), batching, habit
                )
                feed(data, s, message, "serving")
            elif op == "send_headers":
                s.send_headers(pick(data, sids, "sid"), md(a="b"))
            elif op == "send":
                s.send_message(pick(data, sids, "sid"), blob(data.draw(send_lengths)))
            elif op == "close":
                code = data.draw(close_codes)
                s.close_stream(
                    pick(data, sids, "sid"),
                    None if code is None else status_pb2.Status(code=int(code)),
                )
            elif op == "reject":
                s.reject_stream(pick(data, sids, "sid"), Code.UNAVAILABLE, "bye")
            elif op == "consume":
                s.message_consumed(pick(data, sids, "sid"))
            elif op == "take":
                check_out_frames(s.take_frames(data.draw(take_budgets)), s)
        except ProtocolError as e:
            assert e.code == Code.INVALID_ARGUMENT and e.message
            event("serving: ProtocolError")
            event("serving ProtocolError: " + e.message[:30])
            return
        check_invariants(s)
        assert limit is None or s.active_streams <= limit
    check_out_frames(s.take_frames(), s)
    check_invariants(s)
