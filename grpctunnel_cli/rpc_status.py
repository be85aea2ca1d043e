"""Reading the status of a finished call, corrected for grpc/grpc#36066 with the
library's :class:`~grpctunnel.gateway.first_status.FirstStatus` (see there)."""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from grpctunnel.gateway.first_status import FirstStatus
from grpctunnel_cli.metadata import MetadataValue

__all__ = ["FirstStatus", "Status", "as_metadata", "error_status"]

Status = tuple[grpc.StatusCode, str, tuple[tuple[str, MetadataValue], ...]]


def as_metadata(
    metadata: Iterable[tuple[str, MetadataValue]] | None,
) -> tuple[tuple[str, MetadataValue], ...]:
    """Any metadata (grpc.aio.Metadata, tuples, None) as a tuple of (key, value) pairs."""
    return tuple((key, value) for key, value in (metadata or ()))


def error_status(error: grpc.RpcError, first: FirstStatus | None = None) -> Status:
    """Code, details and trailers of a failed call, corrected by `first` where grpc erred."""
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    trailers = getattr(error, "trailing_metadata", None)
    status: Status = (
        code() if callable(code) else grpc.StatusCode.UNKNOWN,
        (details() if callable(details) else str(error)) or "",
        as_metadata(trailers() if callable(trailers) else None),
    )
    if status[0] is grpc.StatusCode.INTERNAL and first is not None and first.value is not None:
        return first.value
    return status
