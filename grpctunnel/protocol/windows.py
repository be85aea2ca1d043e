"""Per-stream flow-control accounting (protocol revision one).

There is no tunnel-wide window: every stream has a send window and a receive window,
and only the bytes of message chunks count.

Sending: the window starts at what the peer advertised (``Settings.initial_window_size``
for the calling side, ``NewStream.initial_window_size`` for the serving side) and each
chunk spends from it. ``window_update`` frames from the peer add credit back.

Receiving: we advertise a window of ``size`` bytes. The peer may have at most that many
bytes in flight that we have not given back. Data is given back ("released") as it
stops occupying memory on our side; to keep the number of ``window_update`` frames low,
released bytes are batched until they reach ``threshold`` (a quarter of the window),
which can never deadlock: a sender that has run dry has ``size`` bytes outstanding, and
all of them are released eventually, so the batch always fills.

Streams of revision zero have no flow control: their windows are unlimited.
"""

from __future__ import annotations

MAX_WINDOW = 0xFFFFFFFF  # window sizes and updates travel as uint32


class SendWindow:
    """How many more bytes we may send on one stream."""

    __slots__ = ("available", "limited")

    def __init__(self, initial: int | None) -> None:
        self.limited = initial is not None
        self.available = initial if initial is not None else 0

    def allowance(self, wanted: int) -> int:
        """How many of ``wanted`` bytes may be sent now."""
        if not self.limited:
            return wanted
        return wanted if wanted <= self.available else self.available

    def spend(self, n: int) -> None:
        if self.limited:
            self.available -= n

    def grant(self, n: int) -> bool:
        """Adds credit from a ``window_update``. False if the window would overflow."""
        if not self.limited:
            return True
        if self.available + n > MAX_WINDOW:
            return False
        self.available += n
        return True

    @property
    def blocked(self) -> bool:
        return self.limited and self.available <= 0


class ReceiveWindow:
    """How many bytes the peer may still send us on one stream, and when to say
    it may send more."""

    __slots__ = ("remaining", "size", "threshold", "unreleased")

    def __init__(self, size: int) -> None:
        self.size = size
        self.remaining = size  # bytes the peer may send before it must wait
        self.unreleased = 0  # bytes freed on our side but not yet granted back
        self.threshold = max(1, size // 4)

    def accept(self, n: int) -> bool:
        """Takes in ``n`` received bytes. False if they exceed the window."""
        if n > self.remaining:
            return False
        self.remaining -= n
        return True

    def release(self, n: int) -> int:
        """Marks ``n`` bytes as freed; returns the credit to grant now (0: keep batching)."""
        self.unreleased += n
        if self.unreleased < self.threshold:
            return 0
        credit = self.unreleased
        self.unreleased = 0
        self.remaining += credit
        return credit
