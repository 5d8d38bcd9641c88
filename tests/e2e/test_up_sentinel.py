"""`oss-serve up --redis-url redis+sentinel://...` on a real Sentinel deployment (a primary,
a replica, three sentinels), the primary SIGKILLed under load: requests in flight complete
or fail with a retryable status, requests sent through the failover too, and the stack
serves new requests within 30 s of the failover."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from oss_serve.protos import inference_pb2
from tests.e2e.test_up import READY_TIMEOUT_S
from tests.e2e.test_up_two_routers import harmony_turn
from tests.e2e.up_process import UpProcess, left_behind
from tests.router.stack import generate
from tests.streams.sentinel import SentinelRedis

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1500)]
API_KEY = "sk-sentinel-test-key"
MAX_TOKENS = 160
IN_FLIGHT = 6
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("up-sentinel")
    sentinel = SentinelRedis(folder / "redis").start()
    env = {"OSS_SERVE_REDIS_NAMESPACE": f"sentinel-{uuid.uuid4().hex[:6]}"}
    up = UpProcess(folder / "up", "--redis-url", sentinel.url, "--api-key", API_KEY, env=env)
    try:
        up.start().wait_ready(READY_TIMEOUT_S)
        yield up, sentinel
        processes = up.tree()
        assert up.terminate() == 0, up.output()
        assert left_behind(processes) == []
    finally:
        up.kill_tree()
        sentinel.stop()


def _outcome(address: str, index: int, on_chunk=None) -> tuple[str, object]:
    sampling = inference_pb2.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    try:
        tokens, finish, _ = generate(
            address,
            harmony_turn(f"Hello number {index}!"),
            sampling=sampling,
            timeout_s=120,
            api_key=API_KEY,
            on_chunk=on_chunk,
        )
    except grpc.RpcError as err:
        return "failed", err.code()
    return "done", (len(tokens), finish)


def test_killing_the_redis_primary_under_load_loses_no_request(cluster):
    up, sentinel = cluster
    address = f"127.0.0.1:{up.grpc_port}"
    streamed = [0] * IN_FLIGHT
    lock = threading.Lock()

    def counter(index: int):
        def on_chunk(chunk) -> None:
            with lock:
                streamed[index] += len(chunk.token_ids)

        return on_chunk

    pool = ThreadPoolExecutor(IN_FLIGHT + 4)
    in_flight = [pool.submit(_outcome, address, i, counter(i)) for i in range(IN_FLIGHT)]
    deadline = time.monotonic() + 120
    while min(streamed) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert min(streamed) >= 2, streamed
    old_port = sentinel.primary_port()
    sentinel.kill_primary()
    during = [pool.submit(_outcome, address, 100 + i) for i in range(4)]  # sent into the outage
    failover_s = sentinel.wait_failover(old_port)
    failed_over_at = time.monotonic()
    served_again_s = None
    while time.monotonic() - failed_over_at < 60:
        kind, detail = _outcome(address, 200)
        if kind == "done":
            served_again_s = time.monotonic() - failed_over_at
            break
        assert detail in RETRYABLE, detail
        time.sleep(0.5)
    outcomes = [f.result(timeout=180) for f in in_flight + during]
    pool.shutdown()
    print(f"failover {failover_s:.1f} s, serving again {served_again_s} s after it")
    assert served_again_s is not None and served_again_s < 30
    for kind, detail in outcomes:
        if kind == "done":
            assert detail == (MAX_TOKENS, "length")
        else:
            assert detail in RETRYABLE
    assert all(kind == "done" for kind, _ in outcomes[:IN_FLIGHT])  # streams need no Redis
