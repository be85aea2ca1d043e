"""All output of the command: data to stdout, diagnostics to stderr.

Response messages go to stdout: pretty, colored JSON on a terminal, one compact JSON line
per message otherwise (so the output pipes into ``jq`` or ``wc -l``); in protobuf text
format instead with ``--format text`` (multi-line on a terminal, one line otherwise). Errors go to stderr as
``ERROR: <CODE_NAME>: <message>`` followed by any rich error details (the
``google.rpc.Status`` in ``grpc-status-details-bin``). Verbose mode adds the request
headers, response headers, trailers and timing, on stderr. Nothing else prints.

rich draws only on a terminal; output to a pipe or file is written plain, as rich would
write it there, without importing rich (a command in a script starts faster).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError, Message

from grpctunnel_cli.invoke import (
    CallEvent,
    CallStatus,
    ResponseHeaders,
    ResponseMessage,
    call_kind,
    method_path,
)
from grpctunnel_cli.metadata import Metadata, MetadataValue, format_value
from grpctunnel_cli.reflection import Symbol

if TYPE_CHECKING:
    from google.protobuf import any_pb2
    from rich.console import Console

__all__ = [
    "STATUS_DETAILS_KEY",
    "Renderer",
    "describe_text",
    "message_to_json",
    "status_details",
    "symbol_kind",
]

STATUS_DETAILS_KEY = "grpc-status-details-bin"

# --- pure formatting ----------------------------------------------------------------------


def message_to_json(
    message: Message,
    *,
    emit_defaults: bool = False,
    proto_names: bool = False,
    pool: DescriptorPool | None = None,
    indent: int | None = None,
) -> str:
    """A message in the proto3 JSON mapping; compact (no spaces) unless `indent` is given."""
    data = json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=emit_defaults,
        preserving_proto_field_name=proto_names,
        descriptor_pool=pool,
    )
    if indent is None:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(data, ensure_ascii=False, indent=indent)


def _unpack(detail: any_pb2.Any, pools: Sequence[DescriptorPool]) -> Message | None:
    type_name = detail.TypeName()
    for pool in pools:
        try:
            descriptor = pool.FindMessageTypeByName(type_name)
        except KeyError:
            continue
        message = message_factory.GetMessageClass(descriptor)()
        if detail.Unpack(message):
            return message
    return None


def status_details(trailers: Metadata, pool: DescriptorPool | None = None) -> list[tuple[str, str]]:
    """The rich error details in trailers, as (type name, compact JSON or a note) pairs."""
    blob = next((v for k, v in trailers if k == STATUS_DETAILS_KEY), None)
    if blob is None:
        return []
    from google.rpc import error_details_pb2, status_pb2  # noqa: F401 (registers detail types)

    status = status_pb2.Status()
    try:
        status.ParseFromString(blob if isinstance(blob, bytes) else blob.encode("latin-1"))
    except DecodeError:
        return [(STATUS_DETAILS_KEY, "(not a valid google.rpc.Status)")]
    pools = [descriptor_pool.Default(), *([pool] if pool is not None else [])]
    found: list[tuple[str, str]] = []
    for detail in status.details:
        message = _unpack(detail, pools)
        if message is None:
            found.append((detail.TypeName() or detail.type_url, f"({len(detail.value)} bytes)"))
        else:
            found.append((detail.TypeName(), message_to_json(message)))
    return found


def symbol_kind(symbol: Symbol) -> str:
    """``service``, ``method``, ``message`` or ``enum``."""
    if isinstance(symbol, ServiceDescriptor):
        return "service"
    if isinstance(symbol, MethodDescriptor):
        return "method"
    if isinstance(symbol, EnumDescriptor):
        return "enum"
    return "message"


_SCALAR_NAMES = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}


def _type_name(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        return "." + field.message_type.full_name
    if field.enum_type is not None:
        return "." + field.enum_type.full_name
    return _SCALAR_NAMES.get(field.type, "group")


def _is_map(field: FieldDescriptor) -> bool:
    return bool(
        field.message_type is not None
        and field.is_repeated
        and field.message_type.GetOptions().map_entry
    )


def _field_line(field: FieldDescriptor, *, in_oneof: bool) -> str:
    if _is_map(field):
        entry = field.message_type
        assert entry is not None
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        return f"map<{_type_name(key)}, {_type_name(value)}> {field.name} = {field.number};"
    label = ""
    if field.is_repeated:
        label = "repeated "
    elif field.is_required:
        label = "required "
    elif field.has_presence and field.message_type is None and not in_oneof:
        label = "optional "
    return f"{label}{_type_name(field)} {field.name} = {field.number};"


def _real_oneof(field: FieldDescriptor) -> str | None:
    """The oneof a field is declared in, ignoring the synthetic oneof of proto3 optional."""
    oneof = field.containing_oneof
    if oneof is None:
        return None
    if len(oneof.fields) == 1 and oneof.name == "_" + field.name:
        return None
    return str(oneof.name)


def _indent(lines: Iterable[str], depth: int = 1) -> list[str]:
    return [("  " * depth + line) if line else line for line in lines]


def _enum_lines(enum: EnumDescriptor) -> list[str]:
    body = [f"{value.name} = {value.number};" for value in enum.values]
    return [f"enum {enum.name} {{", *_indent(body), "}"]


def _message_lines(message: Descriptor) -> list[str]:
    body: list[str] = []
    emitted_oneofs: set[str] = set()
    for field in message.fields:
        oneof = _real_oneof(field)
        if oneof is None:
            body.append(_field_line(field, in_oneof=False))
        elif oneof not in emitted_oneofs:
            emitted_oneofs.add(oneof)
            members = [f for f in message.fields if _real_oneof(f) == oneof]
            body.append(f"oneof {oneof} {{")
            body += _indent(_field_line(f, in_oneof=True) for f in members)
            body.append("}")
    for nested in message.nested_types:
        if not nested.GetOptions().map_entry:
            body += _message_lines(nested)
    for enum in message.enum_types:
        body += _enum_lines(enum)
    return [f"message {message.name} {{", *_indent(body), "}"]


def _method_line(method: MethodDescriptor) -> str:
    request = ("stream " if method.client_streaming else "") + "." + method.input_type.full_name
    response = ("stream " if method.server_streaming else "") + "." + method.output_type.full_name
    return f"rpc {method.name} ( {request} ) returns ( {response} );"


def describe_text(symbol: Symbol) -> str:
    """A symbol as proto source: a service, a method, a message or an enum."""
    if isinstance(symbol, ServiceDescriptor):
        body = [_method_line(method) for method in symbol.methods]
        lines = [f"service {symbol.name} {{", *_indent(body), "}"]
    elif isinstance(symbol, MethodDescriptor):
        lines = [_method_line(symbol)]
    elif isinstance(symbol, EnumDescriptor):
        lines = _enum_lines(symbol)
    else:
        lines = _message_lines(symbol)
    return "\n".join(lines)


# --- the renderer -------------------------------------------------------------------------

# What rich strips from text it prints (rich.control.strip_control_codes): bell, backspace,
# vertical tab, form feed, carriage return. Plain output strips them too, so that it is what
# rich would have written, and a server's message cannot move a terminal's cursor.
_CONTROL_CODES = dict.fromkeys((7, 8, 11, 12, 13))
# Set, these can make rich treat a pipe as a terminal; then rich decides, as before.
_TERMINAL_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")

Part = str | tuple[str, str]  # text, or (text, rich style) when drawn on a terminal


def _maybe_terminal(file: TextIO) -> bool:
    """Whether rich might draw on `file`: it is a terminal, or the environment may say so."""
    if any(name in os.environ for name in _TERMINAL_ENV):
        return True
    try:
        return file.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class _Output:
    """One output stream: through rich (colors, pretty JSON) when it may be a terminal,
    else plain lines, as rich would write them there."""

    def __init__(self, file: TextIO) -> None:
        self.file = file
        self.console: Console | None = None
        if _maybe_terminal(file):
            from rich.console import Console

            self.console = Console(file=file, highlight=False, soft_wrap=True)

    @property
    def is_terminal(self) -> bool:
        return self.console is not None and self.console.is_terminal

    def write(self, text: str) -> None:
        """`text` and a newline, unstyled, as is."""
        self.file.write(text + "\n")
        self.file.flush()

    def print(self, *parts: Part) -> None:
        """One line of styled parts (styles show on a terminal only)."""
        if self.console is None:
            text = "".join(part if isinstance(part, str) else part[0] for part in parts)
            lines = text.translate(_CONTROL_CODES).split("\n")
            self.write("\n".join(line.expandtabs(8) for line in lines))
            return
        from rich.text import Text

        self.console.print(Text.assemble(*parts))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


class Renderer:
    """Writes everything the command shows; one per command invocation."""

    def __init__(
        self,
        *,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        verbose: bool = False,
        emit_defaults: bool = False,
        proto_names: bool = False,
        pool: DescriptorPool | None = None,
    ) -> None:
        self._out = _Output(stdout if stdout is not None else sys.stdout)
        self._err = _Output(stderr if stderr is not None else sys.stderr)
        self.verbose = verbose
        self.emit_defaults = emit_defaults
        self.proto_names = proto_names
        self.pool = pool
        self.text_format = False  # responses in protobuf text format, not JSON

    @property
    def pretty(self) -> bool:
        """Whether stdout is a terminal (pretty, colored output) rather than a pipe or file."""
        return self._out.is_terminal

    @property
    def stderr_is_terminal(self) -> bool:
        """Whether stderr is a terminal (where progress may be drawn)."""
        return self._err.is_terminal

    # -- stdout: data

    def _line(self, text: str) -> None:
        self._out.write(text)

    def message(self, message: Message) -> None:
        """One response message."""
        if self.text_format:
            from google.protobuf import text_format

            text = text_format.MessageToString(
                message, as_one_line=not self.pretty, descriptor_pool=self.pool
            )
            self._line(text.rstrip("\n") if self.pretty else text)
            return
        if self._out.console is not None and self.pretty:
            self._out.console.print_json(
                message_to_json(
                    message,
                    emit_defaults=self.emit_defaults,
                    proto_names=self.proto_names,
                    pool=self.pool,
                    indent=2,
                )
            )
            return
        self._line(
            message_to_json(
                message,
                emit_defaults=self.emit_defaults,
                proto_names=self.proto_names,
                pool=self.pool,
            )
        )

    def names(self, names: Iterable[str]) -> None:
        """Names, one per line (services, methods)."""
        for name in names:
            self._line(name)

    def lines(self, lines: Iterable[str]) -> None:
        """Lines of text as they are (a load run's summary)."""
        for line in lines:
            self._line(line)

    @contextmanager
    def progress(self, total: int | None) -> Iterator[Callable[[], None]]:
        """A progress bar of `total` steps (None: unknown) on stderr, drawn only when stderr
        is a terminal and gone once done; yields what to call as each step is done."""
        if self._err.console is None or not self._err.is_terminal:
            yield lambda: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self._err.console, transient=True) as bar:
            task = bar.add_task("calls", total=total)
            yield lambda: bar.advance(task)

    def describe(self, symbol: Symbol) -> None:
        """A symbol's definition, introduced by what kind of symbol it is."""
        text = describe_text(symbol)
        kind = symbol_kind(symbol)
        article = "an" if kind[0] in "aeiou" else "a"
        self._line(f"{symbol.full_name} is {article} {kind}:")
        if self._out.console is not None and self.pretty:
            from rich.syntax import Syntax

            self._out.console.print(
                Syntax(text, "protobuf", theme="ansi_dark", background_color="default")
            )
        else:
            self._line(text)

    # -- stderr: diagnostics

    def error(self, message: str) -> None:
        """A local failure: ``ERROR: <message>``."""
        self._err.print(("ERROR:", "bold red"), " ", message)

    def rpc_error(self, code: grpc.StatusCode, details: str, trailers: Metadata) -> None:
        """A non-OK status: ``ERROR: <CODE_NAME>: <message>`` and any rich error details."""
        self._err.print(("ERROR:", "bold red"), " ", (code.name, "red"), ": ", details)
        for type_name, text in status_details(trailers, self.pool):
            self._err.print("  detail ", (type_name, "cyan"), ": ", text)

    def warning(self, message: str) -> None:
        """Something the command could not do although it went on: ``WARNING: <message>``."""
        self._err.print(("WARNING:", "bold yellow"), " ", message)

    def info(self, text: str) -> None:
        """An informational line on stderr (never stdout, which is for data)."""
        self._err.print(text)

    def _metadata(self, title: str, metadata: Metadata) -> None:
        self._err.print((title, "bold"))
        if not metadata:
            self._err.print(("  (empty)", "dim"))
        for key, value in metadata:
            self._err.print("  ", (key, "cyan"), ": ", _shown(key, value))

    def request_start(self, method: MethodDescriptor, metadata: Metadata) -> None:
        """Verbose: the method and the request metadata, before the call."""
        if not self.verbose:
            return
        self._err.print(("Method: ", "bold"), method_path(method), f" ({call_kind(method)})")
        self._metadata("Request metadata to send:", metadata)

    def event(self, event: CallEvent) -> None:
        """One event of a call: verbose headers and trailers, messages, the error if any."""
        if isinstance(event, ResponseMessage):
            self.message(event.message)
        elif isinstance(event, ResponseHeaders):
            if self.verbose:
                self._metadata("Response headers received:", event.metadata)
        else:
            self.status(event)

    def status(self, status: CallStatus) -> None:
        """The end of a call: verbose trailers and timing, and the error if not OK."""
        if self.verbose:
            shown = [(k, v) for k, v in status.trailers if k != STATUS_DETAILS_KEY]
            self._metadata("Response trailers received:", shown)
            self._err.print(
                ("Status: ", "bold"),
                (status.code.name, "green" if status.ok else "red"),
                f" after {status.elapsed * 1000:.1f} ms; sent "
                f"{_plural(status.requests_sent, 'request')}, received "
                f"{_plural(status.responses_received, 'response')}",
            )
        if not status.ok:
            self.rpc_error(status.code, status.details, status.trailers)


def _shown(key: str, value: MetadataValue) -> str:
    if key == "authorization":  # a credential: say what kind, never print it
        scheme = format_value(value).split(" ", 1)[0]
        return f"{scheme} (redacted)"
    text = format_value(value)
    return f"{text} (base64)" if isinstance(value, bytes) and not key.endswith("-bin") else text
