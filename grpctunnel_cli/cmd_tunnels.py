"""The `tunnels` command: who is connected to a `grpctunnel serve`, by its admin service
(grpctunnel.admin.v1.Admin, see grpctunnel/gateway/admin.py).

On a terminal it shows a table, kept live with --watch as tunnels open and close (and
their counters move); otherwise, or with --json, one JSON object per tunnel per line,
and with --watch one per event (``listed`` for each tunnel open when the watch began,
then ``opened`` / ``closed``). ``--close NAME`` drains and closes the tunnels of a name
(on every node of a cluster).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import sys
import time
from collections.abc import Iterable
from typing import Annotated, Any

import grpc
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from grpctunnel.admin.v1 import admin_pb2, admin_pb2_grpc
from grpctunnel_cli.command import on_stop_signal, run
from grpctunnel_cli.connect import connected_channel, server_target
from grpctunnel_cli.errors import StatusError
from grpctunnel_cli.metadata import parse_headers
from grpctunnel_cli.options import (
    OUTPUT,
    ConnectionOptions,
    SecurityOptions,
    option_groups,
    switch,
)
from grpctunnel_cli.render import Renderer

__all__ = ["tunnel_json", "tunnels"]

REFRESH_SECONDS = 2.0  # how often a live table asks for fresh counters

_DIRECTIONS = {
    admin_pb2.DIRECTION_FORWARD: "forward",
    admin_pb2.DIRECTION_REVERSE: "reverse",
}


@option_groups
def tunnels(
    *,
    connection: ConnectionOptions,
    security: SecurityOptions,
    watch: Annotated[
        bool,
        switch(
            "--watch",
            "-w",
            help="Keep watching: the table stays live as tunnels open and close (piped: "
            "one JSON line per event). Ctrl-C to stop.",
            panel=OUTPUT,
        ),
    ] = False,
    as_json: Annotated[
        bool,
        switch(
            "--json",
            help="One JSON object per line, as when stdout is not a terminal.",
            panel=OUTPUT,
        ),
    ] = False,
    close: Annotated[
        str | None,
        typer.Option(
            "--close",
            metavar="NAME",
            help="Close the reverse tunnels named NAME (on every node of a cluster): "
            "no new call goes to them, calls in flight get --grace to finish.",
        ),
    ] = None,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0.0,
            metavar="SECONDS",
            help="With --close: how long calls in flight may take (0: the server's "
            "default, 10 s; at most 300).",
        ),
    ] = 0.0,
) -> None:
    """List the tunnels open at a server: who is connected.

    Shows each tunnel's name, direction, services, peer, node, age, calls in flight and
    done, errors and bytes relayed, from the server's admin service. When the server
    requires tokens, the token needs the admin right ("admin": true in the token file;
    the one --token of a server has every right).
    """
    renderer = Renderer()
    stdout = Console(highlight=False)
    json_lines = as_json or not stdout.is_terminal

    async def body() -> int:
        secure = security.read()
        target, wants_tls = server_target(connection.server)
        if wants_tls:
            secure = dataclasses.replace(secure, tls=True)
        headers = (*(connection.headers or ()), *(connection.rpc_headers or ()))
        metadata = (*parse_headers(headers), *secure.metadata())
        async with connected_channel(
            target,
            connect_timeout=connection.connect_timeout,
            security=secure,
            options=connection.channel_options(),
        ) as channel:
            stub: Any = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
            try:
                if close is not None:
                    closed = await stub.CloseTunnel(
                        admin_pb2.CloseTunnelRequest(name=close, grace_seconds=grace),
                        metadata=metadata,
                        timeout=connection.timeout,
                    )
                    plural = "" if closed.closed == 1 else "s"
                    print(f"closed {closed.closed} tunnel{plural} named {close}", flush=True)
                    return 0
                if not watch:
                    response = await stub.ListTunnels(
                        admin_pb2.ListTunnelsRequest(),
                        metadata=metadata,
                        timeout=connection.timeout,
                    )
                    if json_lines:
                        _json_lines(tunnel_json(t) for t in response.tunnels)
                    else:
                        stdout.print(_table(response.tunnels))
                    return 0
                refresh = 0.0 if json_lines else REFRESH_SECONDS
                call = stub.WatchTunnels(
                    admin_pb2.WatchTunnelsRequest(refresh_seconds=refresh),
                    metadata=metadata,
                    timeout=connection.timeout,
                )
                with on_stop_signal(call.cancel):
                    try:
                        if json_lines:
                            await _watch_lines(call)
                        else:
                            await _watch_table(call, stdout, connection.server)
                    except asyncio.CancelledError:
                        if not call.cancelled():
                            raise
                        return 0  # Ctrl-C
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.CANCELLED and watch:
                    return 0  # Ctrl-C
                raise _status_error(error, secure.token_hint()) from None
        return 0

    run(body, renderer)


def _status_error(error: grpc.aio.AioRpcError, token_hint: str) -> StatusError:
    code, details = error.code(), error.details() or ""
    hint = ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        hint = token_hint
    elif code == grpc.StatusCode.PERMISSION_DENIED:
        hint = 'the token needs the admin right ("admin": true in the server\'s token file)'
    elif code == grpc.StatusCode.UNIMPLEMENTED:
        hint = "the server offers no admin service (is it a grpctunnel serve of this version?)"
    return StatusError(code, details, hint)


# -- JSON -------------------------------------------------------------------------------


def tunnel_json(tunnel: admin_pb2.Tunnel) -> dict[str, Any]:
    """A tunnel as one JSON object."""
    opened = tunnel.opened_at.ToDatetime(tzinfo=datetime.timezone.utc)
    return {
        "id": tunnel.id,
        "name": tunnel.name,
        "direction": _DIRECTIONS.get(tunnel.direction, "unknown"),
        "services": list(tunnel.services),
        "peer": tunnel.peer,
        "node": tunnel.node,
        "opened_at": opened.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "calls_in_flight": tunnel.calls_in_flight,
        "calls_done": tunnel.calls_done,
        "errors": tunnel.errors,
        "request_bytes": tunnel.request_bytes,
        "response_bytes": tunnel.response_bytes,
        "draining": tunnel.draining,
    }


def _json_lines(objects: Iterable[dict[str, Any]]) -> None:
    for obj in objects:
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


async def _watch_lines(call: Any) -> None:
    """One JSON line per event: each tunnel of the first snapshot ("listed"), then each
    open and close."""
    first = True
    async for event in call:
        kind = event.WhichOneof("event")
        if kind == "snapshot" and first:
            _json_lines({"event": "listed", **tunnel_json(t)} for t in event.snapshot.tunnels)
            first = False
        elif kind == "opened":
            _json_lines([{"event": "opened", **tunnel_json(event.opened)}])
        elif kind == "closed":
            closed = {"event": "closed", **tunnel_json(event.closed.tunnel)}
            closed["reason"] = event.closed.reason
            _json_lines([closed])


# -- the table --------------------------------------------------------------------------


def _age(tunnel: admin_pb2.Tunnel, now: float) -> str:
    seconds = max(0, int(now - tunnel.opened_at.ToNanoseconds() / 1e9))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{count}B"  # pragma: no cover


def _table(tunnels: Iterable[admin_pb2.Tunnel], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", box=None, padding=(0, 1), header_style="bold")
    table.add_column("NAME", overflow="fold")
    table.add_column("DIR")
    table.add_column("SERVICES", overflow="fold")
    table.add_column("PEER", overflow="fold")
    table.add_column("NODE", overflow="fold")
    table.add_column("AGE", justify="right")
    table.add_column("CALLS", justify="right")
    table.add_column("ERR", justify="right")
    table.add_column("IN/OUT", justify="right")
    now = time.time()
    for t in tunnels:
        direction = _DIRECTIONS.get(t.direction, "?")
        name = t.name or "-"
        if t.draining:
            name += " (closing)"
        table.add_row(
            name,
            "rev" if direction == "reverse" else "fwd",
            ", ".join(t.services) or "-",
            t.peer.removeprefix("ipv4:"),
            t.node or "-",
            _age(t, now),
            f"{t.calls_in_flight}/{t.calls_done}",
            Text(str(t.errors), style="red" if t.errors else ""),
            f"{_size(t.request_bytes)}/{_size(t.response_bytes)}",
        )
    return table


async def _watch_table(call: Any, console: Console, server: str) -> None:
    """A live table: replaced on each snapshot, updated on each open and close."""
    open_now: dict[int, admin_pb2.Tunnel] = {}
    last = Text("watching; Ctrl-C to stop", style="dim")

    def view() -> Group:
        title = f"{len(open_now)} tunnels open at {server}"
        return Group(_table(sorted(open_now.values(), key=lambda t: t.id), title), last)

    with Live(view(), console=console, auto_refresh=False) as live:
        async for event in call:
            kind = event.WhichOneof("event")
            if kind == "snapshot":
                open_now = {t.id: t for t in event.snapshot.tunnels}
            elif kind == "opened":
                open_now[event.opened.id] = event.opened
                last = Text(f"opened: {event.opened.name or 'forward tunnel'}", style="green")
            elif kind == "closed":
                gone = event.closed.tunnel
                open_now.pop(gone.id, None)
                last = Text(
                    f"closed: {gone.name or 'forward tunnel'} ({event.closed.reason})",
                    style="yellow",
                )
            live.update(view(), refresh=True)
