"""Errors the command reports as one line and exit status 1 (a local failure, not an RPC status).

Anything raised as a `CliError` is a problem the user can act on (an unreachable server, a
name that does not resolve, bad JSON); the command prints ``ERROR: <message>`` and never a
traceback. A non-OK gRPC status is not an error here: it is a call outcome (see invoke.py).
"""

from __future__ import annotations

__all__ = ["CliError", "ConnectError", "InputError", "ReflectionError", "ResolutionError"]


class CliError(Exception):
    """A failure the user can fix; its message is shown as is."""

    @property
    def message(self) -> str:
        return str(self)


class ConnectError(CliError):
    """The server could not be reached."""


class ReflectionError(CliError):
    """Server reflection failed or is not offered."""


class ResolutionError(CliError):
    """A service, method or symbol name did not resolve to exactly one thing."""

    def __init__(self, message: str, candidates: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.candidates = candidates


class InputError(CliError):
    """Bad request data: invalid JSON, unknown fields, wrong number of messages, bad headers."""
