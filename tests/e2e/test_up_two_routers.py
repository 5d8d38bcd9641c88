"""Two routers and two Ray replicas on one Redis: `oss-serve up --replicas 2` (its router,
and each replica a Ray actor) plus a second `oss-serve router` process. gRPC `Generate`
through either router gives the demo model's single-process greedy tokens, both replicas
serve, and `ChatCompletion` parses the same answer on both routers.
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid

import grpc
import pytest
import redis

from oss_serve import LLM, SamplingParams
from oss_serve.common.vocab import o200k_harmony
from oss_serve.protos import inference_pb2, inference_pb2_grpc
from oss_serve.workers.training.demo_model import ensure_demo_model
from tests.e2e.test_up import MODEL, READY_TIMEOUT_S
from tests.e2e.up_process import UpProcess, left_behind
from tests.router.servers import RedisServer
from tests.router.stack import (
    generate,
    key_metadata,
    prefix_queries,
    start_router,
    wait_for_router,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]  # first run: trains the demo model


def harmony_turn(text: str) -> list[int]:
    encoding = o200k_harmony()
    return encoding.encode(
        f"<|start|>user<|message|>{text}<|end|><|start|>assistant", allowed_special="all"
    )


PROMPTS = [  # user turns the demo model answers, and two raw token runs
    harmony_turn("Hello!"),
    harmony_turn("What is 7 + 5?"),
    harmony_turn("What is 3 + 4?"),
    harmony_turn("What's the weather in Paris?"),
    [1000 + i for i in range(40)],
    [7] * 33,
]
MAX_TOKENS = 24
API_KEY = "sk-two-routers-test-key"
CLUSTER_TOKEN = "oss-cluster-two-routers-test-token"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("two-routers")
    namespace = f"two-routers-{uuid.uuid4().hex[:6]}"
    env = {"OSS_SERVE_REDIS_NAMESPACE": namespace, "OSS_SERVE_CLUSTER_TOKEN": CLUSTER_TOKEN}
    server = RedisServer(folder / "redis").start()
    up = UpProcess(
        folder / "up", "--replicas", "2", "--redis-url", server.url, "--api-key", API_KEY, env=env
    )
    second = None
    try:
        up.start().wait_ready(READY_TIMEOUT_S)
        second, address = start_router(
            server.url, namespace, folder, "router-b", extra_args=["--api-key", API_KEY], env=env
        )
        wait_for_router(address, api_key=API_KEY)
        yield {
            "up": up,
            "addresses": [f"127.0.0.1:{up.grpc_port}", address],
            "redis": redis.Redis.from_url(server.url),
            "namespace": namespace,
        }
        processes = up.tree()
        second.stop()
        assert up.terminate() == 0, up.output()
        assert left_behind(processes) == []
    finally:
        if second is not None:
            second.kill()
        up.kill_tree()
        server.stop()


def test_generate_through_either_router_equals_the_single_process_engine(cluster):
    llm = LLM(str(ensure_demo_model()), dtype="float32", kv_cache_memory=64 << 20)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    expected = [
        list(o.outputs[0].token_ids)
        for o in llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    ]
    jobs = [(i, cluster["addresses"][i % 2]) for i in range(len(PROMPTS) * 2)]

    def run(job: tuple[int, str]) -> list[int]:
        index, address = job
        prompt = PROMPTS[index % len(PROMPTS)]
        sampling = inference_pb2.SamplingParams(
            temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True
        )
        tokens, finish, _ = generate(
            address, prompt, sampling=sampling, timeout_s=120, api_key=API_KEY
        )
        assert finish == "length"
        return tokens

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(run, jobs))
    for (index, address), tokens in zip(jobs, results, strict=True):
        assert tokens == expected[index % len(PROMPTS)], (address, index)
    time.sleep(1.5)  # the replicas' next load reports
    served = prefix_queries(cluster["redis"], cluster["namespace"])
    assert len(served) == 2 and all(served.values()), served


def test_chat_completion_gives_the_same_answer_on_both_routers(cluster):
    request = inference_pb2.ChatCompletionRequest(
        model=MODEL,
        messages=[inference_pb2.ChatMessage(role="user", content="What is 7 + 5?")],
        sampling=inference_pb2.SamplingParams(temperature=0.0, max_tokens=200),
        reasoning_effort="low",
    )
    answers = []
    for address in cluster["addresses"]:
        with grpc.insecure_channel(address) as channel:
            chunks = list(
                inference_pb2_grpc.InferenceStub(channel).ChatCompletion(
                    request, timeout=120, metadata=key_metadata(API_KEY)
                )
            )
        content = "".join(c.content for c in chunks)
        reasoning = "".join(c.reasoning for c in chunks)
        assert chunks[-1].finish_reason == "stop" and reasoning and content.strip()
        answers.append((reasoning, content))
    assert answers[0] == answers[1]
