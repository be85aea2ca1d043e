"""Invoking one method dynamically: JSON request data in, call events out.

Request data (the DATA argument) is JSON in the proto3 JSON mapping: inline text, ``@file``,
``@-`` for stdin, or nothing. It holds any number of JSON values, one per line or simply
concatenated; a value may span lines. Values are read as they arrive, so a streaming call
can be fed interactively from stdin. An object may be written with angle brackets in
place of its outer braces (``<"msg": "hi">``). With ``--format text`` the data is
protobuf text format instead, messages separated by the record separator (0x1E), as
grpcurl writes them.

`invoke` runs any of the four kinds of call over a `grpc.aio.Channel` (only through its
``unary_unary`` / ``unary_stream`` / ``stream_unary`` / ``stream_stream``), and yields a
`ResponseHeaders`, each `ResponseMessage` as it arrives, and finally one `CallStatus`. A
non-OK status is an outcome, not an exception; only local failures (bad request data) raise.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format, message_factory, text_format
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message

from grpctunnel_cli.errors import CliError, InputError
from grpctunnel_cli.metadata import Metadata, MetadataValue
from grpctunnel_cli.request_check import check_json
from grpctunnel_cli.rpc_status import FirstStatus, as_metadata, error_status

__all__ = [
    "CallEvent",
    "CallStatus",
    "JsonValueSplitter",
    "ResponseHeaders",
    "ResponseMessage",
    "call_kind",
    "invoke",
    "json_values",
    "message_class",
    "method_path",
    "parse_message",
    "request_messages",
    "status_exit_code",
    "text_messages",
]

RECORD_SEPARATOR = "\x1e"  # between messages in text format, as grpcurl writes them

_WHITESPACE = re.compile(r"[ \t\n\r]*")


# --- call events --------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseHeaders:
    """The response headers (empty when the server answered with trailers only)."""

    metadata: tuple[tuple[str, MetadataValue], ...]


@dataclass(frozen=True)
class ResponseMessage:
    """One response message, `index` counting from 0."""

    message: Message
    index: int


@dataclass(frozen=True)
class CallStatus:
    """How the call ended."""

    code: grpc.StatusCode
    details: str
    trailers: tuple[tuple[str, MetadataValue], ...]
    requests_sent: int
    responses_received: int
    elapsed: float  # seconds, from starting the call to its status

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK


CallEvent = ResponseHeaders | ResponseMessage | CallStatus


def status_exit_code(code: grpc.StatusCode) -> int:
    """The process exit status for a call outcome: 0 for OK, else 64 + the status number."""
    number = int(code.value[0])
    return 0 if number == 0 else 64 + number


# --- methods and messages -----------------------------------------------------------------


def method_path(method: MethodDescriptor) -> str:
    """The HTTP/2 path of a method: ``/pkg.Service/Method``."""
    return f"/{method.containing_service.full_name}/{method.name}"


def call_kind(method: MethodDescriptor) -> str:
    """``unary``, ``server streaming``, ``client streaming`` or ``bidi streaming``."""
    if method.client_streaming and method.server_streaming:
        return "bidi streaming"
    if method.client_streaming:
        return "client streaming"
    if method.server_streaming:
        return "server streaming"
    return "unary"


def message_class(descriptor: Descriptor) -> type[Message]:
    """The (dynamic) message class for a descriptor from any pool."""
    return message_factory.GetMessageClass(descriptor)


def parse_message(
    value: Any,
    descriptor: Descriptor,
    *,
    pool: DescriptorPool | None = None,
    where: str = "request",
    allow_unknown: bool = False,
) -> Message:
    """A message from one parsed JSON value; a value that does not fit (unknown fields
    too, unless `allow_unknown`) is an InputError saying where and what."""
    check_json(value, descriptor, where=where, allow_unknown=allow_unknown)
    message = message_class(descriptor)()
    try:
        json_format.ParseDict(
            value, message, ignore_unknown_fields=allow_unknown, descriptor_pool=pool
        )
    except (json_format.ParseError, TypeError, ValueError, AttributeError) as error:
        reason = " ".join(str(error).split())
        raise InputError(f"{where} is not a valid {descriptor.full_name}: {reason}") from None
    return message


async def request_messages(
    values: AsyncIterable[Any],
    descriptor: Descriptor,
    *,
    pool: DescriptorPool | None = None,
    allow_unknown: bool = False,
) -> AsyncIterator[Message]:
    """Messages from JSON values, converted as they arrive."""
    number = 0
    async for value in values:
        number += 1
        yield parse_message(
            value, descriptor, pool=pool, where=f"request {number}", allow_unknown=allow_unknown
        )


async def text_messages(
    data: str | None,
    descriptor: Descriptor,
    *,
    pool: DescriptorPool | None = None,
    allow_unknown: bool = False,
    stdin: TextIO | None = None,
) -> AsyncIterator[Message]:
    """Messages from request data in protobuf text format (inline, ``@file`` or ``@-``,
    read whole), separated by the record separator (0x1E)."""
    if data is None:
        return
    if data == "@-":
        text = "".join([line async for line in _lines(stdin if stdin is not None else sys.stdin)])
    else:
        text, _ = _read_source(data)
    parts = text.split(RECORD_SEPARATOR)
    for number, part in enumerate(parts, 1):
        if not part.strip() and len(parts) > 1:
            continue
        message = message_class(descriptor)()
        try:
            text_format.Parse(
                part, message, allow_unknown_field=allow_unknown, descriptor_pool=pool
            )
        except text_format.ParseError as error:
            reason = " ".join(str(error).split())
            raise InputError(
                f"request {number} is not a valid {descriptor.full_name} in text format: {reason}"
            ) from None
        yield message


# --- JSON request data --------------------------------------------------------------------


class JsonValueSplitter:
    """Splits text into JSON values: one per line, concatenated, or spanning lines.

    Feed it text (whole lines at a time for streaming input); it returns each value as soon
    as the text fed so far closes every open bracket and string. A value opened with ``<``
    is an object whose outer braces are written as angle brackets: they are read as
    braces. Errors name the line and column in the whole input.
    """

    def __init__(self, source: str = "request data") -> None:
        self._source = source
        self._decoder = json.JSONDecoder()
        self._buffer: list[str] = []
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._angled = False  # the value being read was opened with "<"
        self._line = 1  # line number of the next character fed
        self._buffer_line = 1  # line number where the buffer starts

    def feed(self, text: str) -> list[Any]:
        """Take more text; return the values it completes."""
        read: list[str] = []
        for char in text:
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
            elif char == "<" and self._depth == 0:
                self._depth, self._angled, char = 1, True, "{"
            elif char == ">" and self._depth == 1 and self._angled:
                self._depth, self._angled, char = 0, False, "}"
            read.append(char)
        text = "".join(read)
        self._buffer.append(text)
        if self._depth <= 0 and not self._in_string:
            values = self._flush()
            self._line += text.count("\n")
            self._buffer_line = self._line
            return values
        self._line += text.count("\n")
        return []

    def finish(self) -> list[Any]:
        """End of input: return what is left, or fail if a value is incomplete."""
        return self._flush()

    def _flush(self) -> list[Any]:
        text = "".join(self._buffer)
        self._buffer.clear()
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._angled = False
        values: list[Any] = []
        position = 0
        while True:
            match = _WHITESPACE.match(text, position)
            position = match.end() if match else position
            if position >= len(text):
                return values
            try:
                value, position = self._decoder.raw_decode(text, position)
            except json.JSONDecodeError as error:
                line = self._buffer_line + error.lineno - 1
                raise InputError(
                    f"invalid JSON in {self._source} at line {line}, column {error.colno}: "
                    f"{error.msg}"
                ) from None
            values.append(value)


def _read_source(data: str) -> tuple[str, str]:
    """The text of inline data or of ``@file``, and how to name it in messages."""
    if not data.startswith("@"):
        return data, "request data"
    path = Path(data[1:])
    try:
        return path.read_text(encoding="utf-8"), f"{path}"
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise InputError(f"cannot read request data from {str(path)!r}: {reason}") from None


async def _lines(stream: TextIO) -> AsyncIterator[str]:
    """Lines of a blocking text stream, read on a daemon thread so exit never waits on it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()

    def put(item: str | BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody wants the input any more
            pass

    def pump() -> None:
        try:
            for line in iter(stream.readline, ""):
                put(line)
        except (OSError, ValueError, UnicodeDecodeError) as error:
            put(error)
        else:
            put(None)

    threading.Thread(target=pump, name="grpctunnel-stdin", daemon=True).start()
    while True:
        item = await queue.get()
        if item is None:
            return
        if isinstance(item, BaseException):
            raise InputError(f"cannot read request data from stdin: {item}")
        yield item


async def json_values(data: str | None, *, stdin: TextIO | None = None) -> AsyncIterator[Any]:
    """The JSON values in DATA: inline JSON, ``@file``, ``@-`` (stdin) or None (no values)."""
    if data is None:
        return
    if data == "@-":
        splitter = JsonValueSplitter("stdin")
        async for line in _lines(stdin if stdin is not None else sys.stdin):
            for value in splitter.feed(line):
                yield value
        for value in splitter.finish():
            yield value
        return
    text, source = _read_source(data)
    splitter = JsonValueSplitter(source)
    for value in [*splitter.feed(text), *splitter.finish()]:
        yield value


# --- invocation ---------------------------------------------------------------------------


class _TrackedRequests:
    """Counts the requests grpc takes and keeps the error if the source fails."""

    def __init__(self, source: AsyncIterable[Message]) -> None:
        self._source = source
        self.sent = 0
        self.error: CliError | None = None
        self.call: Any = None

    async def __aiter__(self) -> AsyncIterator[Message]:
        try:
            # Stopping once the call is done avoids most writes into a closed call; the ones
            # already on their way are what FirstStatus is for.
            async for message in self._source:
                if self.call is not None and self.call.done():
                    return  # the server has ended the call: writing more cannot succeed
                self.sent += 1
                yield message
        except CliError as error:
            self.error = error  # grpc cancels the call; invoke reports this instead
            raise


async def _single(requests: AsyncIterable[Message], descriptor: Descriptor) -> Message:
    """The only request of a unary-request call; an empty message when there is none."""
    found: Message | None = None
    async for message in requests:
        if found is not None:
            raise InputError(
                f"this method takes exactly one {descriptor.full_name}, but the request data "
                "holds more than one"
            )
        found = message
    return found if found is not None else message_class(descriptor)()


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


async def invoke(
    channel: grpc.aio.Channel,
    method: MethodDescriptor,
    requests: AsyncIterable[Message],
    *,
    metadata: Metadata = (),
    timeout: float | None = None,
) -> AsyncIterator[CallEvent]:
    """Call `method` with `requests`; yield headers, each response, then the status.

    A method that takes one request sends the single message of `requests` (an empty one
    if there is none; more than one is an InputError). Streaming requests are sent as the
    iterable yields them. If `requests` raises a CliError the call is cancelled and that
    error is raised. Closing the generator early cancels the call.
    """
    path = method_path(method)
    deserialize = message_class(method.output_type).FromString
    request_metadata = tuple(metadata)
    tracked: _TrackedRequests | None = None
    sent = 1
    started = time.monotonic()
    call: Any
    if not method.client_streaming:
        request = await _single(requests, method.input_type)
        started = time.monotonic()
        if method.server_streaming:
            call = channel.unary_stream(
                path, request_serializer=_serialize, response_deserializer=deserialize
            )(request, metadata=request_metadata, timeout=timeout)
        else:
            call = channel.unary_unary(
                path, request_serializer=_serialize, response_deserializer=deserialize
            )(request, metadata=request_metadata, timeout=timeout)
    else:
        tracked = _TrackedRequests(requests)
        if method.server_streaming:
            call = channel.stream_stream(
                path, request_serializer=_serialize, response_deserializer=deserialize
            )(tracked.__aiter__(), metadata=request_metadata, timeout=timeout)
        else:
            call = channel.stream_unary(
                path, request_serializer=_serialize, response_deserializer=deserialize
            )(tracked.__aiter__(), metadata=request_metadata, timeout=timeout)

    first_status = FirstStatus(call)
    if tracked is not None:
        tracked.call = call
    received = 0
    finished = False
    try:
        try:
            yield ResponseHeaders(as_metadata(await call.initial_metadata()))
            if method.server_streaming:
                async for reply in call:
                    yield ResponseMessage(reply, received)
                    received += 1
            else:
                reply = await call
                yield ResponseMessage(reply, received)
                received += 1
            code: grpc.StatusCode = await call.code()
            details: str = await call.details() or ""
            trailers = as_metadata(await call.trailing_metadata())
        except grpc.RpcError as error:
            if tracked is not None and tracked.error is not None:
                raise tracked.error from None
            code, details, trailers = error_status(error, first_status)
        except asyncio.CancelledError:
            if tracked is not None and tracked.error is not None:
                raise tracked.error from None
            raise
        if tracked is not None:
            if tracked.error is not None:
                raise tracked.error
            sent = tracked.sent
        finished = True
        yield CallStatus(
            code=code,
            details=details,
            trailers=trailers,
            requests_sent=sent,
            responses_received=received,
            elapsed=time.monotonic() - started,
        )
    finally:
        if not finished:
            call.cancel()
