"""`oss-serve up` end to end, as a user runs it: a subprocess on free ports, /ready, the
printed key, plain HTTP (what curl sends), the official `openai` client (non-stream and
stream), gRPC, then SIGTERM: exit code 0 and no process left behind."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.e2e.up_process import UpProcess, left_behind
from tests.router.stack import generate

pytestmark = [pytest.mark.e2e]

READY_TIMEOUT_S = 180.0
MODEL = "gpt-oss-tiny-2l"
MESSAGES = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> UpProcess:
    running = UpProcess(tmp_path_factory.mktemp("up"), "--model", str(tiny_checkpoint)).start()
    try:
        running.wait_ready(READY_TIMEOUT_S)
        running.wait_banner()
        yield running
    finally:
        running.kill_tree()


@pytest.fixture(scope="module")
def client(up: UpProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{up.base_url}/v1", api_key=up.api_key(), max_retries=0)


def test_up_prints_the_urls_and_the_generated_key_exactly_once(up: UpProcess):
    output = up.wait_banner()
    key = up.api_key()
    assert key.startswith("sk-oss-") and len(key) > 30
    assert output.count(key) == 1, "the key is printed once and never logged"
    assert f"{up.base_url}/v1" in output and f"127.0.0.1:{up.grpc_port}" in output
    assert "replica 0: weights loaded" in output  # the weight progress, as a line off a terminal
    for component in ("redis-server", "ray runtime", "router", "replica 0"):
        assert f"✓ {component}" in output


def test_plain_http_chat_needs_the_printed_key_and_answers_with_it(up: UpProcess):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8}
    url = f"{up.base_url}/v1/chat/completions"
    assert httpx.post(url, json=body, timeout=30).status_code == 401
    reply = httpx.post(
        url, json=body, headers={"Authorization": f"Bearer {up.api_key()}"}, timeout=60
    )
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert (
        choice["finish_reason"] in ("length", "stop")
        and reply.json()["usage"]["completion_tokens"] > 0
    )


def test_openai_client_streams_the_same_greedy_answer_it_returns_whole(client: openai.OpenAI):
    models = [m.id for m in client.models.list()]
    assert models == [MODEL]
    args = {"model": models[0], "messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    whole = client.chat.completions.create(**args)
    message = whole.choices[0].message
    streamed = {"content": "", "reasoning": ""}
    for chunk in client.chat.completions.create(**args, stream=True):
        if chunk.choices:
            delta = chunk.choices[0].delta
            streamed["content"] += delta.content or ""
            streamed["reasoning"] += getattr(delta, "reasoning", None) or ""
    assert streamed["content"] == (message.content or "")
    assert streamed["reasoning"] == (getattr(message, "reasoning", None) or "")
    assert whole.usage is not None and whole.usage.completion_tokens == 12


def test_grpc_generate_answers_on_the_printed_address(up: UpProcess):
    tokens, finish_reason, _ = generate(
        f"127.0.0.1:{up.grpc_port}", [200006, 1428, 200008], max_tokens=4
    )
    assert len(tokens) == 4 and finish_reason == "length"


def test_a_replica_whose_process_dies_is_restarted_and_serves_again(up: UpProcess, client):
    actors = [p for p in up.tree() if "ReplicaActor" in " ".join(p.cmdline())]
    assert len(actors) == 1
    actors[0].kill()
    deadline = time.monotonic() + 90
    while "✓ replica 0 restarted" not in up.output():
        assert time.monotonic() < deadline, up.output()
        time.sleep(0.2)
    up.wait_ready(60)
    reply = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 4


def test_sigterm_stops_everything_in_order_with_no_process_left(up: UpProcess):
    processes = up.tree()
    names = " ".join(p.name() for p in processes)
    assert "redis-server" in names and "raylet" in names and "ReplicaActor" in names, names
    assert up.terminate() == 0, up.output()
    assert left_behind(processes) == []
    output = up.output()
    order = [
        "stopping the HTTP API",
        "replica(s) (draining)",
        "stopping the router",
        "stopping Ray",
        "stopping redis-server",
    ]
    positions = [output.index(step) for step in order]
    assert positions == sorted(positions), output
