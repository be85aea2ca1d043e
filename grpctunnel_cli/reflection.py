"""Descriptors from a server's reflection service or from schema files, and resolving
user-given names against them.

`DescriptorSource` asks a `Schema` its questions (list the services, the file defining a
symbol, a file by name) and resolves names the same way whatever answers them: a
`ReflectionSchema` asks the server's reflection service through the one reflection
client, `grpctunnel.gateway.reflection_client.ask`, over any `grpc.aio.Channel` (a
tunnel channel too): ``grpc.reflection.v1`` first, then ``grpc.reflection.v1alpha`` when
v1 is UNIMPLEMENTED; the version that answered is asked from then on. A `FileSchema`
answers from the files given with ``--proto`` / ``--protoset``, and then only from them
(as grpcurl does: a name they do not define is unknown, never asked of the server). What
goes wrong becomes the command's error: no reflection at all, a refusal of the caller
(its status), any other failure. File descriptors, with their dependencies, go into a
private `descriptor_pool.DescriptorPool`, never the process-wide default pool.

Name resolution accepts full names (``pkg.Svc/Method``, ``pkg.Svc.Method``) and short
forms (``Svc/Method``, ``v1.Svc.Method``) that match the end of a listed service's full
name at a dot boundary. A name that matches nothing or more than one thing raises
`ResolutionError` with the candidates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NoReturn, Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FileDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection_pb2

from grpctunnel.gateway.reflection import undescribed_reason
from grpctunnel.gateway.reflection_client import V1, V1ALPHA, ask
from grpctunnel.gateway.schema_files import SchemaIndex
from grpctunnel_cli.errors import ReflectionError, ResolutionError, StatusError
from grpctunnel_cli.metadata import Metadata
from grpctunnel_cli.rpc_status import error_status

__all__ = [
    "DescriptorSource",
    "FileSchema",
    "ReflectionSchema",
    "Schema",
    "Symbol",
    "iter_types",
    "match_names",
    "pick_name",
    "split_method_name",
]

Symbol = ServiceDescriptor | MethodDescriptor | Descriptor | EnumDescriptor

# A server that refuses reflection for these reasons refuses the caller, not the question:
# the command ends with that status (64 + N), as the call itself would have.
_REFUSALS = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})

# Services of every server rather than of its own (an example of a method avoids them).
_INFRASTRUCTURE = ("grpc.", "grpctunnel.v1.", "grpctunnel.admin.")

# The version each reflection method path speaks, as `reflection_version` tells it.
_VERSIONS = {V1: "v1", V1ALPHA: "v1alpha"}


# --- pure name matching -------------------------------------------------------------------


def split_method_name(spec: str) -> tuple[str, str]:
    """Split ``Svc/Method`` or ``Svc.Method`` (either possibly qualified) into its two parts."""
    text = spec.strip().lstrip(".")
    if "/" in text:
        service, _, method = text.rpartition("/")
    else:
        service, _, method = text.rpartition(".")
    if not service or not method or "/" in service:
        raise ResolutionError(f"{spec!r} is not a method name; write SERVICE/METHOD")
    return service.strip("."), method


def match_names(query: str, names: Iterable[str]) -> list[str]:
    """The names equal to `query`, or else those ending with ``"." + query``; sorted."""
    wanted = query.strip().lstrip(".")
    unique = sorted(set(names))
    if not wanted:
        return []
    exact = [name for name in unique if name == wanted]
    if exact:
        return exact
    return [name for name in unique if name.endswith("." + wanted)]


def _listing(names: Iterable[str]) -> str:
    return "".join(f"\n  {name}" for name in names)


def pick_name(kind: str, query: str, names: Sequence[str]) -> str:
    """The one name in `names` that `query` means; ResolutionError listing candidates if not."""
    matches = match_names(query, names)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ResolutionError(
            f"ambiguous {kind} {query!r}; it matches:{_listing(matches)}\nuse the full name",
            tuple(matches),
        )
    _unknown(kind, query, names)


def _unknown(kind: str, query: str, names: Sequence[str]) -> NoReturn:
    candidates = tuple(sorted(set(names)))
    if candidates:
        raise ResolutionError(
            f"unknown {kind} {query!r}; available {kind}s:{_listing(candidates)}", candidates
        )
    raise ResolutionError(f"unknown {kind} {query!r}; the server lists no {kind}s")


def iter_types(file: FileDescriptor) -> Iterable[Descriptor | EnumDescriptor]:
    """Every message (nested ones too, but not map entries) and enum defined in `file`."""

    def walk(message: Descriptor) -> Iterable[Descriptor | EnumDescriptor]:
        if message.GetOptions().map_entry:
            return
        yield message
        yield from message.enum_types
        for nested in message.nested_types:
            yield from walk(nested)

    for message in file.message_types_by_name.values():
        yield from walk(message)
    yield from file.enum_types_by_name.values()


# --- where descriptors come from ---------------------------------------------------------


class _NotFound(Exception):
    """The schema does not know the file or symbol asked about."""


class Schema(Protocol):
    """Where a `DescriptorSource` gets its descriptors: a server's reflection, or files."""

    @property
    def origin(self) -> str:
        """What it is, for messages: "the server's reflection", "the schema files"."""
        ...

    async def list_services(self) -> list[str]:
        """The full names of the services it lists."""
        ...

    async def file_containing_symbol(self, symbol: str) -> list[descriptor_pb2.FileDescriptorProto]:
        """The file defining ``symbol`` first, possibly with others; `_NotFound` if none."""
        ...

    async def file_by_filename(self, name: str) -> list[descriptor_pb2.FileDescriptorProto]:
        """The file called ``name`` first, possibly with others; `_NotFound` if none."""
        ...


