"""Secrets never leak, over a whole `oss-serve up` session with known secrets: an API key,
a cluster token, a Redis that requires a password (`up --redis-url redis://:PW@...`), a
key made by `oss-serve keys`, and wrong keys and tokens that strangers present. After
serving HTTP and gRPC, refusing strangers on the API and on the link, and stopping, none
of them appears in any line `up` printed or logged (its replicas' logs included), in any
error message a client got, or on /metrics. Debug logging, so the most lines are checked.
"""

from __future__ import annotations

import subprocess
import uuid
from urllib.parse import quote

import grpc
import httpx
import pytest

from oss_serve.common.security import CLUSTER_TOKEN_METADATA
from oss_serve.protos import (
    inference_pb2,
    inference_pb2_grpc,
    replica_link_pb2,
    replica_link_pb2_grpc,
)
from tests.e2e.test_up import MODEL, READY_TIMEOUT_S
from tests.e2e.up_process import OSS_SERVE, UpProcess
from tests.router.servers import RedisServer
from tests.router.stack import generate, key_metadata

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]
API_KEY = "sk-leak-check-api-key-7Qx2"
CLUSTER_TOKEN = "oss-cluster-leak-check-token-Vb81"
REDIS_PASSWORD = "redis-leak-check-pw-Lm42"
WRONG_KEY = "sk-leak-check-wrong-key-Hd55"
WRONG_TOKEN = "oss-cluster-leak-check-wrong-Pc19"


def test_no_secret_appears_in_logs_errors_or_metrics(tmp_path):
    server = RedisServer(tmp_path / "redis", appendonly=False, password=REDIS_PASSWORD).start()
    namespace = f"leak-{uuid.uuid4().hex[:6]}"
    env = {
        "OSS_SERVE_REDIS_NAMESPACE": namespace,
        "OSS_SERVE_CLUSTER_TOKEN": CLUSTER_TOKEN,
        "OSS_SERVE_LOG_LEVEL": "debug",
        "OSS_SERVE_LOG_FORMAT": "json",
    }
    up = UpProcess(tmp_path / "up", "--redis-url", server.url, "--api-key", API_KEY, env=env)
    seen: list[str] = []  # everything a client was told
    try:
        up.start().wait_ready(READY_TIMEOUT_S)
        added = subprocess.run(
            [*OSS_SERVE, "keys", "add", "leak-check", "--redis-url", server.url],
            capture_output=True, text=True, timeout=60, env={**up.env},
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        stored_key = added.stdout.strip().splitlines()[0]
        seen.append(added.stderr)  # stdout is the new key itself, shown once by design
        seen += _http_session(up.base_url, [API_KEY, stored_key])
        seen += _grpc_session(f"127.0.0.1:{up.grpc_port}", f"127.0.0.1:{up.link_port}")
        metrics = httpx.get(f"{up.base_url}/metrics", timeout=10).text
        assert "oss_serve:link_refused_peers_total" in metrics
        seen.append(metrics)
        assert up.terminate() == 0, up.output()
        secrets = [API_KEY, CLUSTER_TOKEN, REDIS_PASSWORD, WRONG_KEY, WRONG_TOKEN, stored_key]
        secrets.append(quote(REDIS_PASSWORD, safe=""))
        output = up.output()
        assert len(output.splitlines()) > 50, "debug logging: many lines to check"
        for text in [output, *seen]:
            for secret in secrets:
                assert secret not in text, f"a secret leaked: ...{_around(text, secret)}..."
    finally:
        up.kill_tree()
        server.stop()


def _http_session(base: str, keys: list[str]) -> list[str]:
    """Served with each real key, refused without one and with a wrong one: the bodies."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8}
    bodies = []
    for key in keys:
        reply = httpx.post(
            f"{base}/v1/chat/completions",
            json=chat,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        bodies.append(reply.text)
    for headers in ({}, {"Authorization": f"Bearer {WRONG_KEY}"}, {"api-key": WRONG_KEY}):
        refused = httpx.post(f"{base}/v1/chat/completions", json=chat, headers=headers, timeout=30)
        assert refused.status_code == 401
        bodies.append(refused.text)
    return bodies


def _grpc_session(address: str, link_address: str) -> list[str]:
    """Served with the key; refused with a wrong key; a stranger on the link with a wrong
    token: the messages they got."""
    tokens, finish, _ = generate(address, [200006, 1428, 200008], max_tokens=4, api_key=API_KEY)
    assert len(tokens) == 4 and finish == "length"
    details = []
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListModels(
                inference_pb2.ListModelsRequest(), timeout=10, metadata=key_metadata(WRONG_KEY)
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        details.append(str(refused.value.details()))
    hello = replica_link_pb2.ReplicaMessage(hello=replica_link_pb2.Hello(replica_id="x"))
    with grpc.insecure_channel(link_address) as channel:
        stub = replica_link_pb2_grpc.ReplicaLinkStub(channel)
        with pytest.raises(grpc.RpcError) as stranger:
            list(stub.Connect(iter([hello]), timeout=10, metadata=(
                (CLUSTER_TOKEN_METADATA, WRONG_TOKEN),)))  # fmt: skip
        assert stranger.value.code() == grpc.StatusCode.UNAUTHENTICATED
        details.append(str(stranger.value.details()))
    return details


def _around(text: str, secret: str) -> str:
    at = text.find(secret)
    return text[max(0, at - 200) : at].replace(secret, "<SECRET>")
