"""A router SIGKILLed under load, with real processes (redis-server, `oss-serve replica`,
two `oss-serve router`s): its in-flight requests stop on the replica at once (no orphan
decoding, every KV block back), the other router's requests finish, new requests go
through the other router, and a client that retries a lost request with its request id
through the other router gets 409 until the dead router's lease lapses, then its answer."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import redis

from oss_serve.protos import inference_pb2, inference_pb2_grpc
from oss_serve.streams.keys import RedisKeys
from tests.router.servers import RedisServer
from tests.router.stack import (
    generate,
    queue_is_empty,
    start_replica,
    start_router,
    wait_for_replicas,
    wait_for_router,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]
REPLICA = "failover-r"
LEASE_S = 2.0
DOOMED = 3  # long requests through the router that dies
SURVIVING = 2  # shorter ones through the other router
LONG, SHORT = 600, 150


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("router-failover")
    server = RedisServer(folder / "redis", appendonly=False).start()
    namespace = f"failover-{uuid.uuid4().hex[:6]}"
    env = {"OSS_SERVE_IDEMPOTENCY_LEASE_S": str(LEASE_S), "OSS_SERVE_ROUTER_LINK_GRACE_S": "2"}
    replica = start_replica(server.url, namespace, REPLICA, folder, env=env)
    routers = [start_router(server.url, namespace, folder, name, env=env) for name in "ab"]
    try:
        wait_for_replicas(server.url, namespace, [REPLICA], [replica, *(p for p, _ in routers)])
        for _, address in routers:
            wait_for_router(address)
        yield server, namespace, routers
    finally:
        for proc, _ in routers:
            proc.stop()
        replica.stop()
        server.stop()


def _load(server: RedisServer, namespace: str) -> dict[str, int]:
    raw = redis.Redis.from_url(server.url).hgetall(RedisKeys(namespace).replica(REPLICA))
    return {k.decode(): int(float(v)) for k, v in raw.items() if k.startswith((b"running", b"kv_"))}


def _wait_load(server, namespace, check, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check(_load(server, namespace)):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"replica load never matched: {_load(server, namespace)}")


def _request(request_id: str, prompt: list[int], max_tokens: int) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        prompt_token_ids=prompt,
        sampling=inference_pb2.SamplingParams(
            temperature=0.0, max_tokens=max_tokens, ignore_eos=True
        ),
        options=inference_pb2.RequestOptions(request_id=request_id),
    )


def _stream(address: str, request: inference_pb2.GenerateRequest, streamed: list[int], i: int):
    try:
        with grpc.insecure_channel(address) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            tokens = []
            for chunk in stub.Generate(request, timeout=120):
                tokens += chunk.token_ids
                streamed[i] += len(chunk.token_ids)
        return "done", tokens
    except grpc.RpcError as err:
        return "failed", err.code()


def test_killing_a_router_cancels_its_requests_on_the_replica(stack):
    server, namespace, ((doomed_router, doomed), (_, survivor)) = stack
    _wait_load(server, namespace, lambda load: load["running"] == 0, 30)
    idle = _load(server, namespace)
    requests = [_request(f"lost-{i}", [500 + i] * 20, LONG) for i in range(DOOMED)] + [
        _request(f"kept-{i}", [600 + i] * 20, SHORT) for i in range(SURVIVING)
    ]
    addresses = [doomed] * DOOMED + [survivor] * SURVIVING
    streamed = [0] * len(requests)
    pool = ThreadPoolExecutor(len(requests))
    futures = [
        pool.submit(_stream, address, request, streamed, i)
        for i, (address, request) in enumerate(zip(addresses, requests, strict=True))
    ]
    deadline = time.monotonic() + 60
    while min(streamed) < 2:
        assert time.monotonic() < deadline, streamed
        time.sleep(0.01)
    _wait_load(server, namespace, lambda load: load["running"] == DOOMED + SURVIVING, 10)
    doomed_router.kill()
    stopped_s = _wait_load(server, namespace, lambda load: load["running"] <= SURVIVING, 10)
    outcomes = [f.result(timeout=120) for f in futures]
    pool.shutdown()
    assert stopped_s < 3.0  # the rest of 600 tokens each would take far longer
    assert all(kind == "failed" for kind, _ in outcomes[:DOOMED])
    assert [(kind, len(tokens)) for kind, tokens in outcomes[DOOMED:]] == [("done", SHORT)] * 2
    tokens, finish, _ = generate(survivor, [700] * 20, max_tokens=16)  # new requests still flow
    assert finish == "length" and len(tokens) == 16
    _wait_load(
        server,
        namespace,
        lambda load: load["running"] == 0 and load["kv_blocks_free"] == idle["kv_blocks_free"],
        15,
    )
    assert queue_is_empty(server.url, namespace, wait_s=15)  # the lost ones were dead-lettered

    # the client's retry through the surviving router: 409 while the dead router's lease
    # lasts, then the request runs afresh
    retry = _request("lost-0", [500] * 20, LONG)  # the same request as the lost one
    answers: list = []
    conflicts = 0
    first_try_at = time.monotonic()
    while time.monotonic() - first_try_at < 30:
        with grpc.insecure_channel(survivor) as channel:
            try:
                answers = list(
                    inference_pb2_grpc.InferenceStub(channel).Generate(retry, timeout=120)
                )
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
                assert "still in progress" in err.details()
                assert int(dict(err.trailing_metadata())["retry-after"]) <= LEASE_S + 1
                conflicts += 1
                time.sleep(0.2)
    print(f"replica stopped the dead router's requests in {stopped_s:.2f} s; {conflicts} x 409")
    assert answers and answers[-1].finish_reason == "length"
    assert sum(len(a.token_ids) for a in answers) == LONG
