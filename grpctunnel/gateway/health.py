"""Health per service, as the gateway sees it: the standard ``grpc.health.v1.Health``
(Check, Watch and List) answered from the tunnels that expose each service.

A service is SERVING while a live tunnel exposes it and the backend behind that tunnel
does not say otherwise; NOT_SERVING when it was exposed here before but no tunnel serves
it now (none is open, or every backend behind one says NOT_SERVING, or its tunnels are
being closed); unknown (Check: NOT_FOUND; Watch: SERVICE_UNKNOWN) when no tunnel ever
exposed it. The empty service name is the gateway itself: SERVING until it shuts down,
when every service becomes NOT_SERVING.

What a backend says is learnt by :class:`BackendHealth`, which watches the backend's own
health service (``Health/Watch``, one call per announced service) through the reverse
tunnel: the exposer relays those calls to its backend like any other. A backend without
a health service, or one that does not know the service, has no say (it counts as
serving); one that cannot be reached counts as NOT_SERVING until it can. The gateway
routes calls for a service to the tunnels whose backend serves it, while there are any.

Health is public (load balancers probe it without a token), but ``List`` names only the
services the caller's token may call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpctunnel import metadata as md

log = logging.getLogger("grpctunnel")

Status = int  # a HealthCheckResponse.ServingStatus
SERVING: Status = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Status = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: Status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

WATCH = "/grpc.health.v1.Health/Watch"
MAX_KNOWN_SERVICES = 10_000  # services remembered as once exposed (oldest forgotten first)
RETRY_INITIAL = 1.0  # seconds before watching a backend's health again after a failure
RETRY_CAP = 30.0


class BackendHealth:
    """What the backend behind one reverse tunnel says of each service it announced,
    learnt by watching its health service through ``channel``; ``on_change`` is called
    whenever that changes. :meth:`start` starts watching, :meth:`close` stops."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        services: Iterable[str],
        on_change: Callable[[], None],
        *,
        retry_initial: float = RETRY_INITIAL,
        retry_cap: float = RETRY_CAP,
    ) -> None:
        self._channel = channel
        self.services = tuple(services)
        self._on_change = on_change
        self._retry = (retry_initial, retry_cap)
        self._said: dict[str, Status] = {}  # what the backend says, when it has a say
        self._tasks: list[asyncio.Task[None]] = []

    def serving(self, service: str) -> bool:
        """False only when the backend says the service is not serving (or cannot be
        reached)."""
        return self._said.get(service) != NOT_SERVING

    def said(self, service: str) -> Status | None:
        """The backend's last word on ``service`` (None: it has no say)."""
        return self._said.get(service)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch(service)) for service in self.services]

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    def _set(self, service: str, status: Status | None) -> None:
        if status in (None, SERVING, SERVICE_UNKNOWN, health_pb2.HealthCheckResponse.UNKNOWN):
            changed = self._said.pop(service, None) == NOT_SERVING
            if status == SERVING:
                self._said[service] = SERVING
        else:
            changed = self._said.get(service) != status
            self._said[service] = status
        if changed:
            self._on_change()

    async def _watch(self, service: str) -> None:
        watch = self._channel.unary_stream(
            WATCH,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        delay, cap = self._retry
        while True:
            call: Any = watch(health_pb2.HealthCheckRequest(service=service))
            try:
                async for response in call:
                    self._set(service, response.status)
                    delay = self._retry[0]
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    self._set(service, None)  # no health service there: no say
                    return
                if code == grpc.StatusCode.UNAVAILABLE:
                    self._set(service, NOT_SERVING)  # the backend cannot be reached
                else:
                    self._set(service, None)
                log.debug(
                    "watching the health of %s behind a tunnel: %s: %s",
                    service,
                    code.name,
                    error.details(),
                )
            finally:
                call.cancel()
            await asyncio.sleep(delay)
            delay = min(cap, delay * 2)


class GatewayHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """The gateway's ``grpc.health.v1.Health``; see the module documentation.

    ``serving(service)`` says whether a live tunnel serves a service now (one not being
    closed, whose backend does not say NOT_SERVING); ``may_call(metadata, service)``
    whether a caller may call it (what ``List`` shows). Tell it of each
    service a tunnel announces with :meth:`seen`, and of anything that may change a
    service's health with :meth:`changed`.
    """

    def __init__(
        self,
        serving: Callable[[str], bool],
        may_call: Callable[[md.MetadataPairs, str], bool],
        *,
        max_known: int = MAX_KNOWN_SERVICES,
    ) -> None:
        self._serving = serving
        self._may_call = may_call
        self._max_known = max_known
        self._known: OrderedDict[str, None] = OrderedDict()
        self._shutting_down = False
        self._changed = asyncio.Event()

    # -- what the gateway calls -------------------------------------------------------

    def seen(self, services: Iterable[str]) -> None:
        """Tunnels exposing ``services`` opened: from now on they are known."""
        for service in services:
            self._known[service] = None
            self._known.move_to_end(service)
        while len(self._known) > self._max_known:
            self._known.popitem(last=False)
        self.changed()

    def changed(self) -> None:
        """Something that may change the health of a service happened: watchers look
        again."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def enter_graceful_shutdown(self) -> None:
        """Every service, the gateway's own included, is NOT_SERVING from now on."""
        self._shutting_down = True
        self.changed()

    def status(self, service: str) -> Status | None:
        """The health of ``service`` now; None when it was never exposed here."""
        if self._shutting_down:
            return NOT_SERVING if service == "" or service in self._known else None
        if service == "":
            return SERVING
        if service not in self._known:
            return None
        if self._serving(service):
            return SERVING
        return NOT_SERVING

    # -- the RPCs ---------------------------------------------------------------------

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no tunnel ever exposed service {request.service}"
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        last: Status | None = None
        while True:
            changed = self._changed
            status = self.status(request.service)
            if status is None:
                status = SERVICE_UNKNOWN
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            await changed.wait()

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        metadata = tuple(context.invocation_metadata() or ())
        response = health_pb2.HealthListResponse()
        for service in ("", *self._known):
            if service and not self._may_call(metadata, service):
                continue
            status = self.status(service)
            if status is not None:
                response.statuses[service].status = status
        return response


__all__ = ["BackendHealth", "GatewayHealth"]
