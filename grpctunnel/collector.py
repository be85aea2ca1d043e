"""Tunes Python's cyclic garbage collector for a process that holds many tunnels.

A gateway with ten thousand tunnels open keeps some two million objects alive (their
sessions, streams, tasks and channels). With the collector's default thresholds, the
objects of the calls in flight, which live a few tens of milliseconds, survive the
frequent young collections and are promoted to the oldest generation; every few seconds
that generation has grown enough for a full collection, which walks every live object:
measured on `benchmarks/many_tunnels.py` at 10,000 tunnels, about 1.1 s with the event
loop stopped, every 10 s.

:func:`tune_for_many_tunnels` makes the youngest generation large (``young`` new objects
before a collection) so that a call's objects are freed by reference counting, or
collected young, before they could be promoted; full collections then become rare. Cycles
live longer before they are collected, a few megabytes at most. The ``grpctunnel``
command calls it for the commands that relay (serve, expose); a process that holds many
tunnels through the library can call it too.
"""

from __future__ import annotations

import gc

DEFAULT_YOUNG = 50_000  # new container objects between two young collections (Python: 700)
DEFAULT_MIDDLE = 20  # young collections between two of the middle generation (Python: 10)
DEFAULT_OLD = 10  # middle collections between two full ones, at most (Python: 10)


def tune_for_many_tunnels(
    young: int = DEFAULT_YOUNG, middle: int = DEFAULT_MIDDLE, old: int = DEFAULT_OLD
) -> None:
    """Sets the collector's thresholds (see the module's documentation), unless the
    collector is off (``gc.disable()``: the process's own choice stands)."""
    if gc.isenabled():
        gc.set_threshold(young, middle, old)


__all__ = ["DEFAULT_MIDDLE", "DEFAULT_OLD", "DEFAULT_YOUNG", "tune_for_many_tunnels"]
