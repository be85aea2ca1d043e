"""The one place where gRPC metadata, deadlines and statuses meet the tunnel's messages.

* ``Metadata`` <-> grpc metadata tuples, dropping reserved transport headers and
  encoding ``-bin`` values: base64 between two peers of this project (negotiated with
  :data:`EXTENSIONS_HEADER`), raw UTF-8 text with other peers (as Go peers expect).
* ``grpc-timeout`` header values <-> seconds.
* A handler's final status (code, details, ``grpc-status-details-bin`` trailer) <->
  ``google.rpc.Status`` as it travels in ``close_stream``.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Sequence

import grpc
from google.rpc import status_pb2

from grpctunnel.v1 import tunnel_pb2

MetadataValue = str | bytes
MetadataPairs = tuple[tuple[str, MetadataValue], ...]

NEGOTIATE_HEADER = "grpctunnel-negotiate"
NEGOTIATE_VALUE = "on"
# Sent beside the negotiate header by peers of this project; a Go peer ignores it.
# When both sides send it, -bin values travel base64-encoded (so any bytes survive)
# and larger windows and chunks are used.
EXTENSIONS_HEADER = "grpctunnel-extensions"
BINARY_BASE64 = "binary-base64"
BATCH = "batch"  # several frames in one message of the tunnel RPC (ClientToServer.batch)
EXTENSIONS_VALUE = f"{BINARY_BASE64},{BATCH}"

TIMEOUT_HEADER = "grpc-timeout"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
_RESERVED = frozenset(
    {":authority", ":path", ":method", ":scheme", "content-type", "te", "user-agent"}
)


class MetadataError(ValueError):
    """A metadata value cannot be carried to this peer."""


def is_reserved(key: str) -> bool:
    """Transport headers that are never forwarded as application metadata."""
    return key in _RESERVED or (key.startswith("grpc-") and key != TIMEOUT_HEADER)


def first_value(md: Iterable[tuple[str, MetadataValue]] | None, key: str) -> MetadataValue | None:
    for k, v in md or ():
        if k == key:
            return v
    return None


def tunnel_open_headers() -> MetadataPairs:
    """Headers both ends of this project send when a tunnel RPC opens."""
    return ((NEGOTIATE_HEADER, NEGOTIATE_VALUE), (EXTENSIONS_HEADER, EXTENSIONS_VALUE))


def peer_negotiates(md: Iterable[tuple[str, MetadataValue]] | None) -> bool:
    return first_value(md, NEGOTIATE_HEADER) == NEGOTIATE_VALUE


def peer_extensions(md: Iterable[tuple[str, MetadataValue]] | None) -> frozenset[str]:
    """The extensions of this project that the peer announced."""
    value = first_value(md, EXTENSIONS_HEADER)
    if not isinstance(value, str):
        return frozenset()
    return frozenset(part.strip() for part in value.split(","))


def peer_has_extensions(md: Iterable[tuple[str, MetadataValue]] | None) -> bool:
    """Whether the peer is of this project (base64 binary metadata, large windows)."""
    return BINARY_BASE64 in peer_extensions(md)


def peer_batches(md: Iterable[tuple[str, MetadataValue]] | None) -> bool:
    return BATCH in peer_extensions(md)


def to_proto(
    pairs: Iterable[tuple[str, MetadataValue]] | None, *, binary_base64: bool
) -> tunnel_pb2.Metadata:
    """grpc metadata -> ``Metadata``, leaving out reserved keys."""
    out = tunnel_pb2.Metadata()
    if not pairs:
        return out
    md = out.md
    for key, value in pairs:
        key = key.lower()
        if is_reserved(key):
            continue
        md[key].val.append(_encode_value(key, value, binary_base64))
    return out


def from_proto(md: tunnel_pb2.Metadata, *, binary_base64: bool) -> MetadataPairs:
    """``Metadata`` -> grpc metadata tuples, leaving out reserved keys."""
    out: list[tuple[str, MetadataValue]] = []
    for key, values in md.md.items():
        key = key.lower()
        if is_reserved(key):
            continue
        if key.endswith("-bin"):
            out.extend((key, _decode_binary(v, binary_base64)) for v in values.val)
        else:
            out.extend((key, v) for v in values.val)
    return tuple(out)


def _encode_value(key: str, value: MetadataValue, binary_base64: bool) -> str:
    if key.endswith("-bin"):
        raw = value if isinstance(value, bytes) else value.encode()
        if binary_base64:
            return base64.b64encode(raw).decode("ascii")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MetadataError(
                f"binary metadata {key!r} is not valid UTF-8; this peer carries binary "
                "values as text, so only UTF-8 bytes can reach it"
            ) from None
    if isinstance(value, bytes):
        raise MetadataError(f"metadata {key!r} has a bytes value; only keys ending in -bin may")
    return value


def _decode_binary(value: str, binary_base64: bool) -> bytes:
    if not binary_base64:
        return value.encode("utf-8")
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return value.encode("utf-8")


# -- deadlines ---------------------------------------------------------------------

_UNITS: Sequence[tuple[str, float]] = (
    ("n", 1e-9),
    ("u", 1e-6),
    ("m", 1e-3),
    ("S", 1.0),
    ("M", 60.0),
    ("H", 3600.0),
)
_UNIT_SECONDS = dict(_UNITS)
_MAX_DIGITS_VALUE = 99_999_999


def encode_timeout(seconds: float) -> str:
    """Seconds -> a ``grpc-timeout`` value (at most 8 digits and a unit), rounded up."""
    seconds = max(seconds, 0.0)
    for unit, size in _UNITS:
        count = math.ceil(seconds / size)
        if count <= _MAX_DIGITS_VALUE:
            return f"{max(count, 1) if seconds > 0 else 0}{unit}"
    return f"{_MAX_DIGITS_VALUE}H"


def decode_timeout(value: str) -> float:
    """A ``grpc-timeout`` value -> seconds. Raises ValueError when malformed."""
    if len(value) < 2 or len(value) > 9 or not value[:-1].isdigit():
        raise ValueError(f"malformed grpc-timeout {value!r}")
    size = _UNIT_SECONDS.get(value[-1])
    if size is None:
        raise ValueError(f"malformed grpc-timeout {value!r}: unknown unit")
    return int(value[:-1]) * size


# -- statuses ----------------------------------------------------------------------


def status_to_proto(
    code: grpc.StatusCode, details: str | None, trailers: MetadataPairs
) -> tuple[status_pb2.Status | None, MetadataPairs]:
    """A handler's final status -> the ``close_stream`` status and trailers.

    Rich error details move from the ``grpc-status-details-bin`` trailer into
    ``status.details``. An OK status with no message is sent as no status at all.
    """
    number = code.value[0]
    rich = None
    rest: list[tuple[str, MetadataValue]] = []
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY:
            rich = value
        else:
            rest.append((key, value))
    if number == 0 and not details and rich is None:
        return None, tuple(rest)
    status = status_pb2.Status(code=number, message=details or "")
    if rich is not None:
        parsed = status_pb2.Status()
        try:
            parsed.ParseFromString(rich if isinstance(rich, bytes) else rich.encode())
            status.details.extend(parsed.details)
        except Exception:  # undecodable: pass it on as a plain trailer
            rest.append((STATUS_DETAILS_KEY, rich))
    return status, tuple(rest)


def status_from_proto(
    status: status_pb2.Status | None, trailers: MetadataPairs
) -> tuple[grpc.StatusCode, str, MetadataPairs]:
    """A ``close_stream`` status -> code, details and trailers for the caller, with
    ``status.details`` restored as the ``grpc-status-details-bin`` trailer."""
    if status is None:
        return grpc.StatusCode.OK, "", trailers
    code = code_from_number(status.code)
    if status.details:
        trailers = (*trailers, (STATUS_DETAILS_KEY, status.SerializeToString()))
    return code, status.message, trailers


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def code_from_number(number: int) -> grpc.StatusCode:
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)
