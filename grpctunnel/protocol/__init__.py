"""The tunnel protocol as a pure state machine ("sans-IO").

No asyncio and no grpc here: frames go in, events and frames to send come out, so the
whole protocol (stream ids, framing and reassembly, flow control, negotiation) can be
tested and fuzzed without a network. The grpc.aio adapters sit on top.
"""

from grpctunnel.protocol.connection import (
    DEFAULT_WINDOW,
    GO_CHUNK_SIZE,
    SUPPORTED_REVISIONS,
    TUNNEL_STREAM_ID,
    CallingConnection,
    ServingConnection,
)
from grpctunnel.protocol.errors import Code, ProtocolError, UsageError
from grpctunnel.protocol.events import (
    Event,
    HalfClosed,
    HeadersReceived,
    MessageReceived,
    SettingsReceived,
    StreamCancelled,
    StreamClosed,
    StreamFailed,
    StreamOpened,
)

__all__ = [
    "DEFAULT_WINDOW",
    "GO_CHUNK_SIZE",
    "SUPPORTED_REVISIONS",
    "TUNNEL_STREAM_ID",
    "CallingConnection",
    "Code",
    "Event",
    "HalfClosed",
    "HeadersReceived",
    "MessageReceived",
    "ProtocolError",
    "ServingConnection",
    "SettingsReceived",
    "StreamCancelled",
    "StreamClosed",
    "StreamFailed",
    "StreamOpened",
    "UsageError",
]
