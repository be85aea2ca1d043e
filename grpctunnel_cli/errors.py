"""Errors the command reports as one line and exit status 1 (a local failure, not an RPC status).

Anything raised as a `CliError` is a problem the user can act on (an unreachable server, a
name that does not resolve, bad JSON); the command prints ``ERROR: <message>`` and never a
traceback. A non-OK gRPC status is not an error here: it is a call outcome (see invoke.py).
"""

from __future__ import annotations

import grpc

__all__ = [
    "CliError",
    "ConnectError",
    "InputError",
    "ReflectionError",
    "ResolutionError",
    "StatusError",
    "TlsMismatchError",
    "UsageError",
]


class CliError(Exception):
    """A failure the user can fix; its message is shown as is, and the command exits
    with ``exit_code`` (1 unless a subclass says otherwise)."""

    exit_code = 1

    @property
    def message(self) -> str:
        return str(self)


class UsageError(CliError):
    """Options that do not go together, or that the command refuses to run with (exit 2)."""

    exit_code = 2


class StatusError(CliError):
    """The server refused a request the command needed before its call (reflection
    refused for want of credentials): the status decides the exit code, 64 + N."""

    def __init__(self, code: grpc.StatusCode, details: str, hint: str = "") -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.hint = hint
        self.exit_code = 64 + int(code.value[0])

    @property
    def message(self) -> str:
        text = f"{self.code.name}: {self.details}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class ConnectError(CliError):
    """The server could not be reached."""


class TlsMismatchError(ConnectError):
    """The connection failed because of TLS: plaintext against TLS or the reverse, or a
    certificate one side would not accept. Retrying cannot mend it."""


class ReflectionError(CliError):
    """Server reflection failed or is not offered."""


class ResolutionError(CliError):
    """A service, method or symbol name did not resolve to exactly one thing."""

    def __init__(self, message: str, candidates: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.candidates = candidates


class InputError(CliError):
    """Bad request data: invalid JSON, unknown fields, wrong number of messages, bad headers."""
