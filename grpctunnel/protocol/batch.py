"""Batch frames, an extension between peers of this project: several frames carried in
one message of the tunnel RPC, in order.

A batch is a frame whose ``batch`` field (number 1000, unknown to Go peers) holds plain
frames and which carries nothing else. It is used only when both sides announced the
``batch`` extension in the ``grpctunnel-extensions`` header when the tunnel RPC opened;
a peer that did not gets none, and one that sends a batch without having announced it,
or a batch that is not made of plain frames (one that sets a frame kind of its own, or
nests another batch), breaks the protocol and the tunnel ends.

Packing: runs of small frames go into one batch each, up to ``BATCH_BYTES`` of encoded
frames; a frame of ``BATCH_FRAME_LIMIT`` bytes or more (a chunk of a large message)
goes alone, so that batching never copies bulk data, and a single small frame goes
as itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from grpctunnel.protocol.errors import Code, ProtocolError
from grpctunnel.v1 import tunnel_pb2

Frame = TypeVar("Frame", tunnel_pb2.ClientToServer, tunnel_pb2.ServerToClient)


class Encoded(Protocol):
    """A frame already in its wire form (``grpctunnel.protocol.wire.EncodedFrame``)."""

    def ByteSize(self) -> int: ...

    def SerializeToString(self) -> bytes: ...


BATCH_FRAME_LIMIT = 16 * 1024  # frames this large or larger are never batched
BATCH_BYTES = 256 * 1024  # encoded frames in one batch, at most


def pack(frames: list[Frame | Encoded]) -> list[Frame | Encoded]:
    """The frames to write, runs of small ones packed into batches, order kept. A frame
    already in its wire form (``Encoded``: a large chunk of data) always goes alone."""
    if len(frames) < 2:
        return frames
    out: list[Frame | Encoded] = []
    group: list[Frame] = []
    size = 0
    for frame in frames:
        n = frame.ByteSize()
        if n >= BATCH_FRAME_LIMIT or size + n > BATCH_BYTES:
            _close_group(group, out)
            group, size = [], 0
            if n >= BATCH_FRAME_LIMIT:
                out.append(frame)
                continue
        group.append(frame)  # type: ignore[arg-type]  # (an Encoded one is never this small)
        size += n
    _close_group(group, out)
    return out


def _close_group(group: list[Frame], out: list[Frame | Encoded]) -> None:
    if len(group) == 1:
        out.append(group[0])
    elif group:
        batch = type(group[0])()
        batch.batch.extend(group)
        out.append(batch)


def unpack(frame: Frame, *, batching: bool, error_code: Code) -> Sequence[Frame]:
    """The plain frames a frame read from the tunnel RPC carries: itself, or the frames
    of a batch. Raises :class:`ProtocolError` (with ``error_code``) for a batch the
    peer may not send."""
    if not frame.batch:
        return (frame,)
    if not batching:
        raise ProtocolError(
            "a batch of frames from a peer that did not negotiate batches", error_code
        )
    inner = list(frame.batch)
    if frame.WhichOneof("frame") is not None or any(f.batch for f in inner):
        raise ProtocolError("a batch frame must hold only plain frames", error_code)
    return inner
