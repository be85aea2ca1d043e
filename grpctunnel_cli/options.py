"""The options more than one command takes, declared once: name, help, metavar and panel.

Options that go together are fields of a dataclass a command takes as one parameter:
`ConnectionOptions` and `SecurityOptions` (call, list, describe, tunnels; expose takes
the second), `RelayOptions` and `MetricsOptions` (serve, expose), `SchemaOptions` (call,
list, describe, expose). Typer cannot read a dataclass parameter, so
`option_groups` shows it the fields as options and hands the command the dataclass.
Shared options that stand alone are ``Annotated`` aliases (``--connect-timeout``,
``--host``, ``--port``, ``--log-format``); `verbose_option` is shared, but each command writes its help,
since ``-v`` shows something different in each. An option of one command only is
declared with its command.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import descriptor_pb2

from grpctunnel import keepalive
from grpctunnel.defaults import DEFAULT_ESTABLISHMENT_TIMEOUT, DEFAULT_MAX_MESSAGE_LENGTH
from grpctunnel.gateway.schema_files import SchemaError, load_schema
from grpctunnel_cli.connect import DEFAULT_SERVER, SERVER_ENV
from grpctunnel_cli.errors import CliError
from grpctunnel_cli.security import TOKEN_ENV, ClientSecurity, client_security

__all__ = [
    "CONNECTION",
    "DEFAULT_CONNECT_TIMEOUT",
    "KEEPALIVE",
    "LIMITS",
    "LISTENING",
    "OUTPUT",
    "SCHEMA",
    "SECURITY",
    "ConnectTimeoutOption",
    "ConnectionOptions",
    "HostOption",
    "LogFormat",
    "LogFormatOption",
    "MetricsOptions",
    "PortOption",
    "RelayOptions",
    "SchemaOptions",
    "SecurityOptions",
    "option_groups",
    "switch",
    "verbose_option",
]

MIB = 1024 * 1024
DEFAULT_CONNECT_TIMEOUT = 10.0

# The help panels options are grouped in.
CONNECTION = "Connection"
LISTENING = "Listening"
SECURITY = "Security"
LIMITS = "Limits"
KEEPALIVE = "Keepalive"
OUTPUT = "Output"
OBSERVING = "Observing"
SCHEMA = "Schema"


def switch(*names: str, help: str, panel: str) -> Any:
    """An on/off option: listed without a value type, since it takes none."""
    return typer.Option(*names, help=help, metavar="", rich_help_panel=panel)


def verbose_option(help: str) -> Any:
    """``--verbose``/``-v``, with what it shows in this command."""
    return switch("--verbose", "-v", help=help, panel=OUTPUT)


def _check_timeout(value: float | None, option: str) -> None:
    """Reject a non-positive timeout as a usage error (exit 2)."""
    if value is not None and not value > 0:
        raise typer.BadParameter("must be a positive number of seconds", param_hint=option)


ConnectTimeoutOption = Annotated[
    float,
    typer.Option(
        "--connect-timeout",
        metavar="SECONDS",
        help="Give up when no connection is made within this time.",
        rich_help_panel=CONNECTION,
    ),
]
HostOption = Annotated[
    str,
    typer.Option(
        "--host", metavar="ADDRESS", help="Address to listen on.", rich_help_panel=LISTENING
    ),
]
PortOption = Annotated[
    int,
    typer.Option(
        "--port",
        "-p",
        min=0,
        max=65535,
        metavar="PORT",
        help="Port to listen on; 0 picks a free one.",
        rich_help_panel=LISTENING,
    ),
]


class LogFormat(str, enum.Enum):
    """How a long-running command writes its log lines (see logs.py)."""

    plain = "plain"
    json = "json"


LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        metavar="plain|json",
        help="Log lines as text (colored on a terminal), or one JSON object per line.",
        rich_help_panel=OBSERVING,
    ),
]


@dataclass(frozen=True)
class ConnectionOptions:
    """Where a client command connects, and what its requests carry besides the token.
    Non-positive timeouts are usage errors (exit 2)."""

    server: Annotated[
        str,
        typer.Option(
            "--server",
            "-s",
            envvar=SERVER_ENV,
            show_envvar=True,
            metavar="HOST:PORT",
            help="Server to connect to: HOST:PORT, unix:///PATH (a Unix socket), or "
            "http://, grpc:// (plaintext), https://, grpcs:// (TLS) then HOST:PORT.",
            rich_help_panel=CONNECTION,
        ),
    ] = DEFAULT_SERVER
    headers: Annotated[
        list[str] | None,
        typer.Option(
            "--header",
            "-H",
            metavar="'KEY: VALUE'",
            help="Request metadata, repeatable; base64 values for keys ending in -bin. "
            "Sent with reflection requests too.",
            rich_help_panel=CONNECTION,
        ),
    ] = None
    rpc_headers: Annotated[
        list[str] | None,
        typer.Option(
            "--rpc-header",
            metavar="'KEY: VALUE'",
            help="Like -H, but sent with the call only, not with reflection requests.",
            rich_help_panel=CONNECTION,
        ),
    ] = None
    reflect_headers: Annotated[
        list[str] | None,
        typer.Option(
            "--reflect-header",
            metavar="'KEY: VALUE'",
            help="Like -H, but sent with reflection requests only, not with the call.",
            rich_help_panel=CONNECTION,
        ),
    ] = None
    authority: Annotated[
        str | None,
        typer.Option(
            "--authority",
            metavar="NAME",
            help="The :authority of every request (default: the server's address).",
            rich_help_panel=CONNECTION,
        ),
    ] = None
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            metavar="SECONDS",
            help="Deadline of the whole command: connecting, reflection and the call "
            "(exit 68, DEADLINE_EXCEEDED, when it passes).",
            rich_help_panel=CONNECTION,
        ),
    ] = None
    connect_timeout: ConnectTimeoutOption = DEFAULT_CONNECT_TIMEOUT
    max_msg_mib: Annotated[
        float,
        typer.Option(
            "--max-msg-mib",
            metavar="MIB",
            help="Largest message the command accepts from the server, in MiB.",
            rich_help_panel=LIMITS,
        ),
    ] = DEFAULT_MAX_MESSAGE_LENGTH // MIB

    def __post_init__(self) -> None:
        _check_timeout(self.timeout, "--timeout")
        _check_timeout(self.connect_timeout, "--connect-timeout")
        if not self.max_msg_mib > 0:
            raise typer.BadParameter("must be a positive number of MiB", param_hint="--max-msg-mib")
        if self.authority is not None and not self.authority.strip():
            raise typer.BadParameter("must not be empty", param_hint="--authority")

    @property
    def max_message_length(self) -> int:
        """--max-msg-mib in bytes."""
        return int(self.max_msg_mib * MIB)

    def channel_options(self) -> list[tuple[str, object]]:
        """The grpc channel options these options ask for."""
        options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", self.max_message_length)
        ]
        if self.authority is not None:
            options.append(("grpc.default_authority", self.authority.strip()))
        return options


@dataclass(frozen=True)
class SecurityOptions:
    """A client command's TLS and token options, as given."""

    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            help=f"Bearer token to send as 'authorization: Bearer ...' (default: ${TOKEN_ENV}).",
            rich_help_panel=SECURITY,
        ),
    ] = None
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            metavar="FILE",
            help="Read the bearer token from this file.",
            rich_help_panel=SECURITY,
        ),
    ] = None
    tls: Annotated[
        bool,
        switch("--tls", help="Connect with TLS (implied by --ca-cert or --cert).", panel=SECURITY),
    ] = False
    ca_cert: Annotated[
        Path | None,
        typer.Option(
            "--ca-cert",
            metavar="FILE",
            help="CA certificate (PEM) to verify the server with; default: the system's.",
            rich_help_panel=SECURITY,
        ),
    ] = None
    cert: Annotated[
        Path | None,
        typer.Option(
            "--cert",
            metavar="FILE",
            help="Client certificate (PEM), for servers requiring one.",
            rich_help_panel=SECURITY,
        ),
    ] = None
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            metavar="FILE",
            help="Private key (PEM) of --cert.",
            rich_help_panel=SECURITY,
        ),
    ] = None
    servername: Annotated[
        str | None,
        typer.Option(
            "--servername",
            metavar="NAME",
            help="The name the server's certificate must hold, when not the host's "
            "(and the TLS server name sent).",
            rich_help_panel=SECURITY,
        ),
    ] = None
    insecure: Annotated[
        bool,
        switch(
            "--insecure",
            help="TLS without verifying the server's certificate (implies --tls; never "
            "in production).",
            panel=SECURITY,
        ),
    ] = False

    def read(self) -> ClientSecurity:
        """The files read and the options checked (a CliError if they cannot be)."""
        return client_security(
            token=self.token,
            token_file=self.token_file,
            tls=self.tls,
            ca_cert=self.ca_cert,
            cert=self.cert,
            key=self.key,
            server_name=self.servername,
            insecure=self.insecure,
        )


