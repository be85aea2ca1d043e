"""Fixtures for the CLI tests: in-process servers on 127.0.0.1 with a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from grpctunnel_demo.service import start_demo_backend

from .helpers import start_echo_server, start_two_echo_server
from .kv_backend import KV_PROTO, KvMessages, kv_messages, protoc_descriptor_set, start_kv_backend


@pytest.fixture
async def backend() -> AsyncIterator[str]:
    """The demo backend, in process; yields its address."""
    server, port = await start_demo_backend("127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture
async def two_echo_backend() -> AsyncIterator[str]:
    """A server offering grpctunnel.demo.v1.Echo and other.v1.Echo."""
    server, address = await start_two_echo_server()
    try:
        yield address
    finally:
        await server.stop(None)


@pytest.fixture
async def v1alpha_backend() -> AsyncIterator[str]:
    """Echo with only grpc.reflection.v1alpha."""
    server, address = await start_echo_server(reflection_versions=["v1alpha"])
    try:
        yield address
    finally:
        await server.stop(None)


@pytest.fixture
async def no_reflection_backend() -> AsyncIterator[str]:
    """Echo without any reflection."""
    server, address = await start_echo_server(reflection_versions=[])
    try:
        yield address
    finally:
        await server.stop(None)


@pytest.fixture(scope="session")
def kv_protoset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/protos/kv/v1/kv.proto and its imports, as protoc writes them."""
    return protoc_descriptor_set(tmp_path_factory.mktemp("kv") / "kv.protoset", KV_PROTO)


@pytest.fixture(scope="session")
def kv(kv_protoset: Path) -> KvMessages:
    return kv_messages(kv_protoset)


@pytest.fixture
async def kv_backend(kv: KvMessages) -> AsyncIterator[str]:
    """kvtest.v1.KV without reflection; yields its address."""
    server, address = await start_kv_backend(kv)
    try:
        yield address
    finally:
        await server.stop(None)
