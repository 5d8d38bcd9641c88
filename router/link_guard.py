"""Who may open a replica link: peers that present the cluster token.

The link port serves only `ReplicaLink`; this interceptor runs before any of its calls.
A peer without the token (or with another) gets UNAUTHENTICATED, is logged with its
address and the replica id it claims (never what it presented), and is counted in
`oss_serve:link_refused_peers_total` by reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter

from oss_serve.common.logging import get_logger
from oss_serve.common.security import CLUSTER_TOKEN_METADATA, REPLICA_ID_METADATA, tokens_match

log = get_logger(__name__)
REFUSAL = (
    "this peer is not a replica of the cluster: present the cluster token (OSS_SERVE_CLUSTER_TOKEN)"
)

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class ClusterTokenGuard(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, refused: Counter) -> None:
        self._token = token
        self._refused = refused

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        metadata = {
            key: value
            for key, value in handler_call_details.invocation_metadata or ()
            if isinstance(value, str)
        }
        presented = metadata.get(CLUSTER_TOKEN_METADATA)
        handler = await continuation(handler_call_details)
        if presented is not None and tokens_match(presented, self._token):
            return handler
        if handler is None:
            return None  # an unknown method: UNIMPLEMENTED, as for anyone
        reason = "missing" if presented is None else "wrong"
        return _refusing(handler, self._refuser(reason, metadata.get(REPLICA_ID_METADATA, "")))

    def _refuser(self, reason: str, claimed_replica: str) -> Callable[..., Awaitable[Any]]:
        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._refused.labels(reason).inc()
            log.warning(
                "replica link refused",
                peer=context.peer(),
                reason=f"{reason} cluster token",
                claimed_replica_id=claimed_replica[:128],
            )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)

        return refuse


def _refusing(
    handler: grpc.RpcMethodHandler, refuse: Callable[..., Awaitable[Any]]
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` whose behaviour is `refuse`."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **serializers)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **serializers)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **serializers)
    return grpc.unary_unary_rpc_method_handler(refuse, **serializers)
