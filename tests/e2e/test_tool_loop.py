"""The server-side tool loop end to end: a real redis-server, a replica serving the demo model
(which learnt to call python for arithmetic, browser.search for facts in the bundled docs
and the demo MCP server's roll_dice for dice), an in-process router with --tools, the demo
MCP server, and the official `openai` client.

The model really emits the calls (greedy); the router runs them in the sandboxed python and
the local docs index, feeds their output back and continues on the same replica. What the
router guarantees is checked strictly, and so is the answer stating what python printed and
what the search found (the demo model's training is deterministic); a die's random number is
copied into the answer for most values, so that check is an expected failure when it is not.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator

import openai
import pytest
import redis

from oss_serve.commands.up import DEMO_DOCS_DIR
from oss_serve.tools.demo_mcp import DEMO_MCP_LABEL, DemoMcpServer
from oss_serve.workers.training.demo_model import ensure_demo_model
from tests.router.http.stack import API_KEY, InProcessRouter, Stack
from tests.router.http.tool_events import check_documented_order, parsed
from tests.router.metrics_scrape import scrape, total
from tests.tools.python.conftest import needs_bwrap

pytestmark = [pytest.mark.e2e, needs_bwrap, pytest.mark.timeout(1800)]  # may train the model

CODE_INTERPRETER = {"type": "code_interpreter", "container": {"type": "auto"}}
WEB_SEARCH = {"type": "web_search_preview"}
ARITHMETIC = "What is 37 times 91?"
CITATION = re.compile(r"【\d+†L\d+(?:-L\d+)?】")
COUNTERS = ("vllm:prompt_tokens", "vllm:generation_tokens", "vllm:request_success")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("tool-loop")
    demo_model = ensure_demo_model()  # cached after its first training on this machine
    running = Stack(
        folder,
        f"tools-{uuid.uuid4().hex[:6]}",
        ("--max-model-len", "4096", "--kv-cache-memory", "64000000"),
        model=str(demo_model),
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def dice_server(stack: Stack) -> Iterator[DemoMcpServer]:
    """The demo MCP server (a real one, the SDK's, over streamable HTTP) on the routers' loop."""
    server = stack.loop.run(DemoMcpServer().start())
    yield server
    stack.loop.run(server.stop())


@pytest.fixture(scope="module")
def tool_router(stack: Stack, dice_server: DemoMcpServer) -> InProcessRouter:
    """A router with python, the browser over the bundled docs and the demo MCP server
    allow-listed (the first router has no tools)."""
    return stack.add_router(
        tools=["python", "browser", "mcp"],
        browser_docs_dir=DEMO_DOCS_DIR,
        mcp_allowed_urls=[dice_server.url],
    )


@pytest.fixture(scope="module")
def client(tool_router: InProcessRouter) -> openai.OpenAI:
    return openai.OpenAI(base_url=tool_router.base_url, api_key=API_KEY, max_retries=0)


def printed(code: str) -> str:
    """What `code` prints, run by this interpreter: the logs its call must show."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    return done.stdout.rstrip("\n")


def _served(router: InProcessRouter) -> dict[str, float]:
    values = scrape(router.base_url.removesuffix("/v1"))
    return {name: total(values, f"{name}_total") for name in COUNTERS}


def test_a_code_interpreter_call_runs_and_its_output_goes_back_to_the_model(client, tool_router):
    before = _served(tool_router)
    response = client.responses.create(
        input=ARITHMETIC, tools=[CODE_INTERPRETER], temperature=0, max_output_tokens=400
    )
    served = {k: v - before[k] for k, v in _served(tool_router).items()}
    kinds = [item.type for item in response.output]
    assert kinds[-1] == "message" and kinds.count("code_interpreter_call") == 1, kinds
    call = next(item for item in response.output if item.type == "code_interpreter_call")
    assert call.status == "completed" and call.code
    assert [(o.type, o.logs) for o in call.outputs or []] == [("logs", printed(call.code))]
    assert call.container_id.startswith("ts_") and response.status == "completed"
    # usage counts both steps: what the router recorded per generation, summed
    usage = response.usage
    assert served["vllm:request_success"] == 2
    assert usage.input_tokens == served["vllm:prompt_tokens"]
    assert usage.output_tokens == served["vllm:generation_tokens"]
    # the second step ran on the replica holding the first one's KV: its prompt hit the cache
    assert usage.input_tokens_details.cached_tokens > 0


def test_the_streamed_loop_arrives_in_documented_order_and_every_event_parses(client):
    stream = client.responses.create(
        input=ARITHMETIC, tools=[CODE_INTERPRETER], temperature=0, stream=True
    )
    events = [event.model_dump(mode="json", exclude_unset=True) for event in stream]
    parsed(events)  # strictly, with the openai package's models
    kinds = check_documented_order(events)
    assert "code_interpreter_call" in kinds and kinds[-1] == "message", kinds
    final = events[-1]["response"]
    assert final["status"] == "completed"
    deltas = [
        e["delta"] for e in events if e["type"] == "response.code_interpreter_call_code.delta"
    ]
    call = next(item for item in final["output"] if item["type"] == "code_interpreter_call")
    assert "".join(deltas) == call["code"]
    assert call["outputs"] == [{"type": "logs", "logs": printed(call["code"])}]


def dice_tool(url: str) -> dict[str, str]:
    return {"type": "mcp", "server_label": DEMO_MCP_LABEL, "server_url": url,
            "require_approval": "never"}  # fmt: skip


def test_the_model_calls_the_mcp_servers_tool_and_reads_its_output(client, dice_server):
    response = client.responses.create(
        input="Roll a 20-sided die.", tools=[dice_tool(dice_server.url)], temperature=0
    )
    kinds = [item.type for item in response.output]
    assert kinds[0] == "mcp_list_tools" and kinds[-1] == "message", kinds
    assert kinds.count("mcp_call") == 1, kinds
    call = next(item for item in response.output if item.type == "mcp_call")
    assert (call.server_label, call.name, call.error) == (DEMO_MCP_LABEL, "roll_dice", None)
    assert json.loads(call.arguments) == {"sides": 20}
    assert 1 <= int(call.output) <= 20  # the server rolled it
    assert response.status == "completed" and response.usage.input_tokens_details.cached_tokens


def test_the_streamed_mcp_loop_arrives_in_documented_order_and_every_event_parses(
    client, dice_server
):
    stream = client.responses.create(
        input="Roll a 6-sided die.", tools=[dice_tool(dice_server.url)], temperature=0, stream=True
    )
    events = [event.model_dump(mode="json", exclude_unset=True) for event in stream]
    parsed(events)
    kinds = check_documented_order(events)
    assert kinds[0] == "mcp_list_tools" and "mcp_call" in kinds and kinds[-1] == "message"
    types = [event["type"] for event in events]
    assert "response.mcp_call.completed" in types and "response.mcp_call.failed" not in types
    call = next(i for i in events[-1]["response"]["output"] if i["type"] == "mcp_call")
    assert 1 <= int(call["output"]) <= 6


def _port_search(client: openai.OpenAI):
    return client.responses.create(
        input="What port does the oss-serve HTTP API use?",
        tools=[WEB_SEARCH],
        temperature=0,
        max_output_tokens=400,
    )


def test_a_web_search_runs_over_the_local_docs_and_the_model_reads_its_display(client):
    response = _port_search(client)
    kinds = [item.type for item in response.output]
    search = next(item for item in response.output if item.type == "web_search_call")
    assert search.status == "completed" and search.action.type == "search"
    assert search.action.query and "port" in search.action.query
    sources = [source.url for source in search.action.sources or []]
    assert sources and sources[0].endswith("ports.md"), sources
    # the model went on after the search display: the loop fed it back and continued
    assert kinds.index("web_search_call") < len(kinds) - 1, kinds
    assert response.usage.output_tokens > 0 and response.status == "completed"


def test_a_chain_continues_in_the_same_tool_session(stack, client):
    first = client.responses.create(input=ARITHMETIC, tools=[CODE_INTERPRETER], temperature=0)
    second = client.responses.create(
        input="And what is 12 * 34?",
        tools=[CODE_INTERPRETER],
        previous_response_id=first.id,
        temperature=0,
    )
    store = redis.Redis.from_url(stack.redis_url)
    sessions = [
        json.loads(store.get(f"{stack.namespace}:response:{r.id}"))["tool_session"]
        for r in (first, second)
    ]
    containers = {
        item.container_id
        for response in (first, second)
        for item in response.output
        if item.type == "code_interpreter_call"
    }
    assert sessions[0] == sessions[1] and containers == {sessions[0]}


def test_max_tool_calls_stops_the_loop_before_a_call_past_it(client):
    response = client.responses.create(
        input=ARITHMETIC, tools=[CODE_INTERPRETER], temperature=0, max_tool_calls=0
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_tool_calls"
    assert not [item for item in response.output if item.type == "code_interpreter_call"]
    assert response.max_tool_calls == 0


def test_chat_completions_runs_the_loop_through_server_tools(client):
    completion = client.chat.completions.create(
        model="",
        messages=[{"role": "user", "content": ARITHMETIC}],
        temperature=0,
        extra_body={"server_tools": [CODE_INTERPRETER]},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content
    (call,) = choice.message.model_extra["server_tool_calls"]
    assert call["type"] == "code_interpreter_call" and call["status"] == "completed"
    assert call["outputs"][0]["logs"] == printed(call["code"])
    assert completion.usage.prompt_tokens > 2 * completion.usage.completion_tokens


def test_a_tool_the_router_does_not_enable_is_a_400_naming_it(stack, client):
    plain = openai.OpenAI(base_url=stack.router.base_url, api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        plain.responses.create(input=ARITHMETIC, tools=[CODE_INTERPRETER])
    assert refused.value.body["param"] == "tools[0]"
    mcp = {"type": "mcp", "server_label": "x", "server_url": "http://127.0.0.1:9/mcp",
           "require_approval": "never"}  # fmt: skip
    with pytest.raises(openai.BadRequestError) as refused:
        plain.responses.create(input=ARITHMETIC, tools=[WEB_SEARCH, mcp])
    assert refused.value.body["param"] == "tools[0]"  # the first tool it does not enable
    with pytest.raises(openai.BadRequestError) as refused:  # enabled, but not allow-listed
        client.responses.create(input=ARITHMETIC, tools=[CODE_INTERPRETER, mcp])
    assert refused.value.body["param"] == "tools[1].server_url"


# the numbers a die shows are random, and the tiny model copies some of them less reliably
DICE_COPY = pytest.mark.xfail(
    reason="the demo model states most, not all, of the numbers a die can show; the call, "
    "its output and the continuation are checked above",
    strict=False,
)


def test_the_model_computes_with_python_and_states_what_it_printed(client):
    response = client.responses.create(input=ARITHMETIC, tools=[CODE_INTERPRETER], temperature=0)
    call = next(item for item in response.output if item.type == "code_interpreter_call")
    assert "37" in (call.code or "") and "3367" in response.output_text


@DICE_COPY
def test_the_answer_states_what_the_die_shows(client, dice_server):
    response = client.responses.create(
        input="Roll a 12-sided die.", tools=[dice_tool(dice_server.url)], temperature=0
    )
    call = next(item for item in response.output if item.type == "mcp_call")
    assert f"You rolled a {call.output} on the 12-sided die" in response.output_text


def test_a_web_search_over_the_local_docs_answers_with_a_citation(client):
    response = _port_search(client)
    assert "8000" in response.output_text
    assert CITATION.search(response.output_text), response.output_text
