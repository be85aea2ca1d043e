"""Saying where and what, when JSON request data does not fit the request message.

protobuf's JSON parser reports a mismatch in its own terms ("unhashable type: 'dict'",
"expected string or bytes-like object, got 'int'"). `check_json` walks a parsed JSON value
along the message's descriptor first and reports the first mismatch as one line naming
the field's path, what the field takes and what it got: ``field msg: expected a string,
got 1``. What it lets through is left to protobuf's parser. Well-known types
(``google.protobuf.*``: Timestamp, Struct, Any ...) have JSON forms of their own and are
left to the parser whole.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from grpctunnel_cli.errors import InputError

__all__ = ["check_json", "shown"]

_INTEGER_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1, "a 32-bit integer"),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1, "a 32-bit integer"),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1, "a 32-bit integer"),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1, "an unsigned 32-bit integer"),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1, "an unsigned 32-bit integer"),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1, "a 64-bit integer"),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1, "a 64-bit integer"),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1, "a 64-bit integer"),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1, "an unsigned 64-bit integer"),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1, "an unsigned 64-bit integer"),
}
_FLOATS = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})
_FLOAT_WORDS = frozenset({"NaN", "Infinity", "-Infinity"})


def shown(value: Any) -> str:
    """A JSON value as an error message shows it: short, in JSON."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + '..."'


def _is_well_known(descriptor: Descriptor) -> bool:
    return bool(descriptor.full_name.startswith("google.protobuf."))


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return bool(message is not None and field.is_repeated and message.GetOptions().map_entry)


def check_json(
    value: Any, descriptor: Descriptor, *, where: str = "request", allow_unknown: bool = False
) -> None:
    """InputError, one line, at the first place where `value` does not fit `descriptor`."""
    if not isinstance(value, dict):
        raise InputError(
            f"{where}: expected a JSON object ({descriptor.full_name}), got {shown(value)}"
        )
    _check_message(value, descriptor, "", where, allow_unknown)


def _check_message(
    value: dict[str, Any], descriptor: Descriptor, path: str, where: str, allow_unknown: bool
) -> None:
    fields: dict[str, FieldDescriptor] = {}
    for known in descriptor.fields:
        fields[known.name] = known
        fields.setdefault(known.json_name, known)
    for key, item in value.items():
        field = fields.get(key)
        if field is None:
            if allow_unknown or (key.startswith("[") and key.endswith("]")):
                continue  # an extension, by its full name: the parser knows
            names = ", ".join(f.json_name for f in descriptor.fields) or "none"
            at = f" at {path}" if path else ""
            raise InputError(
                f"{where}: unknown field {key!r}{at} in {descriptor.full_name} "
                f"(its fields: {names}; --allow-unknown-fields ignores unknown fields)"
            )
        _check_field(item, field, f"{path}.{key}" if path else key, where, allow_unknown)


def _check_field(
    value: Any, field: FieldDescriptor, path: str, where: str, allow_unknown: bool
) -> None:
    if value is None:
        return  # null: the field's default
    if _is_map(field):
        if not isinstance(value, dict):
            _mismatch(where, path, "an object (a map)", value)
        entry = field.message_type
        assert entry is not None
        for key, item in value.items():
            _check_single(
                item, entry.fields_by_name["value"], f"{path}[{key}]", where, allow_unknown
            )
        return
    if field.is_repeated:
        if not isinstance(value, list):
            _mismatch(where, path, "an array", value)
        for index, item in enumerate(value):
            _check_single(item, field, f"{path}[{index}]", where, allow_unknown)
        return
    _check_single(value, field, path, where, allow_unknown)


def _check_single(
    value: Any, field: FieldDescriptor, path: str, where: str, allow_unknown: bool
) -> None:
    kind = field.type
    message = field.message_type
    if message is not None:
        if _is_well_known(message):
            return
        if value is None:
            return
        if not isinstance(value, dict):
            _mismatch(where, path, f"an object ({message.full_name})", value)
        _check_message(value, message, path, where, allow_unknown)
    elif kind == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            _mismatch(where, path, "a string", value)
    elif kind == FieldDescriptor.TYPE_BYTES:
        if not isinstance(value, str):
            _mismatch(where, path, "a base64 string", value)
    elif kind == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            _mismatch(where, path, "true or false", value)
    elif kind in _INTEGER_RANGES:
        _check_integer(value, kind, path, where)
    elif kind in _FLOATS:
        _check_float(value, path, where)
    elif field.enum_type is not None:
        _check_enum(value, field.enum_type, path, where, allow_unknown)


def _check_integer(value: Any, kind: int, path: str, where: str) -> None:
    low, high, what = _INTEGER_RANGES[kind]
    number: Any = value
    if isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                _mismatch(where, path, what, value)
    if isinstance(number, bool) or not isinstance(number, int | float):
        _mismatch(where, path, what, value)
    if isinstance(number, float):
        if not math.isfinite(number) or not number.is_integer():
            _mismatch(where, path, what, value)
        number = int(number)
    if not low <= number <= high:
        raise InputError(f"{where}: field {path}: {shown(value)} is out of range for {what}")


def _check_float(value: Any, path: str, where: str) -> None:
    if isinstance(value, str):
        if value in _FLOAT_WORDS:
            return
        try:
            float(value)
        except ValueError:
            _mismatch(where, path, "a number", value)
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        _mismatch(where, path, "a number", value)


def _check_enum(
    value: Any, enum: EnumDescriptor, path: str, where: str, allow_unknown: bool
) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        return  # any number: an open enum keeps unknown values
    names = [v.name for v in enum.values]
    if isinstance(value, str) and (value in names or allow_unknown):
        return
    listed = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    _mismatch(where, path, f"one of {listed} (enum {enum.full_name})", value)


def _mismatch(where: str, path: str, expected: str, value: Any) -> NoReturn:
    raise InputError(f"{where}: field {path}: expected {expected}, got {shown(value)}")
