import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_FORWARD: _ClassVar[Direction]
    DIRECTION_REVERSE: _ClassVar[Direction]
DIRECTION_UNSPECIFIED: Direction
DIRECTION_FORWARD: Direction
DIRECTION_REVERSE: Direction

class Tunnel(_message.Message):
    __slots__ = ("id", "name", "services", "peer", "node", "direction", "opened_at", "calls_in_flight", "calls_done", "errors", "request_bytes", "response_bytes", "draining")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    CALLS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CALLS_DONE_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    services: _containers.RepeatedScalarFieldContainer[str]
    peer: str
    node: str
    direction: Direction
    opened_at: _timestamp_pb2.Timestamp
    calls_in_flight: int
    calls_done: int
    errors: int
    request_bytes: int
    response_bytes: int
    draining: bool
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., services: _Optional[_Iterable[str]] = ..., peer: _Optional[str] = ..., node: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., opened_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., calls_in_flight: _Optional[int] = ..., calls_done: _Optional[int] = ..., errors: _Optional[int] = ..., request_bytes: _Optional[int] = ..., response_bytes: _Optional[int] = ..., draining: _Optional[bool] = ...) -> None: ...

class ListTunnelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTunnelsResponse(_message.Message):
    __slots__ = ("tunnels",)
    TUNNELS_FIELD_NUMBER: _ClassVar[int]
    tunnels: _containers.RepeatedCompositeFieldContainer[Tunnel]
    def __init__(self, tunnels: _Optional[_Iterable[_Union[Tunnel, _Mapping]]] = ...) -> None: ...

class WatchTunnelsRequest(_message.Message):
    __slots__ = ("refresh_seconds",)
    REFRESH_SECONDS_FIELD_NUMBER: _ClassVar[int]
    refresh_seconds: float
    def __init__(self, refresh_seconds: _Optional[float] = ...) -> None: ...

class TunnelEvent(_message.Message):
    __slots__ = ("snapshot", "opened", "closed")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    snapshot: ListTunnelsResponse
    opened: Tunnel
    closed: TunnelClosed
    def __init__(self, snapshot: _Optional[_Union[ListTunnelsResponse, _Mapping]] = ..., opened: _Optional[_Union[Tunnel, _Mapping]] = ..., closed: _Optional[_Union[TunnelClosed, _Mapping]] = ...) -> None: ...

class TunnelClosed(_message.Message):
    __slots__ = ("tunnel", "reason")
    TUNNEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    tunnel: Tunnel
    reason: str
    def __init__(self, tunnel: _Optional[_Union[Tunnel, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class CloseTunnelRequest(_message.Message):
    __slots__ = ("name", "grace_seconds", "this_node_only")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    THIS_NODE_ONLY_FIELD_NUMBER: _ClassVar[int]
    name: str
    grace_seconds: float
    this_node_only: bool
    def __init__(self, name: _Optional[str] = ..., grace_seconds: _Optional[float] = ..., this_node_only: _Optional[bool] = ...) -> None: ...

class CloseTunnelResponse(_message.Message):
    __slots__ = ("closed",)
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    closed: int
    def __init__(self, closed: _Optional[int] = ...) -> None: ...
