"""The client retry contract on the real stack (router, Redis, a tiny-model replica): the
same request id (gRPC `options.request_id`, HTTP `Idempotency-Key`) gives the same
completion without running again, or a clear 409 (a different request; the first attempt
still running, with Retry-After)."""

from __future__ import annotations

import threading
import time
import uuid

import grpc
import httpx
import openai
import pytest
import redis

from oss_serve.protos import inference_pb2, inference_pb2_grpc
from tests.router.http.stack import API_KEY, TINY_MODEL
from tests.router.stack import key_metadata

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
# unseeded sampling on a random-weight model: two runs practically never agree
RANDOM = inference_pb2.SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True)


def _generate(address: str, request_id: str, prompt: list[int], sampling=RANDOM):
    request = inference_pb2.GenerateRequest(
        prompt_token_ids=prompt,
        sampling=sampling,
        options=inference_pb2.RequestOptions(request_id=request_id),
    )
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        chunks = list(stub.Generate(request, timeout=60, metadata=key_metadata(API_KEY)))
    return [t for c in chunks for t in c.token_ids], chunks[-1]


def test_a_grpc_retry_with_the_same_request_id_replays_the_completion(serving_stack):
    address = serving_stack.router.router.address
    request_id = f"retry-{uuid.uuid4().hex}"
    first, last = _generate(address, request_id, [11, 12, 13])
    again, again_last = _generate(address, request_id, [11, 12, 13])
    fresh, _ = _generate(address, f"other-{uuid.uuid4().hex}", [11, 12, 13])
    assert len(first) == 24 and again == first and fresh != first
    assert again_last.request_id == request_id and again_last.finish_reason == "length"
    assert again_last.usage.completion_tokens == last.usage.completion_tokens == 24


def test_a_request_id_reused_for_another_request_is_refused(serving_stack):
    address = serving_stack.router.router.address
    request_id = f"reuse-{uuid.uuid4().hex}"
    _generate(address, request_id, [21, 22, 23])
    with pytest.raises(grpc.RpcError) as refused:
        _generate(address, request_id, [21, 22, 24])
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "different request" in refused.value.details()


def test_an_http_retry_with_the_idempotency_key_gets_the_same_answer_or_409(serving_stack):
    client = openai.OpenAI(base_url=serving_stack.router.base_url, api_key=API_KEY, max_retries=0)
    key = {"Idempotency-Key": f"chat-{uuid.uuid4().hex}"}
    body = {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "Say something random."}],
        "max_tokens": 20,
        "temperature": 1.0,
    }
    first = client.chat.completions.create(**body, extra_headers=key)
    again = client.chat.completions.create(**body, extra_headers=key)
    assert again.choices[0].message == first.choices[0].message
    assert again.usage == first.usage
    other = dict(body, messages=[{"role": "user", "content": "Something else."}])
    with pytest.raises(openai.ConflictError) as conflict:
        client.chat.completions.create(**other, extra_headers=key)
    assert conflict.value.code == "idempotency_conflict"


def test_a_retry_while_the_first_attempt_runs_gets_409_with_retry_after(serving_stack):
    url = f"{serving_stack.router.base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": uuid.uuid4().hex}
    body = {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "a long story"}],
        "max_tokens": 400,
        "ignore_eos": True,
    }
    outcome: dict[str, httpx.Response] = {}
    first = threading.Thread(
        target=lambda: outcome.update(
            first=httpx.post(url, json=body, headers=headers, timeout=120)
        )
    )
    first.start()
    # the first attempt holds its record (state running) before the retry is sent
    records = redis.Redis.from_url(serving_stack.redis_url, decode_responses=True)
    deadline = time.monotonic() + 30
    while not any(
        records.hget(key, "state") == "running"
        for key in records.scan_iter(f"{serving_stack.namespace}:idem:*")
    ):
        assert time.monotonic() < deadline, "the first attempt never ran"
        time.sleep(0.02)
    retry = httpx.post(url, json=body, headers=headers, timeout=60)
    first.join(timeout=120)
    assert retry.status_code == 409, retry.text
    assert int(retry.headers["Retry-After"]) >= 1
    assert "still in progress" in retry.json()["error"]["message"]
    assert outcome["first"].status_code == 200
    replay = httpx.post(url, json=body, headers=headers, timeout=60)
    assert replay.json()["choices"] == outcome["first"].json()["choices"]
