"""`oss-serve up` with its default tools, as the README shows them: python and a browser over
the bundled docs, the demo model calling them, the official client reading the answers."""

from __future__ import annotations

import re
from collections.abc import Iterator

import openai
import pytest

from tests.e2e.up_process import UpProcess
from tests.tools.python.conftest import needs_bwrap

pytestmark = [pytest.mark.e2e, needs_bwrap, pytest.mark.timeout(1500)]

READY_TIMEOUT_S = 1200.0  # includes training the demo model on a fresh machine
MODEL = "oss-serve-demo"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    running = UpProcess(tmp_path_factory.mktemp("up-tools")).start()
    try:
        running.wait_ready(READY_TIMEOUT_S)
        running.wait_banner()
        yield running
    finally:
        running.kill_tree()


@pytest.fixture(scope="module")
def client(up: UpProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{up.base_url}/v1", api_key=up.api_key(), max_retries=0)


def test_the_banner_names_the_tools_up_enables(up: UpProcess):
    line = next(x for x in up.wait_banner().splitlines() if x.strip().startswith("tools"))
    assert re.search(r"browser, python \(browser over \S*demo_docs\)", line), line


def test_the_readme_code_interpreter_example_answers_from_pythons_output(client):
    response = client.responses.create(
        model=MODEL,
        input="What is 37 times 91?",
        tools=[{"type": "code_interpreter", "container": {"type": "auto"}}],
        temperature=0,
    )
    kinds = [item.type for item in response.output]
    assert kinds[-1] == "message" and "code_interpreter_call" in kinds, kinds
    call = next(item for item in response.output if item.type == "code_interpreter_call")
    assert call.status == "completed" and "37 * 91" in (call.code or "")
    assert [(o.type, o.logs.strip()) for o in call.outputs or []] == [("logs", "3367")]
    assert "3367" in response.output_text


def test_a_web_search_runs_over_the_bundled_docs(client):
    response = client.responses.create(
        model=MODEL,
        input="What port does the oss-serve HTTP API use?",
        tools=[{"type": "web_search_preview"}],
        temperature=0,
    )
    search = next(item for item in response.output if item.type == "web_search_call")
    assert search.status == "completed" and search.action.query
    assert any(source.url.endswith("ports.md") for source in search.action.sources or [])
    assert "8000" in response.output_text
    assert re.search(r"【\d+†L\d+(?:-L\d+)?】", response.output_text), response.output_text


def test_offered_both_tools_each_question_takes_its_own(client):
    tools = [
        {"type": "web_search_preview"},
        {"type": "code_interpreter", "container": {"type": "auto"}},
    ]
    arithmetic, docs = (
        client.responses.create(model=MODEL, input=question, tools=tools, temperature=0)
        for question in ("What is 12 * 34?", "What port does the oss-serve HTTP API use?")
    )
    calls = [
        [item.type for item in r.output if item.type.endswith("_call")] for r in (arithmetic, docs)
    ]
    assert calls == [["code_interpreter_call"], ["web_search_call"]]
    assert "408" in arithmetic.output_text
    assert "8000" in docs.output_text
    assert re.search(r"【\d+†L\d+(?:-L\d+)?】", docs.output_text), docs.output_text
