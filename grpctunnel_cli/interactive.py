"""Requests typed at a terminal: `call METHOD @-` with stdin a terminal.

Each JSON value is sent the moment the line that completes it is entered (stdin is read on
a thread, so the event loop keeps printing responses as they arrive), and Ctrl-D ends the
stream of requests. A line that is not valid JSON, or a value that is not a valid request
message, is reported on stderr and not sent; the call goes on and the user types it again,
where piped input would end the command. A line on stderr says, first, what is expected.

Piped or redirected stdin is not interactive: it is read as before (invoke.json_values).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from typing import TextIO

from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message

from grpctunnel_cli.errors import InputError
from grpctunnel_cli.invoke import JsonValueSplitter, _lines, method_path, parse_message

__all__ = ["NOT_SENT", "hint", "is_interactive", "typed_requests"]

NOT_SENT = "(not sent; type it again)"


def is_interactive(data: str | None, stdin: TextIO | None = None) -> bool:
    """Whether DATA is ``@-`` and stdin a terminal."""
    if data != "@-":
        return False
    stream = stdin if stdin is not None else sys.stdin
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def hint(method: MethodDescriptor) -> str:
    """What the terminal is expected to give, said once before reading it."""
    if method.client_streaming:
        return (
            f"Reading requests for {method_path(method)} from the terminal: each JSON value "
            "is sent as you enter it; Ctrl-D ends the requests."
        )
    return (
        f"Reading the request for {method_path(method)} from the terminal as JSON; Ctrl-D sends it."
    )


async def typed_requests(
    method: MethodDescriptor,
    pool: DescriptorPool | None,
    report: Callable[[str], None],
    *,
    stdin: TextIO | None = None,
    allow_unknown: bool = False,
) -> AsyncIterator[Message]:
    """Request messages as they are typed; bad ones reported with `report` and skipped."""
    splitter = JsonValueSplitter("stdin")
    sent = 0

    def converted(values: list[object]) -> list[Message]:
        nonlocal sent
        messages: list[Message] = []
        for value in values:
            try:
                messages.append(
                    parse_message(
                        value,
                        method.input_type,
                        pool=pool,
                        where=f"request {sent + 1}",
                        allow_unknown=allow_unknown,
                    )
                )
            except InputError as error:
                report(f"{error.message} {NOT_SENT}")
                continue
            sent += 1
        return messages

    async for line in _lines(stdin if stdin is not None else sys.stdin):
        try:
            values = splitter.feed(line)
        except InputError as error:
            report(f"{error.message} {NOT_SENT}")
            continue
        for message in converted(values):
            yield message
    try:
        rest = splitter.finish()
    except InputError as error:
        report(f"{error.message} {NOT_SENT}")
        return
    for message in converted(rest):
        yield message
