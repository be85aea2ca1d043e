"""The tunnel protocol as a pure state machine ("sans-IO").

No asyncio and no grpc here: frames go in, events and frames to send come out, so the
whole protocol (stream ids, framing and reassembly, flow control, negotiation, batches)
can be tested and fuzzed without a network. The grpc.aio adapters sit on top.

``config`` (what a connection is told), ``connection`` (the two ends), ``stream`` (one
stream's lifecycle and buffers), ``windows`` (flow control), ``batch`` (the batch
extension), ``events`` and ``errors`` (what comes out).
"""

from grpctunnel.protocol.config import (
    DEFAULT_MAX_RECEIVE_MESSAGE_SIZE,
    DEFAULT_WINDOW,
    GO_CHUNK_SIZE,
    SUPPORTED_REVISIONS,
    ConnectionConfig,
)
from grpctunnel.protocol.connection import (
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
    "DEFAULT_MAX_RECEIVE_MESSAGE_SIZE",
    "DEFAULT_WINDOW",
    "GO_CHUNK_SIZE",
    "SUPPORTED_REVISIONS",
    "TUNNEL_STREAM_ID",
    "CallingConnection",
    "Code",
    "ConnectionConfig",
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