class ReflectionSchema:
    """A server's reflection service, asked one question per RPC (one request, the first
    reply), so nothing is left open; ``metadata`` and ``timeout`` apply to each RPC."""

    origin = "the server's reflection"

    def __init__(
        self, channel: grpc.aio.Channel, *, metadata: Metadata = (), timeout: float | None = None
    ) -> None:
        self._channel = channel
        self._metadata = tuple(metadata)
        self._timeout = timeout
        self.path: str | None = None  # the reflection method that answered

    async def _ask(
        self, request: reflection_pb2.ServerReflectionRequest
    ) -> reflection_pb2.ServerReflectionResponse:
        paths = (self.path,) if self.path else (V1, V1ALPHA)
        try:
            answer = await ask(
                self._channel, request, paths=paths, metadata=self._metadata, timeout=self._timeout
            )
        except grpc.RpcError as error:
            code, details, _ = error_status(error)
            if code is grpc.StatusCode.UNIMPLEMENTED:
                tried = " and ".join(f"grpc.reflection.{_VERSIONS[path]}" for path in paths)
                raise ReflectionError(
                    f"the server does not offer reflection (tried {tried}; "
                    f"UNIMPLEMENTED: {details}); give its schema with --proto or --protoset"
                ) from None
            if code in _REFUSALS:
                raise StatusError(code, details) from None
            raise ReflectionError(f"server reflection failed: {code.name}: {details}") from None
        if answer is None:
            raise ReflectionError("the server's reflection service sent no reply")
        self.path = answer[0]
        response: reflection_pb2.ServerReflectionResponse = answer[1]
        if response.HasField("error_response"):
            raise _NotFound(response.error_response.error_message)
        return response

    async def list_services(self) -> list[str]:
        try:
            response = await self._ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        except _NotFound as error:
            raise ReflectionError(f"cannot list services: {error}") from None
        return [s.name for s in response.list_services_response.service]

    @staticmethod
    def _files(
        response: reflection_pb2.ServerReflectionResponse,
    ) -> list[descriptor_pb2.FileDescriptorProto]:
        files = []
        for blob in response.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto()
            try:
                proto.ParseFromString(blob)
            except DecodeError:
                raise ReflectionError("the server sent a malformed file descriptor") from None
            files.append(proto)
        return files

    async def file_containing_symbol(self, symbol: str) -> list[descriptor_pb2.FileDescriptorProto]:
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
        return self._files(await self._ask(request))

    async def file_by_filename(self, name: str) -> list[descriptor_pb2.FileDescriptorProto]:
        request = reflection_pb2.ServerReflectionRequest(file_by_filename=name)
        return self._files(await self._ask(request))


class FileSchema:
    """Descriptors from schema files (``--proto``, ``--protoset``), in place of reflection."""

    origin = "the schema files"

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self._index = SchemaIndex(files)

    async def list_services(self) -> list[str]:
        return self._index.services()

    async def file_containing_symbol(self, symbol: str) -> list[descriptor_pb2.FileDescriptorProto]:
        name = self._index.file_containing_symbol(symbol)
        if name is None:
            raise _NotFound(symbol)
        return self._index.closure(name)

    async def file_by_filename(self, name: str) -> list[descriptor_pb2.FileDescriptorProto]:
        found = self._index.closure(name)
        if not found:
            raise _NotFound(name)
        return found


# --- resolving names against a schema -----------------------------------------------------


