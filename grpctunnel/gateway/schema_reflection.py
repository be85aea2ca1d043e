"""Server reflection answered from schema files, for a backend that has none of its own.

`SchemaReflection` is a generic handler for ``grpc.reflection.v1`` and ``v1alpha``
``ServerReflectionInfo`` (their messages are the same, so the v1alpha classes serve both)
that answers from a `SchemaIndex`: the services the files define, the file containing a
symbol and the file of a name, each with every file it imports. Extensions are not
indexed: those questions get NOT_FOUND. The exposer puts it before its relay, so the
reflection questions the server sends through the tunnel never reach the backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection_pb2

from grpctunnel.gateway.reflection_client import REFLECTION_V1, REFLECTION_V1ALPHA
from grpctunnel.gateway.schema_files import SchemaIndex

__all__ = ["SchemaReflection"]


class SchemaReflection(grpc.GenericRpcHandler):  # type: ignore[misc,type-arg]
    """Answers reflection (both versions) from ``index``."""

    def __init__(self, index: SchemaIndex) -> None:
        self._index = index
        self._handler = grpc.stream_stream_rpc_method_handler(
            self._stream,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
        self._paths = {
            f"/{service}/ServerReflectionInfo" for service in (REFLECTION_V1, REFLECTION_V1ALPHA)
        }

    def service(self, handler_call_details: Any) -> Any:
        return self._handler if handler_call_details.method in self._paths else None

    async def _stream(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            yield self.answer(request)

    def answer(self, request: Any) -> Any:
        """The response to one ``ServerReflectionRequest``."""
        response = reflection_pb2.ServerReflectionResponse(
            valid_host=request.host, original_request=request
        )
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            response.list_services_response.service.extend(
                reflection_pb2.ServiceResponse(name=name) for name in self._index.services()
            )
            return response
        finding: dict[str, Callable[[], str | None]] = {
            "file_by_filename": lambda: request.file_by_filename,
            "file_containing_symbol": lambda: self._index.file_containing_symbol(
                request.file_containing_symbol
            ),
        }
        name = finding[kind]() if kind in finding else None
        files = self._index.closure(name) if name else []
        if files:
            response.file_descriptor_response.file_descriptor_proto.extend(
                file.SerializeToString() for file in files
            )
            return response
        response.error_response.error_code = grpc.StatusCode.NOT_FOUND.value[0]
        response.error_response.error_message = "not found in the exposed schema files"
        return response
