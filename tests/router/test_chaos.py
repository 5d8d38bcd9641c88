"""No request lost: a replica process killed mid-stream, and Redis restarted (AOF) under load.

Real processes throughout: redis-server, `oss-serve replica` x2 (tiny model), `oss-serve
router`. Half the requests are greedy, half seeded non-greedy with penalties (a resumed
request continues its sampling exactly): an undisturbed run is the reference for every token.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from oss_serve.protos import inference_pb2
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
REPLICAS = ("chaos-a", "chaos-b")
NUM_REQUESTS = 20
MAX_TOKENS = 48
PROMPTS = [[3000 + i] * 9 + list(range(100 + i, 130 + i)) for i in range(NUM_REQUESTS)]


def sampling(index: int) -> inference_pb2.SamplingParams:
    """Odd requests greedy, even ones seeded. top_k keeps the draw away from the random
    model's near-uniform tail, where batch-size-dependent float rounding of the logits
    would move an inverse-CDF draw to a neighbouring token."""
    if index % 2:
        return inference_pb2.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    return inference_pb2.SamplingParams(
        temperature=0.8, top_k=4, seed=100 + index, max_tokens=MAX_TOKENS, ignore_eos=True,
        presence_penalty=0.5, frequency_penalty=0.4, repetition_penalty=1.2,
    )  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chaos")
    server = RedisServer(folder / "redis", appendonly=True).start()
    namespace = f"chaos-{uuid.uuid4().hex[:6]}"
    replicas = {r: start_replica(server.url, namespace, r, folder) for r in REPLICAS}
    router, address = start_router(server.url, namespace, folder, "router")
    try:
        wait_for_replicas(server.url, namespace, REPLICAS, [*replicas.values(), router])
        wait_for_router(address)
        yield {
            "server": server,
            "namespace": namespace,
            "replicas": replicas,
            "address": address,
            "folder": folder,
        }
    finally:
        router.stop()
        for proc in replicas.values():
            proc.stop()
        server.stop()


@pytest.fixture(scope="module")
def reference(stack):
    """Every prompt's output, undisturbed."""
    with ThreadPoolExecutor(NUM_REQUESTS) as pool:
        results = list(
            pool.map(
                lambda i: generate(stack["address"], PROMPTS[i], sampling=sampling(i)),
                range(NUM_REQUESTS),
            )
        )
    assert all(len(tokens) == MAX_TOKENS for tokens, _, _ in results)
    return [tokens for tokens, _, _ in results]


class Progress:
    """Counts tokens received per request, so the test strikes mid-stream."""

    def __init__(self) -> None:
        self.counts = [0] * NUM_REQUESTS
        self.lock = threading.Lock()

    def callback(self, index: int):
        def on_chunk(chunk) -> None:
            with self.lock:
                self.counts[index] += len(chunk.token_ids)

        return on_chunk

    def wait_all_streaming(self, at_least: int, timeout_s: float = 60) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if min(self.counts) >= at_least:
                    return list(self.counts)
            time.sleep(0.005)
        raise TimeoutError(f"not every request streamed {at_least} tokens: {self.counts}")


def run_all(stack, progress: Progress, session_key: str = ""):
    pool = ThreadPoolExecutor(NUM_REQUESTS)
    futures = [
        pool.submit(
            generate, stack["address"], prompt, sampling=sampling(i), session_key=session_key,
            on_chunk=progress.callback(i), timeout_s=120,
        )
        for i, prompt in enumerate(PROMPTS)
    ]  # fmt: skip
    return pool, futures


def test_killing_a_replica_mid_stream_loses_and_repeats_no_token(stack, reference):
    server, namespace = stack["server"], stack["namespace"]
    progress = Progress()
    pool, futures = run_all(stack, progress, session_key="chaos")  # a session pins all 20 to one
    at_kill = progress.wait_all_streaming(at_least=2)
    session = hashlib.sha256(b"chaos").hexdigest()[:32]
    victim = redis.Redis.from_url(server.url).get(f"{namespace}:session:{session}").decode()
    stack["replicas"][victim].kill()
    results = [f.result(timeout=120) for f in futures]
    pool.shutdown()
    assert max(at_kill) < MAX_TOKENS, f"some requests finished before the kill: {at_kill}"
    for (tokens, finish, _), expected in zip(results, reference, strict=True):
        assert finish == "length"
        assert tokens == expected  # no gap, no repeat, same tokens as undisturbed
    assert queue_is_empty(server.url, namespace)
    survivor = next(r for r in REPLICAS if r != victim)
    assert "claimed idle entries" in stack["replicas"][survivor].log()
    # a replacement comes up under the dead one's id for the next test
    stack["replicas"][victim] = start_replica(server.url, namespace, victim, stack["folder"])
    wait_for_replicas(server.url, namespace, REPLICAS, stack["replicas"].values())


def test_restarting_redis_under_load_loses_no_request(stack, reference):
    server, namespace = stack["server"], stack["namespace"]
    progress = Progress()
    pool, futures = run_all(stack, progress)
    progress.wait_all_streaming(at_least=2)
    server.stop()  # SIGTERM: the AOF is flushed
    late = ThreadPoolExecutor(2).submit(
        generate, stack["address"], PROMPTS[0], sampling=sampling(0)
    )
    time.sleep(1.5)  # longer than the heartbeat TTL: every key lapses while Redis is down
    server.start()  # same port, same folder: reloads the AOF
    results = [f.result(timeout=120) for f in futures]
    pool.shutdown()
    assert [tokens for tokens, _, _ in results] == reference
    late_tokens, late_finish, _ = late.result(timeout=120)
    assert (late_tokens, late_finish) == (reference[0], "length")  # queued through the outage
    assert queue_is_empty(server.url, namespace, wait_s=10)
