"""TLS on every port of a router, mTLS on its replica link, with real processes: an
`oss-serve router --tls-cert --tls-key --tls-ca` and an `oss-serve replica --tls-ca
--tls-cert --tls-key` (its own certificate, signed by the CA). The official grpc client
is served over TLS; plain text is not; HTTPS answers with the key; a link peer without a
certificate from the CA never gets past the handshake."""

from __future__ import annotations

import re
import time
import uuid

import grpc
import httpx
import pytest

from oss_serve.common.security import CLUSTER_TOKEN_METADATA
from oss_serve.protos import replica_link_pb2, replica_link_pb2_grpc
from tests.router.stack import (
    CLUSTER_TOKEN,
    generate,
    start_replica,
    start_router,
    wait_for_replicas,
    wait_for_router,
)
from tests.router.tls import SERVER_NAME, make_tls_material

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
API_KEY = "sk-tls-test-key"


def _served_url(what: str, timeout_s: float, read) -> str:
    """The address a router printed for `what` ("serving HTTP", "replica link")."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(rf"{what} on (\S+)", read())
        if match:
            return match.group(1)
        time.sleep(0.1)
    raise TimeoutError(f"no '{what}' line in the router's output:\n{read()[-2000:]}")


@pytest.fixture(scope="module")
def tls_stack(redis_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    tls = make_tls_material(folder / "pki")
    namespace = f"tls-{uuid.uuid4().hex[:6]}"
    replica = start_replica(
        redis_server.url, namespace, "replica-tls", folder,
        extra_args=["--tls-ca", str(tls.ca), "--tls-cert", str(tls.client_cert),
                    "--tls-key", str(tls.client_key), "--tls-server-name", SERVER_NAME],
    )  # fmt: skip
    router, address = start_router(
        redis_server.url, namespace, folder, "router-tls",
        extra_args=["--api-key", API_KEY, "--tls-cert", str(tls.server_cert),
                    "--tls-key", str(tls.server_key), "--tls-ca", str(tls.ca)],
    )  # fmt: skip
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes())
    try:
        wait_for_replicas(redis_server.url, namespace, ["replica-tls"], [replica, router])
        wait_for_router(address, api_key=API_KEY, credentials=credentials)
        yield {
            "address": address,
            "credentials": credentials,
            "tls": tls,
            "http": _served_url("serving HTTP", 10, router.log),
            "link": _served_url("replica link", 10, router.log),
        }
    finally:
        router.stop()
        replica.stop()


def test_the_official_grpc_client_is_served_over_tls_through_an_mtls_link(tls_stack):
    tokens, finish, _ = generate(
        tls_stack["address"],
        [21, 22, 23],
        max_tokens=4,
        api_key=API_KEY,
        credentials=tls_stack["credentials"],
    )
    assert len(tokens) == 4 and finish == "length"


def test_plain_text_is_not_served_on_a_tls_port(tls_stack):
    with pytest.raises(grpc.RpcError) as caught:
        generate(tls_stack["address"], [1, 2], max_tokens=1, api_key=API_KEY, timeout_s=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_https_answers_with_the_key_and_verifies_against_the_ca(tls_stack):
    base = tls_stack["http"]
    assert base.startswith("https://")
    tls = tls_stack["tls"]
    models = httpx.get(
        f"{base}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, verify=str(tls.ca)
    )
    assert models.status_code == 200 and models.json()["data"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/health", verify=str(tls.other_ca))


def test_a_link_peer_without_a_certificate_from_the_ca_is_refused_at_the_handshake(tls_stack):
    host_port = tls_stack["link"]
    hello = replica_link_pb2.ReplicaMessage(hello=replica_link_pb2.Hello(replica_id="mallory"))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls_stack["tls"].ca.read_bytes()
    )  # the right CA and token, but no client certificate
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    with grpc.secure_channel(host_port, credentials, options=options) as channel:
        stub = replica_link_pb2_grpc.ReplicaLinkStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Connect(iter([hello]), timeout=5, metadata=(
                (CLUSTER_TOKEN_METADATA, CLUSTER_TOKEN),)))  # fmt: skip
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
