"""Events the protocol core reports after it has taken in a frame.

Each is a small immutable record naming the stream it concerns. Events describe what
the peer did (or, for :class:`StreamFailed`, what the core decided because of it);
the frames the core wants sent in reply are collected separately with
``take_frames()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.rpc import status_pb2

from grpctunnel.protocol.errors import Code
from grpctunnel.v1 import tunnel_pb2


@dataclass(frozen=True, slots=True)
class SettingsReceived:
    """The serving side's settings arrived; streams may now be opened."""

    revisions: tuple[int, ...]
    initial_window_size: int
    stream_id: int = -1  # the tunnel itself


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The caller opened a stream (serving side). Answer it with ``accept_stream`` or
    ``reject_stream`` before taking in the next frame."""

    stream_id: int
    method: str
    headers: tunnel_pb2.Metadata
    revision: int


@dataclass(frozen=True, slots=True)
class HeadersReceived:
    """Response headers arrived (calling side)."""

    stream_id: int
    headers: tunnel_pb2.Metadata


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """One whole message arrived, reassembled from its chunks. Report it with
    ``message_consumed`` once the application has taken it, to grant flow credit."""

    stream_id: int
    data: bytes | memoryview  # a view when it came in one frame read by hand (wire)


@dataclass(frozen=True, slots=True)
class HalfClosed:
    """The caller will send no more requests (serving side)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamCancelled:
    """The caller cancelled the stream (serving side). Nothing more is sent on it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """The serving side closed the stream with a final status (calling side).
    ``status`` is None when the peer sent none, which means OK."""

    stream_id: int
    status: status_pb2.Status | None
    trailers: tunnel_pb2.Metadata


@dataclass(frozen=True, slots=True)
class StreamFailed:
    """The peer broke the protocol on one stream; the core has ended that stream
    (sending a cancel or a close with this status) and the tunnel lives on."""

    stream_id: int
    code: Code
    message: str


Event = (
    SettingsReceived
    | StreamOpened
    | HeadersReceived
    | MessageReceived
    | HalfClosed
    | StreamCancelled
    | StreamClosed
    | StreamFailed
)
