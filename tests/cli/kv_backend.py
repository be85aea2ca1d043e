"""A test backend without reflection: tests/protos/kv/v1/kv.proto's `kvtest.v1.KV`, its
descriptors compiled by protoc (grpcio-tools) straight from the committed .proto files,
its messages built from them, served by a real grpc.aio server on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from support.servers import start_on_loopback

PROTOS = Path(__file__).resolve().parent.parent / "protos"
KV_PROTO = "kv/v1/kv.proto"
KV_SERVICE = "kvtest.v1.KV"
STORED = {b"foo": b"bar"}
MOD_TIME_SECONDS = 1_700_000_000


def protoc_descriptor_set(out: Path, *protos: str) -> Path:
    """Compile ``protos`` (names under tests/protos) to a FileDescriptorSet at ``out``."""
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            *protos,
        ],
        check=True,
        timeout=60,
    )
    return out


@dataclass
class KvMessages:
    """The message classes of kv.proto, from a pool of their own."""

    pool: descriptor_pool.DescriptorPool

    def cls(self, name: str) -> Any:
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(name))


def kv_messages(descriptor_set: Path) -> KvMessages:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:  # protoc writes each file after its imports
        pool.Add(file)
    return KvMessages(pool)


def _handlers(kv: KvMessages) -> grpc.GenericRpcHandler[Any, Any]:
    range_request = kv.cls("kvtest.v1.RangeRequest")
    range_response = kv.cls("kvtest.v1.RangeResponse")
    watch_request = kv.cls("kvtest.v1.WatchRequest")
    watch_response = kv.cls("kvtest.v1.WatchResponse")
    key_value = kv.cls("kvtest.v1.KeyValue")
    empty = kv.cls("google.protobuf.Empty")

    def stored(key: bytes) -> Any:
        entry = key_value(key=key, value=STORED[key])
        entry.mod_time.seconds = MOD_TIME_SECONDS
        return entry

    async def range_(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request.key not in STORED:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no key {request.key!r}")
        return range_response(kvs=[stored(request.key)], count=1)

    async def watch(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request.key not in STORED:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no key {request.key!r}")
        for seq in range(request.count):
            yield watch_response(kv=stored(request.key), seq=seq + 1)

    async def ping(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return empty()

    return grpc.method_handlers_generic_handler(
        KV_SERVICE,
        {
            "Range": grpc.unary_unary_rpc_method_handler(
                range_,
                request_deserializer=range_request.FromString,
                response_serializer=range_response.SerializeToString,
            ),
            "Watch": grpc.unary_stream_rpc_method_handler(
                watch,
                request_deserializer=watch_request.FromString,
                response_serializer=watch_response.SerializeToString,
            ),
            "Ping": grpc.unary_unary_rpc_method_handler(
                ping,
                request_deserializer=empty.FromString,
                response_serializer=empty.SerializeToString,
            ),
        },
    )


async def start_kv_backend(kv: KvMessages) -> tuple[grpc.aio.Server, str]:
    """kvtest.v1.KV with no reflection at all; the server and its address."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(kv),))
    return server, await start_on_loopback(server)
