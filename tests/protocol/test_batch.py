"""The batch extension in the core: ``take_frames()`` packs what goes out when batching
was negotiated, ``unbatch()`` checks and unpacks what comes in."""

from __future__ import annotations

import pytest

from grpctunnel.protocol import (
    Code,
    ConnectionConfig,
    HalfClosed,
    MessageReceived,
    ProtocolError,
    ServingConnection,
    StreamOpened,
)
from grpctunnel.protocol.batch import BATCH_BYTES, BATCH_FRAME_LIMIT, pack

from .harness import (
    C2S,
    S2C,
    Pair,
    half_close,
    kinds,
    new_stream,
    payload,
    plain_frames,
    ready_client,
    req,
    resp,
)


def batch_of(*frames: C2S) -> C2S:
    outer = C2S()
    outer.batch.extend(frames)
    return outer


def test_pack_keeps_order_and_leaves_single_and_large_frames_alone() -> None:
    small = [resp(i, b"x") for i in range(1, 4)]
    large = resp(9, payload(BATCH_FRAME_LIMIT))
    assert pack([small[0]]) == [small[0]]
    out = pack([*small, large, small[0]])
    assert len(out) == 3
    assert list(out[0].batch) == small and out[0].WhichOneof("frame") is None
    assert out[1] is large
    assert out[2] is small[0]  # a run of one goes as itself


def test_pack_bounds_each_batch() -> None:
    frames = [resp(i, payload(BATCH_FRAME_LIMIT // 2, i)) for i in range(1, 100)]
    out = pack(frames)
    assert [f for batch in out for f in plain_frames(batch)] == frames
    for batch in out:
        assert sum(f.ByteSize() for f in batch.batch) <= BATCH_BYTES


def test_frames_go_out_batched_only_when_negotiated() -> None:
    for batching in (False, True):
        c = ready_client(batching=batching)
        for _ in range(3):
            sid = c.open_stream("/pkg.Service/Method")
            c.send_message(sid, b"hi")
            c.half_close(sid)
        frames = c.take_frames()
        if batching:
            assert len(frames) == 1 and len(frames[0].batch) == 9
        else:
            assert len(frames) == 9 and not any(f.batch for f in frames)


def serving(batching: bool) -> ServingConnection:
    s = ServingConnection(ConnectionConfig(negotiated=False, batching=batching))
    s.start()
    return s


def test_unbatch_gives_the_frames_of_a_batch_in_order() -> None:
    s = serving(batching=True)
    frames = [new_stream(1, revision=0), req(1, b"hello"), half_close(1)]
    inner = s.unbatch(batch_of(*frames))
    assert list(inner) == frames
    events = []
    for f in inner:
        for e in s.receive(f):
            events.append(e)
            if isinstance(e, StreamOpened):  # answered before the next frame, as sessions do
                s.accept_stream(e.stream_id, request_streaming=False)
    assert [type(e) for e in events] == [StreamOpened, MessageReceived, HalfClosed]
    plain = new_stream(2)
    assert list(s.unbatch(plain)) == [plain]


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (batch_of(new_stream(1)), "did not negotiate batches"),
        (batch_of(new_stream(1), batch_of(half_close(1))), "only plain frames"),
    ],
    ids=["not negotiated", "nested"],
)
def test_bad_batches_end_the_tunnel(message: C2S, words: str) -> None:
    negotiated = "negotiate" not in words
    with pytest.raises(ProtocolError) as info:
        serving(batching=negotiated).unbatch(message)
    assert info.value.code == Code.INVALID_ARGUMENT and words in info.value.message


def test_a_batch_with_a_kind_of_its_own_ends_the_tunnel_with_the_sides_code() -> None:
    with pytest.raises(ProtocolError) as info:
        outer = batch_of(new_stream(1))
        outer.half_close.SetInParent()
        serving(batching=True).unbatch(outer)
    assert info.value.code == Code.INVALID_ARGUMENT
    c = ready_client(batching=True)
    outer_s2c = S2C(stream_id=1, response_headers={})
    outer_s2c.batch.add(stream_id=1, close_stream={})
    with pytest.raises(ProtocolError) as info:
        c.unbatch(outer_s2c)
    assert info.value.code == Code.INTERNAL and "only plain frames" in info.value.message


def test_pair_with_batching_exchanges_batches() -> None:
    p = Pair(batching=True)
    p.handshake()
    sids = [p.client.open_stream("/pkg.Service/Method") for _ in range(5)]
    for sid in sids:
        p.client.send_message(sid, b"ping")
        p.client.half_close(sid)

    def on_server(e: object) -> None:
        if isinstance(e, HalfClosed):
            p.server.send_message(e.stream_id, b"pong")
            p.server.close_stream(e.stream_id, None)

    p.on_server_event = on_server
    p.pump()
    assert p.batches_c2s >= 1 and p.batches_s2c >= 1
    assert sorted(sid for sid, k in kinds(p.s2c_log) if k == "close_stream") == sids
    assert p.client.active_streams == p.server.active_streams == 0
