"""gRPC server reflection, both versions: grpc.reflection.v1 (what current grpcurl and Postman ask first)
and v1alpha (older tools).

grpcio-reflection implements only v1alpha. The two versions' messages are the same on the wire (same
fields, same numbers; only the proto package differs), so one servicer answers both method paths.
"""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_SERVICE = "grpc.reflection.v1.ServerReflection"


def enable(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE)
    reflection.enable_server_reflection(names, server)             # v1alpha, and the servicer we reuse
    servicer = reflection.aio.ReflectionServicer(names)              # the asyncio servicer of grpc.aio servers
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString),
    }),))
