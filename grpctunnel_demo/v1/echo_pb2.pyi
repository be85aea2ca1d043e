from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EchoRequest(_message.Message):
    __slots__ = ("msg",)
    MSG_FIELD_NUMBER: _ClassVar[int]
    msg: str
    def __init__(self, msg: _Optional[str] = ...) -> None: ...

class ExpandRequest(_message.Message):
    __slots__ = ("msg", "count")
    MSG_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    msg: str
    count: int
    def __init__(self, msg: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class EchoReply(_message.Message):
    __slots__ = ("msg", "index")
    MSG_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    msg: str
    index: int
    def __init__(self, msg: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...
