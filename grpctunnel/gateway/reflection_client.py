"""Asking a server's reflection service one question, in one place.

Reflection is a bidirectional stream, but one question and its answer need no more
than a request sent with the call and the first response: that is a server-streaming
call on the wire. Made as one, the question goes out with the call, so a server without
reflection reliably answers UNIMPLEMENTED (a separate write racing that answer can turn
it into INTERNAL in grpc.aio, grpc/grpc#36066). Version v1 is asked first, then v1alpha;
their messages are the same, so the v1alpha classes serve both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection_pb2

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_SERVICES = frozenset({REFLECTION_V1, REFLECTION_V1ALPHA})
# the method of each version, in the order they are tried
V1 = f"/{REFLECTION_V1}/ServerReflectionInfo"
V1ALPHA = f"/{REFLECTION_V1ALPHA}/ServerReflectionInfo"


Metadata = Sequence[tuple[str, str | bytes]]

_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


async def ask(
    channel: grpc.aio.Channel,
    request: Any,
    *,
    paths: Sequence[str] = (V1, V1ALPHA),
    metadata: Metadata = (),
    timeout: float | None = 10.0,
) -> tuple[str, Any] | None:
    """The first response to ``request`` (a ``ServerReflectionRequest``) and the path
    (the version) that gave it, trying ``paths`` in order: a path answering UNIMPLEMENTED,
    or with no response at all, passes the question on to the next. None if no path
    answered with a response; raises the ``AioRpcError`` of the last try when no version
    is offered (UNIMPLEMENTED) or the call failed otherwise."""
    last: grpc.aio.AioRpcError | None = None
    for path in paths:
        multicallable: Any = channel.unary_stream(
            path,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        call = multicallable(request, timeout=timeout, metadata=tuple(metadata) or None)
        try:
            response = await call.read()
        except grpc.aio.AioRpcError as e:
            last = e
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                continue
            raise
        finally:
            call.cancel()
        if response is _EOF:
            continue
        return path, response
    if last is not None:
        raise last
    return None


async def reflect(
    channel: grpc.aio.Channel,
    request: Any,
    *,
    timeout: float = 10.0,
    first: str | None = None,
    metadata: Metadata = (),
) -> Any:
    """The first response to ``request`` (a ``ServerReflectionRequest``), trying
    ``first`` (default v1), then the other version. None if the server answered with no
    response at all; raises the ``AioRpcError`` of the last try when no version is
    offered (UNIMPLEMENTED) or the call failed otherwise."""
    paths = (V1ALPHA, V1) if first == V1ALPHA else (V1, V1ALPHA)
    answer = await ask(channel, request, paths=paths, metadata=metadata, timeout=timeout)
    return None if answer is None else answer[1]


__all__ = [
    "REFLECTION_SERVICES",
    "REFLECTION_V1",
    "REFLECTION_V1ALPHA",
    "V1",
    "V1ALPHA",
    "Metadata",
    "ask",
    "reflect",
]
