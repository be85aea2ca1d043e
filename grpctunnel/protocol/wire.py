"""Data frames encoded and decoded by hand: a chunk of message data framed with one copy,
not four, and read back with none.

A frame made the protobuf way copies its chunk of message data into the frame when the
chunk is assigned, then twice when the frame is serialised (into the encoder's buffer,
then into the bytes handed to gRPC), and a chunk cut from a larger message is a copy of
its own. For a tunnel that streams megabytes, those copies were about a third of the
CPU its sending side spent. An :class:`EncodedFrame` is the same frame already in its
wire form: the few bytes of its header (stream id, field tags, lengths) joined to the
chunk, one copy of the data in all, taken from a ``memoryview`` of the message.

Only a data frame (the first chunk of a message, ``request_message`` /
``response_message``, or a later one, ``more_request_data`` / ``more_response_data``)
is encoded here; both directions number those fields alike (3 and 4), so one encoder
serves both. The bytes are exactly those protobuf writes for the same frame, so any peer
(Go or ours) reads them as it reads any frame. An encoded frame can only be written
where the tunnel RPC's serializer calls the frame's own ``SerializeToString`` (the stub
and registration in :mod:`grpctunnel.rpc`, the in-memory pair); the connection makes
them only when its config says so (``ConnectionConfig.encoded_data_frames``).

Reading is the mirror image. Parsed the protobuf way, a large data frame's chunk is
copied into the parsed frame, then again when the connection reads the field.
:func:`decode_client_frame` and :func:`decode_server_frame` (the deserializers of the
tunnel RPC in :mod:`grpctunnel.rpc`) read a large data frame of the plain shape protobuf
writes (the stream id, then the one data field and nothing after it) into a
:class:`DataFrameIn`, whose chunk is a view of the bytes received; anything else, and
any frame they cannot read with certainty, is parsed by protobuf as before. A
``DataFrameIn`` answers what the connection asks of a data frame (``stream_id``,
``WhichOneof("frame")``, the data field, an empty ``batch``), so the connection takes
either in the same way.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from grpctunnel.protocol.batch import BATCH_FRAME_LIMIT
from grpctunnel.v1 import tunnel_pb2

# field numbers shared by ClientToServer and ServerToClient, and those of MessageData
_STREAM_ID_TAG = b"\x08"  # field 1, varint
_MESSAGE_TAG = b"\x1a"  # field 3 (request_message / response_message), length-delimited
_MORE_DATA_TAG = b"\x22"  # field 4 (more_request_data / more_response_data), bytes
_SIZE_TAG = b"\x08"  # MessageData.size, field 1, varint
_DATA_TAG = b"\x12"  # MessageData.data, field 2, bytes

_INT64_MASK = (1 << 64) - 1

# the largest message a frame can announce (MessageData.size is a uint32)
MAX_MESSAGE_SIZE = 0xFFFFFFFF

# chunks this large or larger are encoded here: the batch extension's limit, so that an
# encoded frame always travels alone, never inside a batch
ENCODED_CHUNK_MIN = BATCH_FRAME_LIMIT


class EncodedFrame:
    """A frame in its wire form (see the module's documentation). It answers the two
    questions the rest of the tunnel asks of a frame: its size, and its bytes."""

    __slots__ = ("encoded", "stream_id")

    def __init__(self, stream_id: int, encoded: bytes) -> None:
        self.stream_id = stream_id
        self.encoded = encoded

    def ByteSize(self) -> int:  # the protobuf names, so that either frame answers
        return len(self.encoded)

    def SerializeToString(self) -> bytes:
        return self.encoded

    def __repr__(self) -> str:
        return f"EncodedFrame(stream_id={self.stream_id}, {len(self.encoded)} bytes)"


def varint(value: int) -> bytes:
    """``value`` (at least 0) as a protobuf varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _stream_id_field(stream_id: int) -> bytes:
    # proto3 leaves a zero out; an int64 below zero is written as its 64-bit complement
    return _STREAM_ID_TAG + varint(stream_id & _INT64_MASK) if stream_id else b""


def message_frame(stream_id: int, size: int, chunk: bytes | memoryview) -> EncodedFrame:
    """The frame that begins a message of ``size`` bytes with ``chunk``
    (``request_message`` or ``response_message``, the same field number)."""
    n = len(chunk)
    inner = (_SIZE_TAG + varint(size) if size else b"") + (_DATA_TAG + varint(n) if n else b"")
    header = _stream_id_field(stream_id) + _MESSAGE_TAG + varint(len(inner) + n) + inner
    return EncodedFrame(stream_id, b"".join((header, chunk)))


def more_data_frame(stream_id: int, chunk: bytes | memoryview) -> EncodedFrame:
    """A frame that carries the next ``chunk`` of a message begun earlier
    (``more_request_data`` or ``more_response_data``, the same field number)."""
    header = _stream_id_field(stream_id) + _MORE_DATA_TAG + varint(len(chunk))
    return EncodedFrame(stream_id, b"".join((header, chunk)))


class DataFrameIn:
    """A data frame read by hand (see the module's documentation): one chunk of a
    message, ``data`` a view of the bytes received; ``size`` is the message's size on
    its first chunk. It reads like the protobuf frame for what the connection asks."""

    __slots__ = ("_kind", "data", "size", "stream_id")
    batch: tuple[()] = ()

    def __init__(self, stream_id: int, kind: str, size: int, data: memoryview) -> None:
        self.stream_id = stream_id
        self._kind = kind
        self.size = size
        self.data = data

    def WhichOneof(self, group: str) -> str | None:
        return self._kind if group == "frame" else None

    # the first chunk: the frame's MessageData field is this (``size`` and ``data``)
    @property
    def request_message(self) -> DataFrameIn:
        return self

    @property
    def response_message(self) -> DataFrameIn:
        return self

    # a later chunk: the field is the data itself
    @property
    def more_request_data(self) -> memoryview:
        return self.data

    @property
    def more_response_data(self) -> memoryview:
        return self.data

    def __repr__(self) -> str:
        return f"DataFrameIn(stream_id={self.stream_id}, {self._kind}, {len(self.data)} bytes)"


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; (-1, pos) for none (truncated,
    or longer than the ten bytes a 64-bit value takes)."""
    value = 0
    shift = 0
    end = min(len(raw), pos + 10)
    while pos < end:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    return -1, pos


def _decode_data(raw: bytes, first: str, more: str) -> DataFrameIn | None:
    """``raw`` read as a large data frame of the plain shape, or None (for protobuf to
    parse instead): a small frame, another kind, another layout, anything unusual."""
    n = len(raw)
    if n < ENCODED_CHUNK_MIN:
        return None
    pos = 0
    stream_id = 0
    if raw[0] == 0x08:
        stream_id, pos = _read_varint(raw, 1)
        if stream_id < 0 or stream_id > _INT64_MASK:
            return None
        if stream_id >= 1 << 63:
            stream_id -= 1 << 64
    if pos >= n:
        return None
    tag = raw[pos]
    length, pos = _read_varint(raw, pos + 1)
    if length < 0 or pos + length != n:  # the field must be the frame's last bytes
        return None
    if tag == 0x22:
        return DataFrameIn(stream_id, more, 0, memoryview(raw)[pos:])
    if tag != 0x1A:
        return None
    size = 0
    if pos < n and raw[pos] == 0x08:
        size, pos = _read_varint(raw, pos + 1)
        if size < 0 or size > 0xFFFFFFFF:
            return None
    if pos >= n or raw[pos] != 0x12:
        return None
    length, pos = _read_varint(raw, pos + 1)
    if length < 0 or pos + length != n:
        return None
    return DataFrameIn(stream_id, first, size, memoryview(raw)[pos:])


def decode_client_frame(raw: bytes) -> Any:
    """A ``ClientToServer`` frame from its bytes: a :class:`DataFrameIn` for a large
    data frame of the plain shape, else the protobuf message."""
    frame = _decode_data(raw, "request_message", "more_request_data")
    return frame if frame is not None else tunnel_pb2.ClientToServer.FromString(raw)


def decode_server_frame(raw: bytes) -> Any:
    """A ``ServerToClient`` frame from its bytes (as :func:`decode_client_frame`)."""
    frame = _decode_data(raw, "response_message", "more_response_data")
    return frame if frame is not None else tunnel_pb2.ServerToClient.FromString(raw)


def message_input(data: bytes | memoryview, deserializer: object) -> bytes | memoryview:
    """A message received, as ``deserializer`` (None: the bytes themselves) takes it.
    A view (a message that came whole in one frame read by hand) goes as it is to a
    protobuf class's ``FromString``, which reads any buffer, saving a copy of the whole
    message; everything else gets bytes, as gRPC gives them (an identity relay, a
    function written for bytes)."""
    if type(data) is bytes:
        return data
    owner = getattr(deserializer, "__self__", None)
    if (
        isinstance(owner, type)
        and issubclass(owner, Message)
        and getattr(deserializer, "__name__", None) == "FromString"
    ):
        return data
    return bytes(data)


__all__ = [
    "ENCODED_CHUNK_MIN",
    "MAX_MESSAGE_SIZE",
    "DataFrameIn",
    "EncodedFrame",
    "decode_client_frame",
    "decode_server_frame",
    "message_frame",
    "message_input",
    "more_data_frame",
    "varint",
]
