"""/metrics (Prometheus text, vLLM names) moves under load; /health and /ready; a client
that hangs up aborts its request in the replica's engine (streamed or not)."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time

import httpx
import openai
import pytest

from tests.router.http.stack import API_KEY, TINY_MODEL
from tests.router.metrics_scrape import scrape, total

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
LONG = 900  # tokens: ~10 s of decoding on the tiny CPU model, far longer than the checks


def _root(stack) -> str:
    return stack.router.base_url.removesuffix("/v1")


def _wait_running(stack, wanted: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if int(stack.replica_load().get("running", "-1")) == wanted:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"replica running never became {wanted}: {stack.replica_load()}")


def test_health_and_ready(stack):
    root = _root(stack)
    assert httpx.get(f"{root}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{root}/ready")
    assert ready.status_code == 200 and ready.json()["replicas"] == 1


def test_metrics_parse_and_move_under_load(stack):
    root = _root(stack)
    before = scrape(root)
    client = openai.OpenAI(base_url=stack.router.base_url, api_key=API_KEY, max_retries=0)
    running_seen = 0

    def one(seed: int) -> int:
        response = client.chat.completions.create(
            model=TINY_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=40, seed=seed
        )
        assert response.usage is not None
        return response.usage.completion_tokens

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(one, seed) for seed in range(6)]
        while not all(f.done() for f in futures):
            during = scrape(root)
            running_seen = max(running_seen, int(total(during, "vllm:num_requests_running")))
            time.sleep(0.1)
        generated = sum(f.result() for f in futures)
    after = scrape(root)
    replica = "model_name=gpt-oss-tiny,pool=default,replica=replica-http"
    assert f"vllm:num_requests_running{{{replica}}}" in after
    assert f"vllm:kv_cache_usage_perc{{{replica}}}" in after
    assert running_seen >= 1
    model = "model_name=gpt-oss-tiny"
    for name in (
        "vllm:e2e_request_latency_seconds_count",
        "vllm:time_to_first_token_seconds_count",
        "vllm:request_queue_time_seconds_count",
    ):
        assert after[f"{name}{{{model}}}"] - before.get(f"{name}{{{model}}}", 0) == 6
    tokens = "vllm:generation_tokens_total"
    assert after[f"{tokens}{{{model}}}"] - before.get(f"{tokens}{{{model}}}", 0) == generated
    assert total(after, "vllm:inter_token_latency_seconds_count") > total(
        before, "vllm:inter_token_latency_seconds_count"
    )
    assert total(after, "vllm:prefix_cache_queries_total") > total(
        before, "vllm:prefix_cache_queries_total"
    )
    ok = "endpoint=/v1/chat/completions,status=200"
    assert (
        after[f"oss_serve:http_requests_total{{{ok}}}"]
        - before.get(f"oss_serve:http_requests_total{{{ok}}}", 0)
        == 6
    )


def test_closing_a_stream_aborts_the_request_in_the_engine(stack):
    _wait_running(stack, 0, 10)
    body = {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "a long story"}],
        "max_tokens": LONG,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST", f"{stack.router.base_url}/chat/completions", json=body, headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        _wait_running(stack, 1, 10)
    closed_at = time.monotonic()
    stopped_at = _wait_running(stack, 0, 5)
    assert stopped_at - closed_at < 3.0  # the remaining ~LONG tokens would take far longer


def test_hanging_up_on_a_non_streamed_request_aborts_it_in_the_engine(stack):
    _wait_running(stack, 0, 10)
    host, port = stack.router.base_url.removeprefix("http://").removesuffix("/v1").split(":")
    payload = json.dumps(
        {"model": TINY_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": LONG}
    ).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(request)
        _wait_running(stack, 1, 10)
    closed_at = time.monotonic()
    stopped_at = _wait_running(stack, 0, 5)
    assert stopped_at - closed_at < 3.0
