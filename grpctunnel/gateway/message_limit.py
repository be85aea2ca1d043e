"""The bound one relaying hop (serve, expose, call) puts on a message, and how to say,
when a call fails on it, which hop refused the message and which flag raises the bound.
Light on purpose: `grpctunnel call` imports it at start-up."""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOO_LARGE = re.compile(r"received message larger than max \((\d+) vs\. (\d+)\)", re.IGNORECASE)


@dataclass(frozen=True)
class MessageLimit:
    """The bound of one relaying hop on each message it receives, and how its operator
    raises it. A relayed call failing because a response was over this very bound (the
    limit grpc names is ``length``) says so: "<hop>: response of N bytes exceeds
    <raised_by>", rather than grpc's words, which name no hop."""

    length: int
    hop: str  # who relays: "serve", "expose"
    raised_by: str  # e.g. "--max-message-mib 64 of `grpctunnel expose`"

    def explain(self, details: str) -> str | None:
        """The failure's details as this hop's refusal; None if it was not this hop's."""
        found = _TOO_LARGE.search(details)
        if found is None or int(found.group(2)) != self.length:
            return None
        return f"{self.hop}: response of {found.group(1)} bytes exceeds {self.raised_by}"


__all__ = ["MessageLimit"]
