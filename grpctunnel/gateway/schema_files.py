"""Schemas from files instead of reflection: .proto sources compiled, protosets read, one
`FileDescriptorSet` out.

`load_schema` takes what a user gives (``--proto``, ``--import-path``, ``--protoset``) and
returns the descriptors, every dependency included. .proto files are compiled by the
protoc that grpcio-tools ships as a Python module, run as a child process of this
interpreter (``python -m grpc_tools.protoc``) so that its diagnostics, which it writes to
file descriptor 2, can be read and turned into one line; its bundled include directory
comes last on the import path, so ``google/protobuf/*.proto`` resolve unaided. What protoc
produced is cached (``$XDG_CACHE_HOME/grpctunnel/protoc``, else ``~/.cache/...``) under a
hash of the inputs' names and contents; an entry is used only while every source file it
was built from still has the content it had, so a second run skips protoc.

Names: with import paths, a ``--proto`` is either a file under one of them (its name is
its path relative to the first that holds it) or a name found in one of them, as protoc
and grpcurl take it; with none, each file's own directory is its import path. Anything
that goes wrong is a `SchemaError` whose message is one line.

`SchemaIndex` answers questions of a set: its services, the file defining a symbol or of
a name, a file with all it imports.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError

__all__ = [
    "CACHE_ENV",
    "SchemaError",
    "SchemaIndex",
    "cache_dir",
    "compile_protos",
    "load_schema",
    "merge_sets",
    "read_protoset",
]

CACHE_ENV = "GRPCTUNNEL_CACHE_DIR"  # overrides where compiled schemas are cached
PROTOC_TIMEOUT = 60.0
_CACHE_FORMAT = 1


class SchemaError(Exception):
    """Schema files that cannot be read, compiled or used; the message is one line."""


def cache_dir() -> Path:
    """Where compiled schemas are kept: $GRPCTUNNEL_CACHE_DIR, else the XDG cache."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "grpctunnel" / "protoc"


def _bundled_include() -> Path:
    """grpcio-tools' copy of the well-known types (google/protobuf/*.proto)."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or spec.origin is None:
        raise SchemaError("compiling .proto files needs grpcio-tools: pip install grpcio-tools")
    return Path(spec.origin).parent / "_proto"


# --- reading ------------------------------------------------------------------------------


def read_protoset(path: Path) -> descriptor_pb2.FileDescriptorSet:
    """A serialized FileDescriptorSet from ``path``."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SchemaError(f"cannot read protoset {path}: {error.strerror or error}") from None
    found = descriptor_pb2.FileDescriptorSet()
    try:
        found.ParseFromString(data)
    except DecodeError:
        raise SchemaError(f"{path} is not a protoset (a serialized FileDescriptorSet)") from None
    if not found.file or any(not f.name for f in found.file):
        raise SchemaError(f"{path} is not a protoset (a serialized FileDescriptorSet)")
    return found


def merge_sets(
    sets: Iterable[descriptor_pb2.FileDescriptorSet],
) -> descriptor_pb2.FileDescriptorSet:
    """One set of the files of all, each file name once (the first one given wins)."""
    merged = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()
    for one in sets:
        for file in one.file:
            if file.name not in seen:
                seen.add(file.name)
                merged.file.append(file)
    return merged


# --- compiling ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Inputs:
    """The protoc command's files: each --proto's name under the import path, the path."""

    names: tuple[str, ...]
    import_paths: tuple[Path, ...]


def _under(path: Path, root: Path) -> str | None:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def _inputs(protos: Sequence[Path], import_paths: Sequence[Path]) -> _Inputs:
    roots = [p.resolve() for p in import_paths]
    for given, root in zip(import_paths, roots, strict=True):
        if not root.is_dir():
            raise SchemaError(f"--import-path {given} is not a directory")
    names: list[str] = []
    own_dirs: list[Path] = []
    for proto in protos:
        if proto.is_file():
            path = proto.resolve()
            name = next((n for n in (_under(path, r) for r in roots) if n is not None), None)
            if name is None:
                if roots:
                    shown = ", ".join(str(p) for p in import_paths)
                    raise SchemaError(f"--proto {proto} is in none of the import paths ({shown})")
                own_dirs.append(path.parent)
                name = path.name
            names.append(name)
        elif roots and not proto.is_absolute() and any((r / proto).is_file() for r in roots):
            names.append(proto.as_posix())
        else:
            where = (
                f" (nor under --import-path {', '.join(map(str, import_paths))})" if roots else ""
            )
            raise SchemaError(f"cannot read --proto {proto}: no such file{where}")
    return _Inputs(tuple(names), tuple(roots or dict.fromkeys(own_dirs)))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source_of(name: str, import_paths: Sequence[Path]) -> Path | None:
    """The file protoc read for ``name``: the first import path holding it."""
    for root in (*import_paths, _bundled_include()):
        candidate = root / name
        if candidate.is_file():
            return candidate
    return None


