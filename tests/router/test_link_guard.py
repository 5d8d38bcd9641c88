"""The replica link apart from the public API, behind the cluster token, on a real stack
(in-process router, a real `oss-serve replica` holding the token): the public port does
not serve the link; a stranger (no token, a wrong one, or a replica given another
cluster's token) is refused, logged without what it presented, and counted; the real
replica serves as before."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from oss_serve.cluster.replica.router_link import LinkDown, LinkSecurity, RouterLink
from oss_serve.common.security import CLUSTER_TOKEN_METADATA, REPLICA_ID_METADATA
from oss_serve.common.settings import Settings
from oss_serve.protos import replica_link_pb2, replica_link_pb2_grpc
from oss_serve.router.server import RouterServer
from tests.router.http.stack import API_KEY
from tests.router.metrics_scrape import scrape
from tests.router.stack import generate

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
WRONG_TOKEN = "oss-cluster-not-this-clusters-token"


def _connect(address: str, metadata: tuple[tuple[str, str], ...]) -> grpc.RpcError:
    """A Connect that says Hello as a made-up replica; the error it ends with."""
    hello = replica_link_pb2.ReplicaMessage(hello=replica_link_pb2.Hello(replica_id="mallory"))
    with grpc.insecure_channel(address) as channel:
        stub = replica_link_pb2_grpc.ReplicaLinkStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Connect(iter([hello]), timeout=10, metadata=metadata))
    return caught.value


def _refused(root: str) -> dict[str, float]:
    values = scrape(root)
    return {
        reason: values.get(f"oss_serve:link_refused_peers_total{{reason={reason}}}", 0.0)
        for reason in ("missing", "wrong")
    }


def test_the_public_grpc_port_does_not_serve_the_replica_link(serving_stack):
    error = _connect(serving_stack.router.router.address, ())
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_strangers_on_the_link_are_refused_logged_and_counted(serving_stack, caplog):
    router = serving_stack.router.router
    root = serving_stack.router.base_url.removesuffix("/v1")
    before = _refused(root)
    with caplog.at_level(logging.WARNING, logger="oss_serve.router.link_guard"):
        missing = _connect(router.link_address, ((REPLICA_ID_METADATA, "mallory"),))
        wrong = _connect(router.link_address, ((CLUSTER_TOKEN_METADATA, WRONG_TOKEN),))
    for error in (missing, wrong):
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "cluster token" in error.details() and WRONG_TOKEN not in error.details()
    after = _refused(root)
    assert after["missing"] - before["missing"] == 1
    assert after["wrong"] - before["wrong"] == 1
    refusals = [r for r in caplog.records if r.getMessage() == "replica link refused"]
    assert len(refusals) == 2
    fields = [r.fields for r in refusals]  # type: ignore[attr-defined]
    assert fields[0]["claimed_replica_id"] == "mallory" and fields[0]["peer"]
    assert WRONG_TOKEN not in repr(fields) and "mallory" not in router.hub._links
    tokens, finish, _ = generate(router.address, [5, 6, 7], max_tokens=3, api_key=API_KEY)
    assert len(tokens) == 3 and finish == "length"  # the real replica serves as before


def test_a_replica_with_another_clusters_token_cannot_link(serving_stack):
    address = serving_stack.router.router.link_address

    async def try_link() -> bool:
        link = RouterLink(address, "intruder", LinkSecurity(cluster_token=WRONG_TOKEN))
        try:
            await link.connect()
            for _ in range(100):  # the refusal ends the stream at once
                if not link.connected:
                    break
                await asyncio.sleep(0.05)
            return link.connected
        except LinkDown:
            return False
        finally:
            await link.aclose()

    assert asyncio.run(try_link()) is False


def test_a_router_refuses_to_open_its_link_beyond_loopback_without_a_token(serving_stack):
    settings = Settings(
        redis_url=serving_stack.redis_url,
        redis_namespace=serving_stack.namespace,
        host="0.0.0.0",
        grpc_port=0,
    )

    async def start() -> str:
        server = RouterServer(settings)
        try:
            await server.start()
        except ValueError as err:
            return str(err)
        finally:
            await server.stop(grace_s=0)
        return ""

    message = asyncio.run(start())
    assert "OSS_SERVE_CLUSTER_TOKEN" in message and "0.0.0.0" in message