class DescriptorSource:
    """Lists services and fetches descriptors from a `Schema`: by default, the reflection
    service behind ``channel`` (``metadata`` and ``timeout`` apply to each reflection
    RPC); with ``schema``, that instead. Every descriptor goes to a private pool.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel | None = None,
        *,
        metadata: Metadata = (),
        timeout: float | None = None,
        schema: Schema | None = None,
    ) -> None:
        if schema is None:
            if channel is None:
                raise ValueError("a DescriptorSource needs a channel or a schema")
            schema = ReflectionSchema(channel, metadata=metadata, timeout=timeout)
        self._schema = schema
        self._pool = descriptor_pool.DescriptorPool()
        self._installed: set[str] = set()
        self._received: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        self._services: list[str] | None = None

    @property
    def pool(self) -> descriptor_pool.DescriptorPool:
        """The private pool holding every descriptor fetched so far."""
        return self._pool

    @property
    def origin(self) -> str:
        """Where the descriptors come from, for messages."""
        return self._schema.origin

    @property
    def reflection_version(self) -> str | None:
        """``"v1"`` or ``"v1alpha"`` once a reflection RPC has succeeded."""
        schema = self._schema
        if isinstance(schema, ReflectionSchema) and schema.path:
            return _VERSIONS[schema.path]
        return None

    # -- files

    def _install(self, name: str, pending: set[str]) -> None:
        """Add a received file to the pool after its dependencies; they must be received."""
        if name in self._installed:
            return
        proto = self._received[name]
        pending.add(name)
        for dependency in proto.dependency:
            if dependency in pending:
                raise ReflectionError(f"circular import between {name} and {dependency}")
            self._install(dependency, pending)
        try:
            self._pool.Add(proto)
        except (TypeError, ValueError, KeyError) as error:
            raise ReflectionError(f"cannot load {name} from {self.origin}: {error}") from None
        pending.discard(name)
        self._installed.add(name)

    def _store(self, files: Sequence[descriptor_pb2.FileDescriptorProto]) -> list[str]:
        for proto in files:
            self._received.setdefault(proto.name, proto)
        return [proto.name for proto in files]

    async def _fetch_missing(self, names: Iterable[str]) -> None:
        """Fetch, by file name, any dependency of `names` not yet received."""
        queue = list(names)
        while queue:
            name = queue.pop()
            if name not in self._received:
                try:
                    self._store(await self._schema.file_by_filename(name))
                except _NotFound:
                    raise ReflectionError(f"{self.origin} does not know file {name!r}") from None
                if name not in self._received:
                    raise ReflectionError(f"{self.origin} did not give file {name!r}")
            queue.extend(self._received[name].dependency)

    async def file_containing_symbol(self, symbol: str) -> FileDescriptor | None:
        """The file that defines `symbol` (loaded with its dependencies); None if unknown."""
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            pass
        try:
            names = self._store(await self._schema.file_containing_symbol(symbol))
        except _NotFound:
            return None
        if not names:
            return None
        await self._fetch_missing(names)
        for name in names:
            self._install(name, set())
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            return self._pool.FindFileByName(names[0])

    def files(self) -> list[FileDescriptor]:
        """Every file loaded so far."""
        return [self._pool.FindFileByName(name) for name in sorted(self._installed)]

    def file_set(self, files: Iterable[FileDescriptor]) -> descriptor_pb2.FileDescriptorSet:
        """``files`` and everything they import, each file after its imports (as protoc
        writes ``--descriptor_set_out --include_imports``)."""
        out = descriptor_pb2.FileDescriptorSet()
        written: set[str] = set()

        def add(name: str) -> None:
            if name in written or name not in self._received:
                return
            written.add(name)
            proto = self._received[name]
            for dependency in proto.dependency:
                add(dependency)
            out.file.append(proto)

        for file in files:
            add(file.name)
        return out

    # -- services

    async def list_services(self) -> list[str]:
        """The full names of the services the schema lists, sorted."""
        if self._services is None:
            self._services = sorted(set(await self._schema.list_services()))
        return list(self._services)

    async def service(self, full_name: str) -> ServiceDescriptor:
        """The descriptor of a service given by its full name."""
        file = await self.file_containing_symbol(full_name)
        cannot = f"{self.origin} cannot describe service {full_name!r}"
        if file is not None and file.name in self._received:
            reason = undescribed_reason(self._received[file.name])
            if reason is not None:
                raise ResolutionError(f"{cannot}: {reason}")
        try:
            return self._pool.FindServiceByName(full_name)
        except KeyError:
            raise ResolutionError(cannot) from None

    async def describe_services(self) -> tuple[list[ServiceDescriptor], list[ResolutionError]]:
        """Descriptors of every listed service that can be described, and why each of the
        others cannot."""
        found: list[ServiceDescriptor] = []
        failed: list[ResolutionError] = []
        for name in await self.list_services():
            try:
                found.append(await self.service(name))
            except ResolutionError as error:
                failed.append(error)
        return found, failed

    async def services(self) -> list[ServiceDescriptor]:
        """Descriptors of every listed service that can be described."""
        return (await self.describe_services())[0]

    # -- resolution

    async def resolve_service(self, spec: str) -> ServiceDescriptor:
        """The service `spec` names: a full name, or a unique dot-boundary suffix of one."""
        query = spec.strip().lstrip(".")
        if "." in query and self._services is None:
            # Perhaps a full name: one question answers it, where listing first takes two.
            if await self.file_containing_symbol(query) is not None:
                try:
                    return self._pool.FindServiceByName(query)
                except KeyError:
                    pass
        names = await self.list_services()
        try:
            return await self.service(pick_name("service", query, names))
        except ResolutionError:
            # A service the server does not list may still be known to reflection.
            if "." in query and not match_names(query, names):
                file = await self.file_containing_symbol(query)
                if file is not None:
                    try:
                        return self._pool.FindServiceByName(query)
                    except KeyError:
                        pass
            raise

    async def resolve_method(self, spec: str) -> MethodDescriptor:
        """The method `spec` names: ``Svc/Method`` or ``Svc.Method``, Svc full or short."""
        try:
            service_query, method_name = split_method_name(spec)
            service = await self.resolve_service(service_query)
        except ResolutionError:
            # "pkg.Svc" or "Svc" alone names a service, not a method: say so.
            whole = spec.strip().lstrip(".")
            if "/" not in whole and match_names(whole, await self.list_services()):
                service = await self.resolve_service(whole)
                methods = [f"{service.full_name}/{m.name}" for m in service.methods]
                raise ResolutionError(
                    f"{spec!r} is a service; name one of its methods:{_listing(methods)}",
                    tuple(methods),
                ) from None
            if "/" not in whole and "." not in whole:
                raise ResolutionError(
                    f"{spec!r} is not a method name; write SERVICE/METHOD"
                    f"{await self._example_method()}"
                ) from None
            raise
        method = service.methods_by_name.get(method_name)
        if method is None:
            methods = [m.name for m in service.methods]
            raise ResolutionError(
                f"service {service.full_name} has no method {method_name!r}; "
                f"its methods:{_listing(methods)}",
                tuple(f"{service.full_name}/{m}" for m in methods),
            )
        return method

    async def _example_method(self) -> str:
        """An example of a method of this server, as ", e.g. pkg.Svc/Method or
        Svc/Method": of one of its own services rather than reflection's or a tunnel
        server's own (health's, failing those); "" if it has none."""
        names = await self.list_services()
        own = [n for n in names if not n.startswith(_INFRASTRUCTURE)]
        own += [n for n in names if n.startswith("grpc.health.")]
        for name in own:
            try:
                service = await self.service(name)
            except ResolutionError:
                continue
            if service.methods:
                method = service.methods[0].name
                return f", e.g. {service.full_name}/{method} or {service.name}/{method}"
        return ""

    def _find_loaded(self, full_name: str) -> Symbol | None:
        finders = (
            self._pool.FindServiceByName,
            self._pool.FindMessageTypeByName,
            self._pool.FindEnumTypeByName,
            self._pool.FindMethodByName,
        )
        for find in finders:
            try:
                found: Symbol = find(full_name)
            except KeyError:
                continue
            return found
        return None

    async def resolve_symbol(self, spec: str) -> Symbol:
        """A service, method, message or enum, by full name or unique short name.

        A short name is matched against services first, then methods, then messages and
        enums; the first of those with a match decides (``Echo`` is the service, not its
        method ``Echo.Echo``).
        """
        query = spec.strip().lstrip(".").replace("/", ".")
        if not query:
            raise ResolutionError("empty symbol name")
        services = await self.list_services()
        if query in services:
            return await self.service(query)
        found = self._find_loaded(query)
        if found is None and await self.file_containing_symbol(query) is not None:
            found = self._find_loaded(query)
        if found is not None:
            return found
        if match_names(query, services):  # a service, even one that cannot be described
            return await self.service(pick_name("service", query, services))
        described = await self.services()
        methods = {f"{s.full_name}.{m.name}": m for s in described for m in s.methods}
        types = {t.full_name: t for file in self.files() for t in iter_types(file)}
        by_service = {s.full_name: s for s in described}
        categories: list[tuple[str, dict[str, Symbol]]] = [
            ("service", dict(by_service)),
            ("method", dict(methods)),
            ("type", dict(types)),
        ]
        for kind, table in categories:
            matches = match_names(query, table)
            if matches:
                return table[pick_name(kind, query, matches)]
        _unknown("symbol", spec.strip(), services)
