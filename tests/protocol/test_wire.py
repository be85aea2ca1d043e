"""Data frames in their wire form (grpctunnel.protocol.wire): the bytes are exactly those
protobuf writes for the same frame, a frame read by hand reads as protobuf reads it, and
a connection told to make them sends large chunks that way while every message still
arrives intact (the harness reads every frame by hand, as the tunnel RPC does)."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from grpctunnel.protocol import CallingConnection, ConnectionConfig, MessageReceived
from grpctunnel.protocol.batch import BATCH_FRAME_LIMIT
from grpctunnel.protocol.wire import (
    ENCODED_CHUNK_MIN,
    DataFrameIn,
    EncodedFrame,
    decode_client_frame,
    decode_server_frame,
    message_frame,
    message_input,
    more_data_frame,
    varint,
)
from grpctunnel.v1 import tunnel_pb2

from .harness import C2S, S2C, Pair, payload, plain_frames

int64s = st.integers(-(2**63), 2**63 - 1)
uint32s = st.integers(0, 2**32 - 1)


def take_all(c: CallingConnection) -> list[object]:
    """Every frame the connection has to send (bounded: it has a few megabytes queued)."""
    taken: list[object] = []
    for _ in range(200):
        frames = c.take_frames()
        if not frames:
            return taken
        taken += frames
    raise AssertionError("the connection kept producing frames")


chunks = st.one_of(st.binary(max_size=300), st.sampled_from([b"", b"\x00", bytes(20000)]))


@settings(max_examples=300, deadline=None)
@given(stream_id=int64s, size=uint32s, chunk=chunks, view=st.booleans())
def test_a_first_chunk_encodes_as_protobuf_does(
    stream_id: int, size: int, chunk: bytes, view: bool
) -> None:
    data = memoryview(chunk) if view else chunk
    encoded = message_frame(stream_id, size, data).SerializeToString()
    request = C2S(stream_id=stream_id)
    request.request_message.size = size
    request.request_message.data = chunk
    response = S2C(stream_id=stream_id)
    response.response_message.size = size
    response.response_message.data = chunk
    assert encoded == request.SerializeToString() == response.SerializeToString()
    assert C2S.FromString(encoded) == request


@settings(max_examples=300, deadline=None)
@given(stream_id=int64s, chunk=chunks, view=st.booleans())
def test_a_later_chunk_encodes_as_protobuf_does(stream_id: int, chunk: bytes, view: bool) -> None:
    data = memoryview(chunk) if view else chunk
    frame = more_data_frame(stream_id, data)
    assert (
        frame.SerializeToString()
        == C2S(stream_id=stream_id, more_request_data=chunk).SerializeToString()
    )
    assert (
        frame.SerializeToString()
        == S2C(stream_id=stream_id, more_response_data=chunk).SerializeToString()
    )
    assert frame.ByteSize() == len(frame.encoded)


def test_encoded_frames_only_when_configured_and_only_for_large_chunks() -> None:
    assert ENCODED_CHUNK_MIN == BATCH_FRAME_LIMIT  # so that one never lands in a batch
    for encoded in (False, True):
        c = CallingConnection(
            ConnectionConfig(
                negotiated=False,
                max_chunk_size=64 * 1024,
                batching=True,
                encoded_data_frames=encoded,
            )
        )
        sid = c.open_stream("/svc/M")
        c.send_message(sid, payload(100))
        c.send_message(sid, payload(ENCODED_CHUNK_MIN - 1, 1))
        c.send_message(sid, payload(ENCODED_CHUNK_MIN, 2))
        c.send_message(sid, payload(150_000, 3))  # 64 KiB, 64 KiB, then 21,072 bytes
        taken = take_all(c)
        raw = [f for f in taken if isinstance(f, EncodedFrame)]
        assert len(raw) == (4 if encoded else 0)
        data = b"".join(
            (one.request_message.data if one.HasField("request_message") else one.more_request_data)
            for f in taken
            for one in plain_frames(C2S.FromString(f.SerializeToString()))
            if one.WhichOneof("frame") in ("request_message", "more_request_data")
        )
        assert data == b"".join(
            (payload(100), payload(ENCODED_CHUNK_MIN - 1, 1), payload(ENCODED_CHUNK_MIN, 2),
             payload(150_000, 3))
        )  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 200_000), min_size=1, max_size=4),
    chunk=st.sampled_from([16 * 1024, 40_000, 1024 * 1024]),
    window=st.sampled_from([65536, 200_000, 4 * 1024 * 1024]),
    batching=st.booleans(),
)
def test_messages_cross_intact_both_ways_with_encoded_frames(
    sizes: list[int], chunk: int, window: int, batching: bool
) -> None:
    config = {"max_chunk_size": chunk, "receive_window": window, "encoded_data_frames": True}
    p = Pair(batching=batching, client=config, server=config)
    p.handshake()
    sid = p.client.open_stream("/svc/Stream")
    sent = [payload(n, i) for i, n in enumerate(sizes)]

    def on_server_event(event: object) -> None:
        if isinstance(event, MessageReceived):
            p.server.message_consumed(event.stream_id)
            p.server.send_message(event.stream_id, event.data)  # echoed back

    def on_client_event(event: object) -> None:
        if isinstance(event, MessageReceived):
            p.client.message_consumed(event.stream_id)

    p.on_server_event = on_server_event
    p.on_client_event = on_client_event
    for message in sent:
        p.client.send_message(sid, message)
    p.pump()
    got_server = [e.data for e in p.server_events if isinstance(e, MessageReceived)]
    got_client = [e.data for e in p.client_events if isinstance(e, MessageReceived)]
    assert got_server == sent
    assert got_client == sent
    if any(n >= ENCODED_CHUNK_MIN for n in sizes):
        assert p.encoded_c2s > 0 and p.encoded_s2c > 0


def test_a_go_sized_chunking_of_a_large_message_uses_views_not_copies_of_it() -> None:
    """A 1 MiB message cut in 16 KiB chunks (a Go peer's size): 64 encoded frames, each
    the chunk's bytes behind its header, in order."""
    c = CallingConnection(ConnectionConfig(negotiated=False, encoded_data_frames=True))
    sid = c.open_stream("/svc/M")
    message = payload(1024 * 1024, 7)
    c.send_message(sid, message)
    data = [f for f in take_all(c) if isinstance(f, EncodedFrame)]
    assert len(data) == 64
    decoded = [C2S.FromString(f.encoded) for f in data]
    assert decoded[0].request_message.size == len(message)
    assert (
        b"".join([decoded[0].request_message.data, *(d.more_request_data for d in decoded[1:])])
        == message
    )


@pytest.mark.parametrize("frame", [message_frame(3, 5, b"hello"), more_data_frame(3, b"hi")])
def test_an_encoded_frame_says_what_it_is(frame: EncodedFrame) -> None:
    assert repr(frame).startswith("EncodedFrame(stream_id=3, ")
    assert isinstance(
        tunnel_pb2.ClientToServer.FromString(frame.encoded), tunnel_pb2.ClientToServer
    )


def _frames(cls: type[C2S] | type[S2C]) -> st.SearchStrategy[C2S | S2C]:
    first, more = (
        ("request_message", "more_request_data")
        if cls is C2S
        else ("response_message", "more_response_data")
    )
    data = st.one_of(
        st.binary(max_size=64),
        st.builds(lambda n, b: bytes([b]) * n, st.integers(16_000, 70_000), st.integers(0, 255)),
    )

    def make(stream_id: int, kind: int, size: int, chunk: bytes, credit: int) -> C2S | S2C:
        frame = cls(stream_id=stream_id)
        if kind == 0:
            getattr(frame, first).size = size
            getattr(frame, first).data = chunk
        elif kind == 1:
            setattr(frame, more, chunk)
        elif kind == 2:
            frame.window_update = credit
        elif kind == 3:  # a batch holding a data frame
            inner = frame.batch.add(stream_id=stream_id)
            setattr(inner, more, chunk)
        return frame

    return st.builds(make, int64s, st.integers(0, 4), uint32s, data, uint32s)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), client_frame=st.booleans())
