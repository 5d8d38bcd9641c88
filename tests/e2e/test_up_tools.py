"""`oss-serve up` with its default tools, as the README shows them: python and a browser over
the bundled docs, the demo model calling them, the official client reading the answers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.test_tool_loop import printed
from tests.e2e.up_process import UpProcess, ready_up
from tests.tools.python.conftest import needs_bwrap

pytestmark = [pytest.mark.e2e, needs_bwrap, pytest.mark.timeout(1500)]

MODEL = "oss-serve-demo"
CODE_INTERPRETER = {"type": "code_interpreter", "container": {"type": "auto"}}
WEB_SEARCH = {"type": "web_search_preview"}
PORT_QUESTION = "What port does the oss-serve HTTP API use?"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    with ready_up(tmp_path_factory.mktemp("up-tools")) as running:
        yield running


@pytest.fixture(scope="module")
def client(up: UpProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{up.base_url}/v1", api_key=up.api_key(), max_retries=0)


def _tools_line(up: UpProcess) -> str:
    return next(x for x in up.wait_banner().splitlines() if x.strip().startswith("tools"))


def test_the_banner_names_the_tools_up_enables(up: UpProcess):
    line = _tools_line(up)
    assert re.search(r"browser, mcp, python \(browser over \S*demo_docs; ", line), line
    assert re.search(r"MCP server_label 'dice': http://127\.0\.0\.1:\d+/mcp\)", line), line


@pytest.fixture(scope="module")
def dice_tool(up: UpProcess) -> dict[str, str]:
    """The demo MCP server `up` started, as the banner names it."""
    url = re.search(r"MCP server_label 'dice': (\S+)\)", _tools_line(up))
    assert url, _tools_line(up)
    return {"type": "mcp", "server_label": "dice", "server_url": url.group(1),
            "require_approval": "never"}  # fmt: skip


def test_the_model_rolls_a_die_through_the_demo_mcp_server(client, dice_tool):
    response = _ask(client, "Roll a 20-sided die.", [dice_tool])
    call = next(item for item in response.output if item.type == "mcp_call")
    assert (call.server_label, call.name, call.error) == ("dice", "roll_dice", None)
    assert call.arguments.replace(" ", "") == '{"sides":20}'
    assert 1 <= int(call.output) <= 20
    assert response.output[-1].type == "message" and response.status == "completed"


def test_an_mcp_server_up_did_not_allow_is_refused(client):
    elsewhere = {"type": "mcp", "server_label": "other", "require_approval": "never",
                 "server_url": "http://127.0.0.1:9/mcp"}  # fmt: skip
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(client, "Roll a die.", [elsewhere])
    assert refused.value.body["param"] == "tools[0].server_url"


def _ask(client: openai.OpenAI, question: str, tools: list[dict]) -> Any:
    return client.responses.create(model=MODEL, input=question, tools=tools, temperature=0)


def test_the_readme_code_interpreter_example_runs_python(client):
    response = _ask(client, "What is 37 times 91?", [CODE_INTERPRETER])
    kinds = [item.type for item in response.output]
    assert kinds[-1] == "message" and "code_interpreter_call" in kinds, kinds
    call = next(item for item in response.output if item.type == "code_interpreter_call")
    assert call.status == "completed" and call.code
    assert [(o.type, o.logs) for o in call.outputs or []] == [("logs", printed(call.code))]


def test_a_web_search_runs_over_the_bundled_docs(client):
    response = _ask(client, PORT_QUESTION, [WEB_SEARCH])
    search = next(item for item in response.output if item.type == "web_search_call")
    assert search.status == "completed" and search.action.query
    assert any(source.url.endswith("ports.md") for source in search.action.sources or [])
    assert response.output[-1].type == "message"


def test_offered_both_tools_each_question_takes_its_own(client):
    arithmetic, docs = (
        _ask(client, question, [WEB_SEARCH, CODE_INTERPRETER])
        for question in ("What is 12 * 34?", PORT_QUESTION)
    )
    calls = [
        [item.type for item in r.output if item.type.endswith("_call")] for r in (arithmetic, docs)
    ]
    assert calls == [["code_interpreter_call"], ["web_search_call"]]


def test_the_answers_state_what_the_tools_returned(client):
    arithmetic = _ask(client, "What is 37 times 91?", [CODE_INTERPRETER])
    docs = _ask(client, PORT_QUESTION, [WEB_SEARCH])
    assert "3367" in arithmetic.output_text
    assert "8000" in docs.output_text
    assert re.search(r"【\d+†L\d+(?:-L\d+)?】", docs.output_text), docs.output_text
