"""Unit tests of the CLI library pieces that need no server: names, JSON input, headers, output."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import signal
from collections.abc import Callable, Generator

import grpc
import pytest
import typer
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2

from grpctunnel_cli.command import on_stop_signal, until_signalled
from grpctunnel_cli.errors import InputError, ResolutionError
from grpctunnel_cli.invoke import JsonValueSplitter, parse_message, status_exit_code
from grpctunnel_cli.metadata import parse_header, parse_headers
from grpctunnel_cli.options import ConnectionOptions, RelayOptions, option_groups
from grpctunnel_cli.reflection import match_names, pick_name, split_method_name
from grpctunnel_cli.render import describe_text, message_to_json, status_details
from grpctunnel_cli.rpc_status import FirstStatus, error_status

from .helpers import other_service

SERVICES = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpctunnel.demo.v1.Echo",
    "other.v1.Echo",
]


# --- method and service names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("grpctunnel.demo.v1.Echo/Echo", ("grpctunnel.demo.v1.Echo", "Echo")),
        ("grpctunnel.demo.v1.Echo.Echo", ("grpctunnel.demo.v1.Echo", "Echo")),
        (".grpctunnel.demo.v1.Echo/Expand", ("grpctunnel.demo.v1.Echo", "Expand")),
        ("Echo/Echo", ("Echo", "Echo")),
        ("Echo.Chat", ("Echo", "Chat")),
        (" v1.Echo/Collect ", ("v1.Echo", "Collect")),
    ],
)
def test_split_method_name(spec: str, expected: tuple[str, str]) -> None:
    assert split_method_name(spec) == expected


@pytest.mark.parametrize("spec", ["Echo", "", "/Echo", "Echo/", "a/b/c", "."])
def test_split_method_name_rejects(spec: str) -> None:
    with pytest.raises(ResolutionError, match="SERVICE/METHOD"):
        split_method_name(spec)


def test_match_names_exact_wins_over_suffix() -> None:
    names = ["a.Echo", "Echo", "b.Echo"]
    assert match_names("Echo", names) == ["Echo"]


def test_match_names_suffix_at_dot_boundary_only() -> None:
    assert match_names("Echo", SERVICES) == ["grpctunnel.demo.v1.Echo", "other.v1.Echo"]
    assert match_names("demo.v1.Echo", SERVICES) == ["grpctunnel.demo.v1.Echo"]
    assert match_names("cho", SERVICES) == []  # not at a dot boundary
    assert match_names("1.Echo", SERVICES) == []
    assert match_names("Health", SERVICES) == ["grpc.health.v1.Health"]
    assert match_names(".grpc.health.v1.Health", SERVICES) == ["grpc.health.v1.Health"]
    assert match_names("", SERVICES) == []


def test_pick_name_unique() -> None:
    assert pick_name("service", "Health", SERVICES) == "grpc.health.v1.Health"
    assert pick_name("service", "other.v1.Echo", SERVICES) == "other.v1.Echo"


def test_pick_name_ambiguous_lists_candidates() -> None:
    with pytest.raises(ResolutionError) as caught:
        pick_name("service", "Echo", SERVICES)
    assert caught.value.candidates == ("grpctunnel.demo.v1.Echo", "other.v1.Echo")
    message = str(caught.value)
    assert "ambiguous service 'Echo'" in message
    assert "grpctunnel.demo.v1.Echo" in message and "other.v1.Echo" in message
    assert "full name" in message


def test_pick_name_ambiguous_reflection() -> None:
    with pytest.raises(ResolutionError, match="ambiguous") as caught:
        pick_name("service", "ServerReflection", SERVICES)
    assert len(caught.value.candidates) == 2


def test_pick_name_unknown_lists_available() -> None:
    with pytest.raises(ResolutionError) as caught:
        pick_name("service", "Nope", SERVICES)
    assert "unknown service 'Nope'" in str(caught.value)
    assert caught.value.candidates == tuple(sorted(SERVICES))


def test_pick_name_with_nothing_to_pick_from() -> None:
    with pytest.raises(ResolutionError, match="lists no services"):
        pick_name("service", "Echo", [])


# --- JSON request data ----------------------------------------------------------------------


def test_splitter_one_value_per_line() -> None:
    splitter = JsonValueSplitter()
    assert splitter.feed('{"msg": "a"}\n') == [{"msg": "a"}]
    assert splitter.feed('{"msg": "b"}\n') == [{"msg": "b"}]
    assert splitter.finish() == []


def test_splitter_concatenated_values() -> None:
    splitter = JsonValueSplitter()
    assert splitter.feed('{"a":1}{"b":2} {"c":3}\n') == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_splitter_value_spanning_lines_waits_for_the_end() -> None:
    splitter = JsonValueSplitter()
    assert splitter.feed("{\n") == []
    assert splitter.feed('  "msg": "a",\n') == []
    assert splitter.feed('  "list": [1,\n') == []
    assert splitter.feed("2]}\n") == [{"msg": "a", "list": [1, 2]}]


def test_splitter_brackets_and_quotes_inside_strings() -> None:
    splitter = JsonValueSplitter()
    text = '{"msg": "a } ] { [ \\" still a string"}\n'
    assert splitter.feed(text) == [{"msg": 'a } ] { [ " still a string'}]


def test_splitter_scalars_and_whole_text() -> None:
    splitter = JsonValueSplitter()
    assert splitter.feed('"2024-01-01T00:00:00Z"\n12 true\n') == [
        "2024-01-01T00:00:00Z",
        12,
        True,
    ]
    assert JsonValueSplitter().feed("   \n\n") == []


def test_splitter_reports_line_and_column() -> None:
    splitter = JsonValueSplitter("data.json")
    assert splitter.feed('{"msg": "a"}\n') == [{"msg": "a"}]
    with pytest.raises(InputError, match=r"invalid JSON in data.json at line 2, column 9"):
        splitter.feed('{"msg": nope}\n')


def test_splitter_incomplete_value_at_end() -> None:
    splitter = JsonValueSplitter()
    assert splitter.feed('{"msg": "a"') == []
    with pytest.raises(InputError, match="invalid JSON"):
        splitter.finish()


def test_splitter_stray_closing_bracket() -> None:
    with pytest.raises(InputError, match="invalid JSON"):
        JsonValueSplitter().feed("}\n")


def test_parse_message_unknown_field_is_an_input_error() -> None:
    from grpctunnel_demo.v1 import echo_pb2

    message = parse_message({"msg": "x"}, echo_pb2.EchoRequest.DESCRIPTOR)
    assert message == echo_pb2.EchoRequest(msg="x")
    with pytest.raises(InputError, match=r"^request 3: unknown field 'nope' in grpctunnel"):
        parse_message({"nope": 1}, echo_pb2.EchoRequest.DESCRIPTOR, where="request 3")
    with pytest.raises(InputError, match=r"^request: field count: expected a 32-bit integer"):
        parse_message({"count": "many"}, echo_pb2.ExpandRequest.DESCRIPTOR)
    with pytest.raises(InputError, match="expected a JSON object"):
        parse_message([1, 2], echo_pb2.EchoRequest.DESCRIPTOR)


# --- headers ----------------------------------------------------------------------------------


def test_parse_header() -> None:
    assert parse_header("Echo-Trace: abc def ") == ("echo-trace", "abc def")
    assert parse_header("x:y:z") == ("x", "y:z")
    assert parse_header("empty:") == ("empty", "")
    raw = b"\x00\xffbin"
    assert parse_header(f"echo-bin: {base64.b64encode(raw).decode()}") == ("echo-bin", raw)
    assert parse_header("echo-bin: AP8") == ("echo-bin", b"\x00\xff")  # padding optional
    assert parse_headers(["a: 1", "a: 2"]) == (("a", "1"), ("a", "2"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no colon", "expected 'key: value'"),
        (": value", "expected 'key: value'"),
        ("bad key: v", "invalid header name"),
        ("grpc-timeout: 1S", "reserved"),
        ("x-bin: !!!", "base64"),
        ("x: caf\u00e9", "printable ASCII"),
    ],
)
def test_parse_header_rejects(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_header(text)


# --- outcomes and output ------------------------------------------------------------------------


def test_status_exit_code() -> None:
    assert status_exit_code(grpc.StatusCode.OK) == 0
    assert status_exit_code(grpc.StatusCode.CANCELLED) == 65
    assert status_exit_code(grpc.StatusCode.NOT_FOUND) == 69
    assert status_exit_code(grpc.StatusCode.UNAUTHENTICATED) == 64 + 16


def test_message_to_json_is_compact_by_default() -> None:
    value = struct_pb2.Struct()
    value.update({"a": 1, "b": "é"})
    text = message_to_json(value)
    assert json.loads(text) == {"a": 1.0, "b": "é"}
    assert " " not in text and "é" in text
    assert "\n" in message_to_json(value, indent=2)


def test_status_details_decodes_known_and_unknown_types() -> None:
    status = status_pb2.Status(code=5, message="nope")
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="R", domain="d"))
    unknown = status.details.add()
    unknown.type_url = "type.googleapis.com/some.Unknown"
    unknown.value = b"\x01\x02"
    trailers = [("x", "1"), ("grpc-status-details-bin", status.SerializeToString())]
    assert status_details(trailers) == [
        ("google.rpc.ErrorInfo", '{"reason":"R","domain":"d"}'),
        ("some.Unknown", "(2 bytes)"),
    ]
    assert status_details([("x", "1")]) == []
    assert status_details([("grpc-status-details-bin", b"\xff\xff")])[0][1].startswith("(not")


def test_describe_text_of_every_field_shape() -> None:
    service = other_service()
    thing = service.file.pool.FindMessageTypeByName("other.v1.Thing")
    assert describe_text(thing) == "\n".join(
        [
            "message Thing {",
            "  map<string, int32> tags = 1;",
            "  oneof choice {",
            "    string name = 2;",
            "    int32 id = 3;",
            "  }",
            "  optional string note = 4;",
            "  repeated .other.v1.Thing.Kind kinds = 5;",
            "  string long_name = 6;",
            "  enum Kind {",
            "    KIND_UNSPECIFIED = 0;",
            "    BIG = 1;",
            "  }",
            "}",
        ]
    )
    assert describe_text(service) == "\n".join(
        [
            "service Echo {",
            "  rpc Echo ( .grpctunnel.demo.v1.EchoRequest ) returns"
            " ( .grpctunnel.demo.v1.EchoReply );",
            "  rpc Inspect ( .other.v1.Thing ) returns ( .other.v1.Thing );",
            "}",
        ]
    )


def test_describe_text_streaming_method_and_enum() -> None:
    from grpctunnel_demo.v1 import echo_pb2

    chat = echo_pb2.DESCRIPTOR.services_by_name["Echo"].methods_by_name["Chat"]
    assert describe_text(chat) == (
        "rpc Chat ( stream .grpctunnel.demo.v1.EchoRequest ) returns"
        " ( stream .grpctunnel.demo.v1.EchoReply );"
    )
    assert (
        describe_text(struct_pb2.NullValue.DESCRIPTOR) == "enum NullValue {\n  NULL_VALUE = 0;\n}"
    )
    assert "oneof kind {" in describe_text(struct_pb2.Value.DESCRIPTOR)


# --- reading call status ------------------------------------------------------------------------


class _FakeCall:
    """Just enough of a grpc.aio call: done callbacks and status accessors."""

    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None
        self.callbacks: list[Callable[[object], None]] = []

    def add_done_callback(self, callback: Callable[[object], None]) -> None:
        self.callbacks.append(callback)

    def finish(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        for callback in self.callbacks:
            callback(self)

    async def code(self) -> grpc.StatusCode:
        assert self.status is not None
        return self.status[0]

    async def details(self) -> str:
        assert self.status is not None
        return self.status[1]

    async def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("t", "1"),)


class _FakeError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


def test_first_status_corrects_a_spurious_internal() -> None:
    call = _FakeCall()
    first = FirstStatus(call)
    call.finish(grpc.StatusCode.ABORTED, "stop")
    call.finish(grpc.StatusCode.INTERNAL, "Internal error from Core")  # grpc's overwrite
    assert first.value == (grpc.StatusCode.ABORTED, "stop", (("t", "1"),))
    spurious = _FakeError(grpc.StatusCode.INTERNAL, "Internal error from Core")
    assert error_status(spurious, first) == (grpc.StatusCode.ABORTED, "stop", (("t", "1"),))
    other = _FakeError(grpc.StatusCode.NOT_FOUND, "x")
    assert error_status(other, first) == (grpc.StatusCode.NOT_FOUND, "x", ())
    assert error_status(spurious) == (grpc.StatusCode.INTERNAL, "Internal error from Core", ())


def test_first_status_ignores_calls_it_cannot_read() -> None:
    assert FirstStatus(object()).value is None  # no done callbacks at all

    class Pending:
        def __await__(self) -> Generator[None, None, grpc.StatusCode]:
            yield None  # suspends: the status is not there yet
            return grpc.StatusCode.OK

    class Waiting(_FakeCall):
        async def code(self) -> grpc.StatusCode:
            return await Pending()

    call = Waiting()
    first = FirstStatus(call)
    call.finish(grpc.StatusCode.ABORTED, "x")
    assert first.value is None


# --- option groups and stop signals ------------------------------------------------------------


def test_option_groups_show_fields_and_hand_back_the_group() -> None:
    seen: list[object] = []

    @option_groups
    def command(name: str, *, connection: ConnectionOptions, relay: RelayOptions) -> None:
        seen.extend((name, connection, relay))

    shown = inspect.signature(command).parameters
    assert list(shown)[:3] == ["name", "connection__server", "connection__headers"]
    assert shown["relay__max_message_mib"].default == 64
    command(
        name="n",
        connection__server="h:1",
        connection__headers=None,
        connection__timeout=2.0,
        connection__connect_timeout=3.0,
        relay__max_message_mib=1,
        relay__keepalive_interval=4.0,
        relay__keepalive_timeout=5.0,
    )
    expected = ConnectionOptions("h:1", timeout=2.0, connect_timeout=3.0)
    assert seen == ["n", expected, RelayOptions(1, 4.0, 5.0)]
    with pytest.raises(typer.BadParameter):
        ConnectionOptions(timeout=0)


async def test_stop_signals_are_caught_then_given_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    caught = asyncio.Event()
    with on_stop_signal(caught.set):
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(caught.wait(), 5)
    assert signal.getsignal(signal.SIGTERM) == before

    stopped: list[str] = []

    async def stop() -> None:
        stopped.append("stopped")

    waiting = asyncio.ensure_future(
        until_signalled(stop, ready=lambda: os.kill(os.getpid(), signal.SIGINT))
    )
    await asyncio.wait_for(waiting, 5)
    assert stopped == ["stopped"]
