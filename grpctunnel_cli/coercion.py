"""Typer's conversion of parsed option values, without its cost in the plain cases.

Typer converts each parsed value with a pydantic ``TypeAdapter`` it builds per parameter:
importing pydantic and building the adapters of a command's fifteen parameters is a third
of a `grpctunnel call`'s run. Most values need no conversion at all: a string where a string
is wanted, an absent option, a default already of its type. `quicken` gives such a
parameter a converter that returns those values as Typer would (the same object), and hands
anything else to Typer's own conversion, built on first use. So a value that needs
converting or checking (``--timeout 2.5``, ``--port 99999``) is converted and reported by
Typer exactly as before.

It relies on one private hook of Typer (a parameter's ``_runtime_param``, built lazily);
with a Typer that has no such hook, `quicken` changes nothing.
"""

from __future__ import annotations

import enum
import typing
from typing import Any

__all__ = ["QuickCoercion", "quicken"]

_SCALARS = (str, int, float)


class QuickCoercion:
    """Converts one parameter's values: the plain cases here, the rest by Typer."""

    def __init__(self, descriptor: Any) -> None:
        self._descriptor = descriptor
        self._typer: Any = None  # Typer's own conversion, built when first needed

    def plain(self, value: Any, *, multiple: bool) -> tuple[bool, Any]:
        """``(True, converted)`` when `value` needs no conversion, else ``(False, None)``."""
        descriptor = self._descriptor
        info = descriptor.parameter_info
        if info.parser is not None or descriptor.file_annotation is not None:
            return False, None
        if value is None:
            return True, (() if multiple else None)
        annotation = descriptor.annotation
        if multiple:
            if (
                typing.get_origin(annotation) is list
                and typing.get_args(annotation) == (str,)
                and isinstance(value, list | tuple)
                and all(type(item) is str for item in value)
            ):
                return True, list(value)
            return False, None
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            if type(value) is annotation:  # a default given as a member of its enum
                return True, value
            return False, None
        if annotation is float and type(value) is int:
            value = float(value)  # a whole-number default of a float option, as Typer gives it
        if annotation not in _SCALARS or type(value) is not annotation:
            return False, None
        if annotation is not str:
            low, high = info.min, info.max
            if (low is not None and value < low) or (high is not None and value > high):
                return False, None  # Typer's conversion reports (or clamps) it
        return True, value

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        """The parameter's value, as Typer's conversion would give it."""
        done, converted = self.plain(value, multiple=bool(param.multiple or param.nargs == -1))
        if done:
            return converted
        if self._typer is None:
            from typer._coercion import build_runtime_param

            self._typer = build_runtime_param(self._descriptor)
        return self._typer.coerce(value, param=param, ctx=ctx)


def quicken(params: list[Any]) -> None:
    """Give each Typer parameter of a command the quick conversion (see the module)."""
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", False) is not None:
            continue
        param._runtime_param = QuickCoercion(descriptor)