def test_a_frame_read_by_hand_reads_as_protobuf_reads_it(
    data: st.DataObject, client_frame: bool
) -> None:
    cls = C2S if client_frame else S2C
    decode = decode_client_frame if client_frame else decode_server_frame
    frame = data.draw(_frames(cls))
    raw = frame.SerializeToString()
    parsed = cls.FromString(raw)
    read = decode(raw)
    if isinstance(read, DataFrameIn):
        kind = parsed.WhichOneof("frame")
        assert len(raw) >= ENCODED_CHUNK_MIN
        assert read.WhichOneof("frame") == kind and read.stream_id == parsed.stream_id
        assert not read.batch
        if kind in ("request_message", "response_message"):
            field = getattr(parsed, kind)
            assert (read.size, bytes(read.data)) == (field.size, field.data)
        else:
            assert bytes(read.data) == getattr(parsed, kind)
    else:
        assert read == parsed


def test_a_large_frame_of_another_shape_is_left_to_protobuf() -> None:
    chunk = bytes(20_000)
    plain = message_frame(5, 20_000, chunk).encoded
    assert isinstance(decode_client_frame(plain), DataFrameIn)
    unknown_after = plain + b"\x40\x01"  # an unknown field 8 after the data
    assert isinstance(decode_client_frame(unknown_after), C2S)
    # size written after the data: valid protobuf, not the plain shape
    inner = b"\x12" + varint(len(chunk)) + chunk + b"\x08" + varint(20_000)
    swapped = b"\x08\x05\x1a" + varint(len(inner)) + inner
    read = decode_client_frame(swapped)
    assert isinstance(read, C2S) and read.request_message.size == 20_000
    with pytest.raises(DecodeError):
        decode_client_frame(plain[:-1])  # truncated: protobuf's error, as before


def test_a_view_goes_only_to_a_protobuf_parser() -> None:
    frame = message_frame(1, 20_000, bytes(20_000))
    view = decode_client_frame(frame.encoded).data
    assert isinstance(view, memoryview)
    assert message_input(view, tunnel_pb2.ClientToServer.FromString) is view
    for reader in (None, bytes.decode, lambda b: b):
        given = message_input(view, reader)
        assert type(given) is bytes and given == bytes(20_000)
    data = b"abc"
    assert message_input(data, None) is data and message_input(data, bytes.decode) is data
