"""`oss-serve up` end to end, as a user runs it: the default (embedded demo) model, a
subprocess on free ports, /ready, the printed key; plain HTTP (what curl sends), the official
`openai` client and the README's quick-start commands as pasted; the demo model's behaviours
at temperature 0 (reasoning then answer, a get_weather call, an answer using the tool
result, JSON for a json_schema); gRPC; a replica that dies comes back; then SIGTERM: exit
code 0 and no process left behind.

The first run on a machine trains the demo model (a few minutes); later runs reuse it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import psutil
import pytest

from oss_serve.workers.training.demo_corpus import PERSON_FORMAT, WEATHER_TOOL
from tests.e2e.up_process import OSS_SERVE, READY_TIMEOUT_S, UpProcess, left_behind, ready_up
from tests.router.metrics_scrape import scrape, total
from tests.router.stack import generate

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]  # first run: trains the demo model

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "oss-serve-demo"
SERVED_COUNTERS = ("vllm:request_success", "vllm:prompt_tokens", "vllm:generation_tokens")
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
WEATHER_RESULT = {"temperature": 22, "unit": "celsius", "condition": "sunny"}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    with ready_up(tmp_path_factory.mktemp("up")) as running:
        yield running


@pytest.fixture(scope="module")
def client(up: UpProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{up.base_url}/v1", api_key=up.api_key(), max_retries=0)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_up_prints_the_urls_and_the_generated_key_exactly_once(up: UpProcess):
    output = up.wait_banner()
    key = up.api_key()
    assert key.startswith("sk-oss-") and len(key) > 30
    assert output.count(key) == 1, "the key is printed once and never logged"
    assert f"{up.base_url}/v1" in output and f"127.0.0.1:{up.grpc_port}" in output
    assert "replica 0: weights loaded" in output  # the weight progress, as a line off a terminal
    for component in ("demo model", "redis-server", "ray runtime", "router", "replica 0"):
        assert f"✓ {component}" in output


def test_plain_http_chat_needs_the_printed_key_and_answers_with_it(up: UpProcess):
    body = {"model": MODEL, "messages": user("Hello!"), "temperature": 0}
    url = f"{up.base_url}/v1/chat/completions"
    assert httpx.post(url, json=body, timeout=30).status_code == 401
    headers = {"Authorization": f"Bearer {up.api_key()}"}
    reply = httpx.post(url, json=body, headers=headers, timeout=60)
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"]


def test_chat_with_reasoning_effort_returns_reasoning_then_a_final_answer(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=user("What is 7 + 5?"), reasoning_effort="low", temperature=0
    )
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "stop"
    assert getattr(message, "reasoning", None), "the analysis channel comes back as reasoning"
    # the sum itself is the quick-start test's (default effort); at low effort the tiny demo
    # model's arithmetic is not reliable
    assert message.content and message.content.strip()
    assert reply.usage is not None and reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens > 0


def test_a_streamed_chat_gives_the_same_greedy_answer_as_a_whole_one(client):
    args = {"model": MODEL, "messages": user("Hello!"), "reasoning_effort": "medium"}
    whole = client.chat.completions.create(**args, temperature=0).choices[0].message
    streamed = {"content": "", "reasoning": ""}
    for chunk in client.chat.completions.create(**args, temperature=0, stream=True):
        if chunk.choices:
            delta = chunk.choices[0].delta
            streamed["content"] += delta.content or ""
            streamed["reasoning"] += getattr(delta, "reasoning", None) or ""
    assert streamed["content"] == whole.content and whole.content
    assert streamed["reasoning"] == getattr(whole, "reasoning", None)


def test_ignore_eos_generates_exactly_max_tokens_and_keeps_the_answer(client):
    """Benchmarks send ignore_eos for exact lengths: harmony's <|return|> is the model's EOS."""
    args = {"model": MODEL, "messages": user("Hello!"), "temperature": 0}
    ended = client.chat.completions.create(**args, max_tokens=200)
    assert ended.usage is not None and ended.usage.completion_tokens < 150
    forced = client.chat.completions.create(**args, max_tokens=150, extra_body={"ignore_eos": True})
    assert forced.usage is not None and forced.usage.completion_tokens == 150
    assert forced.choices[0].message.content == ended.choices[0].message.content


def weather_call(client: openai.OpenAI, city: str) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=MODEL,
        messages=user(f"What's the weather in {city}?"),
        tools=[WEATHER_TOOL],
        temperature=0,
    )


def test_a_get_weather_tool_gives_a_tool_call_with_valid_json_arguments(client):
    reply = weather_call(client, "Paris")
    assert reply.choices[0].finish_reason == "tool_calls"
    calls = reply.choices[0].message.tool_calls
    assert calls is not None and [call.function.name for call in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments) == {"location": "Paris"}


def test_the_tool_result_sent_back_is_used_in_the_answer(client):
    first = weather_call(client, "Paris").choices[0].message
    assert first.tool_calls
    messages = [
        *user("What's the weather in Paris?"),
        first.model_dump(exclude_none=True),
        {
            "role": "tool",
            "tool_call_id": first.tool_calls[0].id,
            "content": json.dumps(WEATHER_RESULT),
        },
    ]
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], temperature=0
    )
    answer = reply.choices[0].message.content or ""
    assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls
    assert "22°C" in answer and "sunny" in answer and "Paris" in answer


def test_a_json_schema_response_format_returns_valid_json(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=user("Zoe is 27 years old."),
        response_format=PERSON_FORMAT,  # type: ignore[arg-type]
        temperature=0,
    )
    value = json.loads(reply.choices[0].message.content or "")
    jsonschema.validate(value, PERSON_FORMAT["json_schema"]["schema"])  # the grammar's promise
    assert 0 < value["age"] < 100  # which age the tiny model copies is its training's luck


def quick_start_commands() -> list[str]:
    """The README's ```bash blocks between `## Quick start` and the next section."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def test_the_readme_quick_start_examples_work_as_pasted(up: UpProcess):
    commands = quick_start_commands()
    assert len(commands) == 2 and "curl" in commands[0] and "OpenAI(" in commands[1]
    env = {**os.environ, "OSS_SERVE_API_KEY": up.api_key()}
    outputs = []
    for command in commands:  # the README says port 8000: this run has its own
        command = command.replace("http://127.0.0.1:8000", up.base_url)
        done = subprocess.run(
            ["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert json.loads(outputs[0])["choices"][0]["message"]["content"]
    assert "tool call: get_weather {'location': 'Paris'}" in outputs[1]
    assert "22°C" in outputs[1] and "answer: " in outputs[1], outputs[1]


def test_grpc_generate_answers_on_the_printed_address(up: UpProcess):
    prompt = [200006, 1428, 200008]  # <|start|>user<|message|>
    address = f"127.0.0.1:{up.grpc_port}"
    tokens, finish_reason, _ = generate(address, prompt, max_tokens=4, api_key=up.api_key())
    assert len(tokens) == 4 and finish_reason == "length"


def _served_totals(up: UpProcess) -> dict[str, float]:
    """The router's own counters of finished requests and their tokens (all labels)."""
    values = scrape(up.base_url)
    return {name: total(values, f"{name}_total") for name in SERVED_COUNTERS}


def test_bench_measures_the_stack_as_its_own_counters_do(up: UpProcess, tmp_path: Path):
    """`oss-serve bench` against `up`, as a user runs it: every request succeeds with exactly
    --output-len tokens, and the requests and tokens it counts are what the router served."""
    before = _served_totals(up)
    args = [
        *OSS_SERVE, "bench", "--base-url", up.base_url, "--model", MODEL,
        "--api-key", up.api_key(), "--concurrency", "1,4", "--num-requests", "6",
        "--warmup-requests", "0", "--input-len", "uniform:32:96", "--output-len", "24",
        "--ignore-eos", "--output-dir", str(tmp_path), "--label", "up",
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    served = {k: v - before[k] for k, v in _served_totals(up).items()}
    runs = json.loads((tmp_path / "result.json").read_text())["runs"]
    details = [r for run in runs for r in run["requests_detail"]]
    assert [run["requests"]["completed"] for run in runs] == [6, 6], runs[0]["requests"]
    for request in details:
        assert request["error"] is None and request["usage_source"] == "usage"
        assert request["output_tokens"] == 24
        assert 0 < request["ttft_s"] < request["e2e_s"]
        assert len(request["itl_s"]) == request["chunks"] - 1
    assert served["vllm:request_success"] == len(details) == 12
    assert served["vllm:generation_tokens"] == sum(r["output_tokens"] for r in details)
    assert served["vllm:prompt_tokens"] == sum(r["input_tokens"] for r in details)
    assert (tmp_path / "report.md").is_file() and (tmp_path / "throughput_vs_load.png").is_file()


def test_a_replica_whose_process_dies_is_restarted_and_serves_again(up: UpProcess, client):
    actors = [p for p in up.tree() if "ReplicaHostActor" in " ".join(p.cmdline())]
    assert len(actors) == 1
    question = {"model": MODEL, "messages": user("What is 7 + 5?"), "temperature": 0}
    before = client.chat.completions.create(**question).choices[0].message.content
    actors[0].kill()
    deadline = time.monotonic() + 90
    while "✓ replica 0 restarted" not in up.output():
        assert time.monotonic() < deadline, up.output()
        time.sleep(0.2)
    up.wait_ready(60)
    after = client.chat.completions.create(**question).choices[0].message.content
    assert after and after == before  # the restarted replica serves the same greedy answer


def test_sigterm_stops_everything_in_order_with_no_process_left(up: UpProcess):
    processes = up.tree()
    names = " ".join(p.name() for p in processes)
    assert "redis-server" in names and "raylet" in names and "ReplicaHostActor" in names, names
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


def test_sigkill_of_up_leaves_no_process_behind(tmp_path: Path):
    """No signal handler runs: the kernel tells redis-server (in its own session, out of
    reach of the terminal's Ctrl-C) and Ray's core shares the launcher's fate. Ray's
    dashboard and runtime-env agents notice on their own poll, within about a minute: not
    waited for here."""
    up = UpProcess(tmp_path).start()
    seen: list[psutil.Process] = []
    try:
        up.wait_ready(READY_TIMEOUT_S)
        seen = up.tree()
        assert any("redis-server" in " ".join(p.cmdline()) for p in seen), seen
        ours = [p for p in seen if not any(a in " ".join(p.cmdline()) for a in RAY_AGENTS)]
        assert up.process is not None
        up.process.kill()
        up.process.wait(timeout=10)
        assert left_behind(ours, grace_s=20) == []
    finally:
        up.kill_tree()
        for process in seen:  # Ray's agents, before they notice: none may outlive the test
            with contextlib.suppress(psutil.Error):
                process.kill()