@dataclass(frozen=True)
class SchemaOptions:
    """Schema files that stand in for the server's reflection (grpcurl's -proto,
    -import-path, -protoset). Given, they are the only schema: a name they do not define
    is not asked of the server."""

    proto: Annotated[
        list[Path] | None,
        typer.Option(
            "--proto",
            metavar="FILE",
            help="A .proto file to take the schema from instead of reflection (repeatable); "
            "compiled in process, cached.",
            rich_help_panel=SCHEMA,
        ),
    ] = None
    import_path: Annotated[
        list[Path] | None,
        typer.Option(
            "--import-path",
            "-I",
            metavar="DIR",
            help="Where --proto files and their imports are found (repeatable; default: "
            "each file's directory). google/protobuf/*.proto need none.",
            rich_help_panel=SCHEMA,
        ),
    ] = None
    protoset: Annotated[
        list[Path] | None,
        typer.Option(
            "--protoset",
            metavar="FILE",
            help="A FileDescriptorSet (protoc --descriptor_set_out --include_imports) to "
            "take the schema from instead of reflection (repeatable).",
            rich_help_panel=SCHEMA,
        ),
    ] = None

    @property
    def given(self) -> bool:
        """Whether any schema file was given."""
        return bool(self.proto or self.protoset or self.import_path)

    def load(self) -> descriptor_pb2.FileDescriptorSet | None:
        """The files' descriptors (None when none were given); a CliError if they cannot
        be read or compiled."""
        try:
            return load_schema(self.proto or (), self.import_path or (), self.protoset or ())
        except SchemaError as error:
            raise CliError(str(error)) from None


