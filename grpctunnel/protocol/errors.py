"""Errors and status codes of the tunnel protocol core.

The core never imports grpc, so it carries gRPC status codes as the plain integers of
:class:`Code`; the adapters translate them to ``grpc.StatusCode``.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """gRPC status codes, by their wire numbers."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class ProtocolError(Exception):
    """The peer broke the protocol in a way that ends the whole tunnel.

    ``code`` is the status the tunnel should end with: INVALID_ARGUMENT when the side
    that serves calls detects it, INTERNAL when the side that opens calls does.
    """

    def __init__(self, message: str, code: Code = Code.INTERNAL) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class UsageError(Exception):
    """The local application asked the core for something impossible, such as
    opening a stream before the tunnel's settings arrived."""
