"""gRPC metadata for the command: the `Metadata` type and parsing ``-H 'key: value'`` headers.

Keys are lower-cased; a key ending in ``-bin`` takes a base64 value and is sent as bytes.
Reserved ``grpc-`` keys and characters gRPC would reject are refused here, with a message,
rather than deep inside grpc.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence

from grpctunnel_cli.errors import InputError

__all__ = ["Metadata", "MetadataValue", "format_value", "parse_header", "parse_headers"]

MetadataValue = str | bytes
Metadata = Sequence[tuple[str, MetadataValue]]

_KEY = re.compile(r"^[0-9a-z_.\-]+$")
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]*$")


def parse_header(text: str) -> tuple[str, MetadataValue]:
    """Parse one ``key: value`` header; raise InputError when gRPC would not accept it."""
    key, sep, value = text.partition(":")
    key = key.strip().lower()
    value = value.strip()
    if not sep or not key:
        raise InputError(f"invalid header {text!r}: expected 'key: value'")
    if not _KEY.match(key):
        raise InputError(f"invalid header name {key!r}: use only a-z, 0-9, '-', '_' and '.'")
    if key.startswith("grpc-"):
        raise InputError(f"invalid header name {key!r}: 'grpc-' headers are reserved")
    if key.endswith("-bin"):
        try:
            padded = value + "=" * (-len(value) % 4)
            return key, base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"invalid header {key!r}: a -bin value must be base64") from None
    if not _PRINTABLE_ASCII.match(value):
        raise InputError(
            f"invalid header {key!r}: the value must be printable ASCII "
            "(use a key ending in -bin for binary values)"
        )
    return key, value


def parse_headers(texts: Iterable[str]) -> tuple[tuple[str, MetadataValue], ...]:
    """Parse every ``-H`` header, keeping their order."""
    return tuple(parse_header(text) for text in texts)


def format_value(value: MetadataValue) -> str:
    """A metadata value as text: strings as they are, bytes as base64."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value