@dataclass(frozen=True)
class MetricsOptions:
    """Where a long-running command (serve, expose) serves its Prometheus metrics."""

    port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            metavar="PORT",
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port; "
            "default: none).",
            rich_help_panel=OBSERVING,
        ),
    ] = None
    host: Annotated[
        str,
        typer.Option(
            "--metrics-host",
            metavar="ADDRESS",
            help="Address the metrics listen on.",
            rich_help_panel=OBSERVING,
        ),
    ] = "127.0.0.1"

    def prepare(self) -> None:
        """With metrics asked for, leaves out the ``*_created`` series prometheus_client
        adds to every counter by default (twice the series, for nothing a dashboard
        uses); this process serves no other metrics."""
        if self.port is not None:
            from prometheus_client import disable_created_metrics

            disable_created_metrics()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class RelayOptions:
    """How a relaying command (serve, expose) bounds messages and keeps connections up."""

    max_message_mib: Annotated[
        int,
        typer.Option(
            "--max-message-mib",
            min=1,
            metavar="MIB",
            help="Largest message relayed, in MiB.",
            rich_help_panel=LIMITS,
        ),
    ] = DEFAULT_MAX_MESSAGE_LENGTH // MIB
    keepalive_interval: Annotated[
        float,
        typer.Option(
            "--keepalive-interval",
            min=0.1,
            metavar="SECONDS",
            help="Time between keepalive pings on each connection.",
            rich_help_panel=KEEPALIVE,
        ),
    ] = keepalive.DEFAULT_INTERVAL
    keepalive_timeout: Annotated[
        float,
        typer.Option(
            "--keepalive-timeout",
            min=0.1,
            metavar="SECONDS",
            help="Time without a ping answer before a connection is dropped, with its tunnels.",
            rich_help_panel=KEEPALIVE,
        ),
    ] = keepalive.DEFAULT_TIMEOUT
    establishment_timeout: Annotated[
        float,
        typer.Option(
            "--establishment-timeout",
            min=0.1,
            metavar="SECONDS",
            help="Time a tunnel may take to open (the peer's settings) before it is dropped.",
            rich_help_panel=KEEPALIVE,
        ),
    ] = DEFAULT_ESTABLISHMENT_TIMEOUT

    @property
    def max_message_length(self) -> int:
        """--max-message-mib in bytes."""
        return self.max_message_mib * MIB


_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def option_groups(command: Callable[..., None]) -> Callable[..., None]:
    """The command as Typer should see it: each parameter annotated with an option group
    (a dataclass above) stands for the group's fields, as options in its place; the
    command is called with the group built from them."""
    hints = typing.get_type_hints(command, include_extras=True)
    groups: dict[str, type[Any]] = {}
    shown: list[inspect.Parameter] = []
    for parameter in inspect.signature(command).parameters.values():
        annotation = hints[parameter.name]
        if not (isinstance(annotation, type) and dataclasses.is_dataclass(annotation)):
            shown.append(parameter.replace(kind=_KEYWORD, annotation=annotation))
            continue
        groups[parameter.name] = annotation
        fields = typing.get_type_hints(annotation, include_extras=True)
        shown.extend(
            inspect.Parameter(
                f"{parameter.name}__{field.name}",
                _KEYWORD,
                default=field.default,
                annotation=fields[field.name],
            )
            for field in dataclasses.fields(annotation)
        )

    @functools.wraps(command)
    def grouped(**given: Any) -> None:
        for name, group in groups.items():
            prefix = f"{name}__"
            values = {key: given.pop(key) for key in list(given) if key.startswith(prefix)}
            given[name] = group(**{key.removeprefix(prefix): v for key, v in values.items()})
        command(**given)

    grouped.__signature__ = inspect.Signature(shown)  # type: ignore[attr-defined]
    grouped.__annotations__ = {parameter.name: parameter.annotation for parameter in shown}
    return grouped
