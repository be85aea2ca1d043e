"""Where call, list and describe take their descriptors from when schema files are given,
and writing the descriptors a command used (``--protoset-out``).

`file_source` compiles or reads the ``--proto`` / ``--protoset`` files (off the event
loop: protoc runs as a child process) into a `DescriptorSource` that answers from them
alone; None when none were given, and the server's reflection answers instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor

from grpctunnel_cli.errors import CliError
from grpctunnel_cli.options import SCHEMA, SchemaOptions
from grpctunnel_cli.reflection import DescriptorSource, FileSchema, Symbol

__all__ = ["ProtosetOutOption", "file_of", "file_source", "write_protoset"]

ProtosetOutOption = Annotated[
    Path | None,
    typer.Option(
        "--protoset-out",
        metavar="FILE",
        help="Write the descriptors used (a FileDescriptorSet, with every import), from "
        "the files or from reflection; usable as --protoset later.",
        rich_help_panel=SCHEMA,
    ),
]


async def file_source(options: SchemaOptions) -> DescriptorSource | None:
    """A source answering from the given schema files only; None without any."""
    if not options.given:
        return None
    files = await asyncio.to_thread(options.load)
    if files is None:
        return None
    return DescriptorSource(schema=FileSchema(files))


def file_of(symbol: Symbol) -> FileDescriptor:
    """The file that defines ``symbol``."""
    if isinstance(symbol, MethodDescriptor):
        found: Any = symbol.containing_service.file
    else:
        found = symbol.file
    file: FileDescriptor = found
    return file


def write_protoset(
    path: Path | None, source: DescriptorSource, files: Iterable[FileDescriptor]
) -> None:
    """Write ``files`` and their imports as a FileDescriptorSet to ``path`` (if given)."""
    if path is None:
        return
    try:
        path.write_bytes(source.file_set(files).SerializeToString())
    except OSError as error:
        raise CliError(f"cannot write --protoset-out {path}: {error.strerror or error}") from None
