"""The gate of the one request pipeline, seen from both front ends of a real stack (router
with `--api-key`, real Redis, a tiny-model replica): gRPC asks for the key as HTTP does,
a key's rate limit is one budget across gRPC and HTTP, gRPC requests are accounted per
key, and gRPC refuses what HTTP refuses (counts, sizes, ids), naming the field."""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from oss_serve.protos import inference_pb2, inference_pb2_grpc
from oss_serve.router.auth.keys import digest
from oss_serve.router.auth.usage import UsageRecorder
from oss_serve.streams.keys import RedisKeys
from oss_serve.streams.redis_client import connect
from tests.router.auth.helpers import add_key
from tests.router.http.stack import API_KEY, MAX_BODY_BYTES, TINY_MODEL
from tests.router.stack import key_metadata

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
PROMPT = list(range(1000, 1010))


def _generate_request(max_tokens: int = 2, **fields) -> inference_pb2.GenerateRequest:
    fields.setdefault("model", TINY_MODEL)
    fields.setdefault(
        "sampling", inference_pb2.SamplingParams(temperature=0, max_tokens=max_tokens)
    )
    return inference_pb2.GenerateRequest(prompt_token_ids=PROMPT, **fields)


def _chat_request(**fields) -> inference_pb2.ChatCompletionRequest:
    fields.setdefault("messages", [inference_pb2.ChatMessage(role="user", content="hi")])
    return inference_pb2.ChatCompletionRequest(
        model=TINY_MODEL, sampling=inference_pb2.SamplingParams(max_tokens=2), **fields
    )


@pytest.fixture(scope="module")
def stub(stack):
    with grpc.insecure_channel(stack.router.router.address) as channel:
        yield inference_pb2_grpc.InferenceStub(channel)


@pytest.fixture(scope="module")
def stack(serving_stack):
    return serving_stack


def _refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        list(result) if not isinstance(result, inference_pb2.ListModelsResponse) else None
    return caught.value


def test_grpc_without_a_key_is_unauthenticated_and_with_one_served(stub):
    calls = {
        "Generate": lambda md: stub.Generate(_generate_request(), timeout=30, metadata=md),
        "ChatCompletion": lambda md: stub.ChatCompletion(_chat_request(), timeout=30, metadata=md),
        "ListModels": lambda md: stub.ListModels(
            inference_pb2.ListModelsRequest(), timeout=30, metadata=md
        ),
    }
    for name, call in calls.items():
        missing = _refusal(lambda call=call: call(()))
        assert missing.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert "missing API key" in missing.details() and "Bearer" in missing.details()
        wrong = _refusal(lambda call=call: call(key_metadata("sk-not-a-key")))
        assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert wrong.details() == "invalid API key"
        assert "sk-not-a-key" not in wrong.details()
    chunks = list(calls["Generate"](key_metadata(API_KEY)))
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 2
    chat = list(calls["ChatCompletion"]((("x-api-key", API_KEY),)))
    assert chat[-1].usage.completion_tokens == 2
    models = calls["ListModels"](key_metadata(API_KEY))
    assert [m.id for m in models.models] == [TINY_MODEL]


def test_a_key_rate_limit_is_one_budget_across_grpc_and_http(stack, stub):
    key = add_key(stack.redis_url, stack.namespace, requests_per_min=3)
    metadata = key_metadata(key)
    for _ in range(2):
        list(stub.Generate(_generate_request(1), timeout=30, metadata=metadata))
    chat = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    http = httpx.Client(base_url=stack.router.base_url, headers={"Authorization": f"Bearer {key}"})
    assert http.post("/chat/completions", json=chat, timeout=30).status_code == 200
    refused = _refusal(lambda: stub.Generate(_generate_request(1), timeout=30, metadata=metadata))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit reached: 3 requests per minute" in refused.details()
    retry_after = int(dict(refused.trailing_metadata())["retry-after"])
    status = rpc_status.from_call(refused)
    assert status is not None and len(status.details) == 1
    retry = error_details_pb2.RetryInfo()
    status.details[0].Unpack(retry)
    assert 1 <= retry.retry_delay.seconds == retry_after <= 60
    over = http.post("/chat/completions", json=chat, timeout=30)
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_requests"


def test_grpc_requests_are_accounted_to_their_key(stack, stub):
    key = add_key(stack.redis_url, stack.namespace)
    list(stub.Generate(_generate_request(3), timeout=30, metadata=key_metadata(key)))
    chat = list(stub.ChatCompletion(_chat_request(), timeout=30, metadata=key_metadata(key)))

    async def read():
        redis = connect(stack.redis_url)
        try:
            return await UsageRecorder(redis, RedisKeys(stack.namespace)).read(digest(key)[:16])
        finally:
            await redis.aclose()

    deadline = time.monotonic() + 10
    while (usage := asyncio.run(read())).requests < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # accounting is written just after the last chunk
    assert usage.requests == 2
    assert usage.completion_tokens == 3 + 2
    assert usage.prompt_tokens == len(PROMPT) + chat[-1].usage.prompt_tokens


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (_chat_request(messages=[inference_pb2.ChatMessage(role="user", content="x")] * 65), "messages"),
        (_chat_request(tools=[inference_pb2.Tool(function=inference_pb2.FunctionDefinition(name="f"))] * 17), "tools"),
        (_chat_request(options=inference_pb2.RequestOptions(request_id="r" * 300)), "options.request_id"),
        (_chat_request(user="u" * 600), "user"),
        (_chat_request(options=inference_pb2.RequestOptions(session_key="s" * 600)), "options.session_key"),
        (_chat_request(tool_choice_json="{", tools=[inference_pb2.Tool(function=inference_pb2.FunctionDefinition(name="f"))]), "tool_choice"),
        (_generate_request(options=inference_pb2.RequestOptions(lane=7)), "options.lane"),
        (_generate_request(sampling=inference_pb2.SamplingParams(top_p=float("nan"))), "sampling.top_p"),
        (_generate_request(model="m" * 300), "model"),
    ],
)  # fmt: skip
def test_grpc_refuses_what_http_refuses_naming_the_field(stub, request_, field):
    method = (
        stub.Generate
        if isinstance(request_, inference_pb2.GenerateRequest)
        else stub.ChatCompletion
    )
    refused = _refusal(lambda: method(request_, timeout=30, metadata=key_metadata(API_KEY)))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in refused.details()


def test_a_grpc_message_over_the_body_limit_is_refused_and_the_router_keeps_serving(stub):
    huge = _chat_request(
        messages=[inference_pb2.ChatMessage(role="user", content="x" * (MAX_BODY_BYTES + 10))]
    )
    refused = _refusal(
        lambda: stub.ChatCompletion(huge, timeout=30, metadata=key_metadata(API_KEY))
    )
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    chunks = list(stub.Generate(_generate_request(), timeout=30, metadata=key_metadata(API_KEY)))
    assert chunks[-1].finish_reason == "length"


def test_a_client_deadline_is_cut_to_the_routers_request_timeout(stack):
    router = stack.add_router(request_timeout_s=0.5)
    try:
        request = _generate_request(900)
        request.sampling.ignore_eos = True
        with grpc.insecure_channel(router.router.address) as channel:
            started = time.monotonic()
            refused = _refusal(
                lambda: inference_pb2_grpc.InferenceStub(channel).Generate(
                    request, timeout=600, metadata=key_metadata(API_KEY)
                )
            )
        assert refused.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "0.5 s" in refused.details() and time.monotonic() - started < 30
    finally:
        stack.routers.remove(router)
        router.stop()
