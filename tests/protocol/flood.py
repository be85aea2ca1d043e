"""Reproduces a stream flood on the protocol core alone and measures what it holds.

A peer sends new-stream frames past ``max_concurrent_streams`` and never reads our
replies. This feeds them to a serving connection the way the session's read loop
does (taking in no frame while the connection says its unsent output is backlogged:
a peer that does not read is then no longer read either) and never takes the output.
It reports the streams held, the unsent frames, and the memory allocated meanwhile:
what tracemalloc sees (Python's allocations) and the growth of the process's resident
memory (which also counts the protobuf messages' own arenas, unseen by tracemalloc).

Run ``python -m tests.protocol.flood [frames] [limit]``; with ``PYTHONPATH`` pointing at
an older checkout it measures that code instead (it speaks both constructor styles).
"""

from __future__ import annotations

import sys
import tracemalloc
from dataclasses import dataclass
from typing import Any

from grpctunnel import protocol
from grpctunnel.v1 import tunnel_pb2

METHOD = "/pkg.Service/Method"


@dataclass(frozen=True)
class FloodResult:
    frames_sent: int
    frames_taken_in: int  # the rest were never read: the connection held back
    streams_held: int
    unsent_frames: int
    memory_bytes: int  # allocated by the flood and still held (tracemalloc)
    rss_growth_bytes: int  # growth of the resident memory (Linux; 0 elsewhere)

    def summary(self) -> str:
        return (
            f"{self.frames_sent} new-stream frames sent, {self.frames_taken_in} taken in; "
            f"streams held: {self.streams_held}; unsent frames: {self.unsent_frames}; "
            f"memory held: {self.memory_bytes / 2**20:.1f} MiB "
            f"(resident memory grew {self.rss_growth_bytes / 2**20:.1f} MiB)"
        )


def serving_connection(limit: int) -> Any:
    """A negotiated serving connection with a stream limit, of whichever API is loaded."""
    config_type = getattr(protocol, "ConnectionConfig", None)
    if config_type is not None:
        conn = protocol.ServingConnection(
            config_type(negotiated=True, max_concurrent_streams=limit)
        )
    else:  # the older keyword-argument constructor
        conn = protocol.ServingConnection(negotiated=True, max_concurrent_streams=limit)
    conn.start()
    return conn


def resident_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def unsent_frames(conn: Any) -> int:
    """Frames the connection would still send: its control queue and what its
    streams have queued."""
    streams = getattr(conn, "_streams", {})
    return len(conn._control) + sum(len(st.outq) for st in streams.values())


def flood(frames: int = 200_000, limit: int = 10) -> FloodResult:
    """Sends ``frames`` new-stream frames to a fresh connection that never writes."""
    template = tunnel_pb2.ClientToServer(
        new_stream=tunnel_pb2.NewStream(
            method_name=METHOD,
            initial_window_size=65536,
            protocol_revision=tunnel_pb2.REVISION_ONE,
        )
    )
    rss_before = resident_bytes()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        conn = serving_connection(limit)
        taken_in = 0
        for sid in range(1, frames + 1):
            if getattr(conn, "output_backlogged", False):
                break  # the read loop waits here until the output drains: never
            frame = tunnel_pb2.ClientToServer()
            frame.CopyFrom(template)
            frame.stream_id = sid
            for event in conn.receive(frame):
                if isinstance(event, protocol.StreamOpened):
                    conn.accept_stream(event.stream_id, request_streaming=False)
            taken_in += 1
        held = tracemalloc.get_traced_memory()[0] - before
        rss = max(0, resident_bytes() - rss_before)
        return FloodResult(frames, taken_in, conn.active_streams, unsent_frames(conn), held, rss)
    finally:
        tracemalloc.stop()


def main(argv: list[str]) -> None:
    frames = int(argv[1]) if len(argv) > 1 else 200_000
    limit = int(argv[2]) if len(argv) > 2 else 10
    print(flood(frames, limit).summary())


if __name__ == "__main__":
    main(sys.argv)
