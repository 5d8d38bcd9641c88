"""Generate and ChatCompletion through two routers -> Redis -> two replicas -> back,
all real processes (`oss-serve router`, `oss-serve replica` on the tiny model)."""

from __future__ import annotations

import concurrent.futures
import time
import uuid

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from oss_serve.common.vocab import o200k_harmony
from oss_serve.protos import inference_pb2, inference_pb2_grpc
from tests.router.servers import redis_server
from tests.router.stack import (
    TINY_MODEL,
    generate,
    prefix_queries,
    queue_is_empty,
    start_replica,
    start_router,
    wait_for_replicas,
    wait_for_router,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]
__all__ = ["redis_server"]
REPLICAS = ("replica-a", "replica-b")


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    replicas = [start_replica(redis_server.url, namespace, r, folder) for r in REPLICAS]
    routers = [start_router(redis_server.url, namespace, folder, f"router-{i}") for i in range(2)]
    procs = replicas + [p for p, _ in routers]
    try:
        wait_for_replicas(redis_server.url, namespace, REPLICAS, procs)
        addresses = [address for _, address in routers]
        for address in addresses:
            wait_for_router(address)
        yield {
            "addresses": addresses,
            "namespace": namespace,
            "url": redis_server.url,
            "folder": folder,
            "procs": procs,
        }
    finally:
        for proc in procs:
            proc.stop()


def test_generate_through_both_routers_gives_the_same_greedy_tokens_and_their_text(stack):
    prompt = list(range(1000, 1040))
    results = [generate(address, prompt, max_tokens=12) for address in stack["addresses"]]
    (tokens_a, finish_a, chunks_a), (tokens_b, finish_b, _) = results
    assert len(tokens_a) == 12 and tokens_a == tokens_b
    assert finish_a == finish_b == "length"
    text = "".join(c.text for c in chunks_a)
    assert text == o200k_harmony().decode(tokens_a)
    usage = chunks_a[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (40, 12)


def test_concurrent_requests_from_two_routers_all_complete_on_both_replicas(stack):
    def one(i: int) -> tuple[list[int], str]:
        tokens, finish, _ = generate(
            stack["addresses"][i % 2], [500 + i] * 20 + list(range(30)), max_tokens=8
        )
        return tokens, finish

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    assert all(len(tokens) == 8 and finish == "length" for tokens, finish in results)
    client = redis.Redis.from_url(stack["url"])
    served = prefix_queries(client, stack["namespace"], REPLICAS)
    assert all(served.values()), f"both replicas should have served requests: {served}"
    assert queue_is_empty(stack["url"], stack["namespace"])


def test_chat_completion_streams_content_with_finish_and_usage(stack):
    request = inference_pb2.ChatCompletionRequest(
        model=TINY_MODEL,
        messages=[
            inference_pb2.ChatMessage(role="system", content="Be brief."),
            inference_pb2.ChatMessage(role="user", content="Say hi."),
        ],
        sampling=inference_pb2.SamplingParams(temperature=0.0, max_tokens=10),
        reasoning_effort="low",
    )
    with grpc.insecure_channel(stack["addresses"][1]) as channel:
        chunks = list(inference_pb2_grpc.InferenceStub(channel).ChatCompletion(request, timeout=60))
    assert chunks[0].role == "assistant" and chunks[0].model == TINY_MODEL
    assert chunks[-1].finish_reason in ("length", "stop", "tool_calls")
    assert chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens > 20  # the rendered harmony prompt
    text = "".join(c.content + c.reasoning for c in chunks)
    assert "<|" not in text  # never a harmony special token in the text


def test_sticky_session_keeps_one_replica(stack):
    client = redis.Redis.from_url(stack["url"])

    def settled() -> dict[str, int]:
        """The counts once 1.1 s (several heartbeats) passes without a change: the load
        reports of earlier tests' requests have arrived."""
        last = prefix_queries(client, stack["namespace"], REPLICAS)
        for _ in range(20):
            time.sleep(1.1)
            now = prefix_queries(client, stack["namespace"], REPLICAS)
            if now == last:
                return now
            last = now
        raise AssertionError(f"replica load reports kept changing: {last}")

    before = settled()
    for i in range(4):
        generate(stack["addresses"][i % 2], [7000 + i] * 17, max_tokens=2, session_key="alice")
    grown = {r for r, n in settled().items() if n > before[r]}
    assert len(grown) == 1, f"one session should stay on one replica, grew: {grown}"


def test_list_models_and_health(stack):
    with grpc.insecure_channel(stack["addresses"][0]) as channel:
        models = inference_pb2_grpc.InferenceStub(channel).ListModels(
            inference_pb2.ListModelsRequest()
        )
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="oss_serve.v1.Inference")
        )
    assert [(m.id, m.max_model_len) for m in models.models] == [(TINY_MODEL, 1024)]
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("request_kwargs", "code", "names"),
    [
        ({"prompt_token_ids": []}, grpc.StatusCode.INVALID_ARGUMENT, "prompt_token_ids"),
        (
            {"prompt_token_ids": [1], "sampling": {"temperature": -1}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "sampling.temperature",
        ),
        (
            {"prompt_token_ids": [1], "sampling": {"max_tokens": 5000}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_tokens",
        ),
        ({"prompt_token_ids": [300000]}, grpc.StatusCode.INVALID_ARGUMENT, "prompt_token_ids"),
        ({"prompt_token_ids": [1], "model": "gpt-5"}, grpc.StatusCode.NOT_FOUND, "gpt-oss-tiny"),
    ],
)
def test_bad_generate_requests_fail_with_a_status_naming_the_problem(
    stack, request_kwargs, code, names
):
    sampling = inference_pb2.SamplingParams(**request_kwargs.pop("sampling", {}))
    request = inference_pb2.GenerateRequest(sampling=sampling, **request_kwargs)
    with (
        grpc.insecure_channel(stack["addresses"][0]) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        list(inference_pb2_grpc.InferenceStub(channel).Generate(request, timeout=10))
    assert caught.value.code() == code
    assert names in caught.value.details()


def test_bad_chat_request_names_the_field(stack):
    request = inference_pb2.ChatCompletionRequest(
        messages=[inference_pb2.ChatMessage(role="wizard", content="hi")]
    )
    with (
        grpc.insecure_channel(stack["addresses"][0]) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        list(inference_pb2_grpc.InferenceStub(channel).ChatCompletion(request, timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages[0].role" in caught.value.details()
    assert rpc_status.from_call(caught.value) is None  # no rich details for plain errors


def test_a_router_started_after_the_events_were_trimmed_routes_to_the_cached_prefix(stack):
    """The hot prefixes' events are gone from the kv-events stream; the replicas' snapshots
    still tell a new router where they are cached."""
    prompts = [[9000 + 100 * i + j for j in range(64)] for i in range(4)]
    for i, prompt in enumerate(prompts):
        generate(stack["addresses"][i % 2], prompt, max_tokens=1)
    time.sleep(1.0)  # the snapshots are rewritten every 0.2 s here
    client = redis.Redis.from_url(stack["url"])
    client.xtrim(f"{stack['namespace']}:kv-events", maxlen=0)
    router, address = start_router(stack["url"], stack["namespace"], stack["folder"], "late")
    stack["procs"].append(router)
    wait_for_router(address)
    for prompt in prompts:
        _, _, chunks = generate(address, [*prompt, 1], max_tokens=1)
        assert chunks[-1].usage.cached_prompt_tokens >= 48, "routed away from its cached prefix"
