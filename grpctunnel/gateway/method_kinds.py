"""What kind each method is (unary or streaming, each way), learnt by server reflection,
so that a relay can use the cheapest call that carries it.

A relay that knows nothing of a schema must treat every call as a bidirectional stream,
which costs several operations per call in grpc.aio. :class:`MethodKinds` asks, the first
time a service is seen, the reflection service behind it for the service's descriptor,
and from then on answers the kind of each of its methods. Until it knows (or if it cannot
learn), it answers None and the relay keeps to the stream that fits every kind.

Kinds belong to one source of calls: the gateway keeps one :class:`MethodKinds` per
reverse tunnel (two exposers of one service may run different schemas; a reconnected
exposer is learnt afresh) and closes it with the tunnel; the exposer keeps one for its
backend. A relay that finds a kind wrong calls :meth:`MethodKinds.forget`, and the
method is relayed by the general stream until it is learnt again. A source that has no
reflection (UNIMPLEMENTED) is not asked again; other failures are retried, less and less
often, so that a fleet of thousands of tunnels does not cost a stream of questions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from grpctunnel.gateway.reflection_client import reflect

log = logging.getLogger("grpctunnel")

Kind = tuple[bool, bool]  # (requests stream, responses stream)
UNARY: Kind = (False, False)


def kinds_from_files(files: Iterable[bytes], service: str) -> dict[str, Kind]:
    """Method path -> kind for ``service``, from serialized FileDescriptorProtos."""
    out: dict[str, Kind] = {}
    for raw in files:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        for svc in proto.service:
            full = f"{proto.package}.{svc.name}" if proto.package else svc.name
            if full != service:
                continue
            for method in svc.method:
                out[f"/{full}/{method.name}"] = (method.client_streaming, method.server_streaming)
    return out


class MethodKinds:
    """A cache of method kinds, filled in the background by reflection through the
    channel that ``channel_for(service)`` gives (None: do not ask)."""

    def __init__(
        self, channel_for: Callable[[str], grpc.aio.Channel | None], *, retry_after: float = 30.0
    ) -> None:
        self._channel_for = channel_for
        self._retry_after = retry_after
        self._kinds: dict[str, Kind] = {}
        self._known_services: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, float] = {}
        self._failures: dict[str, int] = {}  # failed tries in a row, per service
        self._closed = False
        # the source answered UNIMPLEMENTED: it has no reflection, and asking again (for
        # this service or another) would only cost a call each time
        self.no_reflection = False

    def get(self, method: str) -> Kind | None:
        """The method's kind if known; otherwise starts learning it and says None."""
        kind = self._kinds.get(method)
        if kind is None:
            self._learn_soon(method[1:].split("/", 1)[0])
        return kind

    async def learn(self, service: str) -> bool:
        """Learns ``service``'s methods now (or waits for learning under way); whether
        they are known afterwards."""
        self._failed_at.pop(service, None)
        self.no_reflection = False
        self._learn_soon(service)
        task = self._tasks.get(service)
        if task is not None:
            await asyncio.shield(task)
        return service in self._known_services

    def forget(self, service: str) -> None:
        """Drops what is known of a service (its backend changed its schema), and waits
        ``retry_after`` before learning it again."""
        self._known_services.discard(service)
        prefix = f"/{service}/"
        for method in [m for m in self._kinds if m.startswith(prefix)]:
            del self._kinds[method]
        try:
            self._failed_at[service] = asyncio.get_running_loop().time()
        except RuntimeError:
            pass

    def close(self) -> None:
        """Stops learning (its source is gone): tasks under way are cancelled and
        nothing more is learnt."""
        self._closed = True
        for task in list(self._tasks.values()):
            task.cancel()
        self._tasks.clear()

    def _learn_soon(self, service: str) -> None:
        if (
            self._closed
            or self.no_reflection
            or service in self._known_services
            or service in self._tasks
        ):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        failed = self._failed_at.get(service)
        if failed is not None:
            # tries after failures back off: retry_after, then twice that, ... up to 16x
            wait = self._retry_after * 2 ** min(self._failures.get(service, 1) - 1, 4)
            if loop.time() - failed < wait:
                return
        channel = self._channel_for(service)
        if channel is None:
            return
        task = loop.create_task(self._learn(service, channel))
        self._tasks[service] = task
        task.add_done_callback(lambda done: self._learnt(service, done))

    def _learnt(self, service: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(service) is task:
            del self._tasks[service]
        if not task.cancelled() and task.exception() is not None:  # a bug: say so
            self._failed_at[service] = asyncio.get_running_loop().time()
            log.error("learning the methods of %s failed", service, exc_info=task.exception())

    async def _learn(self, service: str, channel: grpc.aio.Channel) -> None:
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
        try:
            response = await reflect(channel, request)
        except grpc.aio.AioRpcError as e:  # no reflection there, or the channel went away
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.no_reflection = True
            response = None
        kinds = {}
        if response is not None and response.HasField("file_descriptor_response"):
            kinds = kinds_from_files(
                response.file_descriptor_response.file_descriptor_proto, service
            )
        if not kinds:
            self._failed_at[service] = asyncio.get_running_loop().time()
            self._failures[service] = self._failures.get(service, 0) + 1
            log.debug("could not learn the methods of %s by reflection", service)
            return
        self._failures.pop(service, None)
        self._kinds.update(kinds)
        self._known_services.add(service)


__all__ = ["UNARY", "Kind", "MethodKinds", "kinds_from_files"]