def _cache_key(inputs: _Inputs) -> str:
    parts = [f"format {_CACHE_FORMAT}", sys.version, *map(str, inputs.import_paths)]
    for name in inputs.names:
        source = _source_of(name, inputs.import_paths)
        parts.append(f"{name} {_digest(source) if source else '-'}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _cached(entry: Path, inputs: _Inputs) -> descriptor_pb2.FileDescriptorSet | None:
    """The cached set, if every source it was built from still reads the same."""
    try:
        manifest = json.loads((entry / "sources.json").read_text())
        for name, digest in manifest.items():
            source = _source_of(name, inputs.import_paths)
            if source is None or _digest(source) != digest:
                return None
        return descriptor_pb2.FileDescriptorSet.FromString((entry / "set.pb").read_bytes())
    except (OSError, ValueError, DecodeError, AttributeError):
        return None


def _store(entry: Path, inputs: _Inputs, found: descriptor_pb2.FileDescriptorSet) -> None:
    """Keep the set and the digest of each file it came from; a cache that cannot be
    written is skipped (the next run compiles again)."""
    manifest = {}
    for file in found.file:
        source = _source_of(file.name, inputs.import_paths)
        if source is not None:
            manifest[file.name] = _digest(source)
    try:
        entry.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=entry, delete=False) as out:
            out.write(found.SerializeToString())
        os.replace(out.name, entry / "set.pb")
        (entry / "sources.json").write_text(json.dumps(manifest))
    except OSError:
        pass


def _protoc_message(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "protoc failed and said nothing"
    more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
    return "; ".join(lines[:2]) + more


def compile_protos(
    protos: Sequence[Path], import_paths: Sequence[Path] = (), *, cache: Path | None = None
) -> descriptor_pb2.FileDescriptorSet:
    """The descriptors of ``protos`` and everything they import, compiled by protoc
    (or found in ``cache``, default `cache_dir()`)."""
    inputs = _inputs(protos, import_paths)
    entry = (cache or cache_dir()) / _cache_key(inputs)
    hit = _cached(entry, inputs)
    if hit is not None:
        return hit
    with tempfile.TemporaryDirectory(prefix="grpctunnel-protoc-") as scratch:
        out = Path(scratch) / "set.pb"
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            *(f"--proto_path={p}" for p in inputs.import_paths),
            f"--proto_path={_bundled_include()}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            *inputs.names,
        ]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=PROTOC_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise SchemaError(f"protoc did not finish within {PROTOC_TIMEOUT:.0f}s") from None
        if done.returncode != 0 or not out.is_file():
            raise SchemaError(
                f"cannot compile {', '.join(inputs.names)}: " + _protoc_message(done.stderr)
            )
        found = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    _store(entry, inputs, found)
    return found


def load_schema(
    protos: Sequence[Path] = (),
    import_paths: Sequence[Path] = (),
    protosets: Sequence[Path] = (),
    *,
    cache: Path | None = None,
) -> descriptor_pb2.FileDescriptorSet | None:
    """Every file the given schema options describe, dependencies included; None when
    none is given. The result is checked to load into a descriptor pool."""
    if import_paths and not protos:
        raise SchemaError("--import-path is for --proto files; give at least one --proto")
    if not protos and not protosets:
        return None
    sets = [read_protoset(path) for path in protosets]
    if protos:
        sets.insert(0, compile_protos(protos, import_paths, cache=cache))
    merged = merge_sets(sets)
    SchemaIndex(merged)  # raises SchemaError when the files do not fit together
    return merged


# --- answering ----------------------------------------------------------------------------


class SchemaIndex:
    """Questions answered from one FileDescriptorSet, which must hold every dependency
    of its files."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self._protos = {f.name: f for f in files.file}
        self.pool = descriptor_pool.DescriptorPool()
        added: set[str] = set()

        def add(name: str, importer: str | None) -> None:
            if name in added:
                return
            proto = self._protos.get(name)
            if proto is None:
                raise SchemaError(
                    f"{importer} imports {name}, which the schema files do not hold "
                    "(a protoset must be written with --include_imports)"
                )
            added.add(name)
            for dependency in proto.dependency:
                add(dependency, name)
            try:
                self.pool.Add(proto)
            except (TypeError, ValueError, KeyError) as error:
                raise SchemaError(f"cannot load {name}: {error}") from None

        for name in self._protos:
            add(name, None)

    def services(self) -> list[str]:
        """The full names of the services the files define, sorted."""
        found = {
            f"{proto.package}.{service.name}" if proto.package else service.name
            for proto in self._protos.values()
            for service in proto.service
        }
        return sorted(found)

    def file(self, name: str) -> descriptor_pb2.FileDescriptorProto | None:
        """The file of that name, or None."""
        return self._protos.get(name)

    def file_containing_symbol(self, symbol: str) -> str | None:
        """The name of the file defining ``symbol`` (a service, method, message, enum,
        field...), or None."""
        name = symbol.lstrip(".")
        try:
            found: str = self.pool.FindFileContainingSymbol(name).name
        except KeyError:
            # the pool does not find a service's methods by name: their service's file
            parent, _, member = name.rpartition(".")
            try:
                service = self.pool.FindServiceByName(parent)
            except KeyError:
                return None
            return str(service.file.name) if member in service.methods_by_name else None
        return found

    def closure(self, name: str) -> list[descriptor_pb2.FileDescriptorProto]:
        """The file called ``name`` first, then every file it imports, transitively."""
        out: list[descriptor_pb2.FileDescriptorProto] = []
        seen: set[str] = set()
        queue = [name]
        while queue:
            current = queue.pop(0)
            proto = self._protos.get(current)
            if current in seen or proto is None:
                continue
            seen.add(current)
            out.append(proto)
            queue.extend(proto.dependency)
        return out
