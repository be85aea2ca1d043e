"""A package's names imported when first asked for (PEP 562), so that importing one module
of the package does not import every other: the `__getattr__` of the packages
`grpctunnel` and `grpctunnel.gateway`."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from importlib import import_module
from typing import Any


def lazy_names(
    package: str, where: dict[str, str], namespace: MutableMapping[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: a name of ``where`` (name -> the module
    that defines it) is imported from its module when first asked for, then kept in
    ``namespace`` (the package's globals), so that it is asked for only once."""

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        namespace[name] = value
        return value

    return getattr_


__all__ = ["lazy_names"]
