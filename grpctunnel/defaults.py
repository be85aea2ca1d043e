"""Default limits and timeouts that reach beyond the library, in a module importing nothing.

The gateway and the command show and use them (the command lists them in its help), and
importing them from here costs the command nothing of the library's own import time.
"""

from __future__ import annotations

__all__ = ["DEFAULT_ESTABLISHMENT_TIMEOUT", "DEFAULT_MAX_MESSAGE_LENGTH"]

DEFAULT_ESTABLISHMENT_TIMEOUT = 10.0  # seconds for the peer's settings frame
DEFAULT_MAX_MESSAGE_LENGTH = 64 * 1024 * 1024  # the largest message a gateway relays by default
