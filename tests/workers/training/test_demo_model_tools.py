"""The demo model with gpt-oss's built-in tools declared, served by the normal engine, greedy,
with prompts rendered as the router renders them: arithmetic goes to `python` with code that
prints the right number, and the answer after python's output states it; a question about
oss-serve goes to `browser.search`, and the answer after the search display states the fact
with a citation of the lines it came from. Each continuation is what the server's tool loop
sends: the prompt, the generated tokens, the tool's message, `<|start|>assistant`.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys

import pytest

from oss_serve import LLM, SamplingParams
from oss_serve.common.vocab import CALL, RETURN
from oss_serve.harmony import ParsedCompletion, parse_completion, render_chat_request
from oss_serve.harmony.conversation import tool_output_message
from oss_serve.harmony.render import continue_after_tool
from oss_serve.workers.training import demo_docs
from oss_serve.workers.training.data import mcp_namespaces
from oss_serve.workers.training.demo_tool_chats import DOCS_FACTS, mcp_server_entry
from tests.workers.training.finetune_helpers import one_torch_thread  # noqa: F401 (autouse)

pytestmark = pytest.mark.slow

TODAY = datetime.date.today().isoformat()
CITATION = re.compile(r"【0†L\d+(?:-L\d+)?】")


def _generate(llm: LLM, prompts: list[list[int]]) -> list[tuple[list[int], ParsedCompletion]]:
    outputs = llm.generate(
        [{"prompt_token_ids": prompt} for prompt in prompts],
        SamplingParams(temperature=0, max_tokens=160),
    )
    results = []
    for output in outputs:
        tokens = list(output.outputs[0].token_ids)
        results.append((tokens, parse_completion(tokens)))
    return results


def _prompt(question: str, tools: tuple[str, ...]) -> list[int]:
    body = {"messages": [{"role": "user", "content": question}]}
    return render_chat_request(body, date=TODAY, builtin_tools=tools)


def _continuation(prompt: list[int], generated: list[int], author: str, output: str) -> list[int]:
    """What the router's tool loop sends next: everything so far, the tool's message on the
    call's channel, the model's turn."""
    return continue_after_tool(prompt, generated, tool_output_message(author, output, "analysis"))


def _run_python(code: str) -> str:
    """The code's stdout from a real interpreter, as the python tool returns it (without the
    last newline)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.rstrip("\n")


@pytest.mark.parametrize("tools", [("python",), ("browser", "python")])
def test_arithmetic_goes_to_python_and_the_answer_states_what_it_printed(demo_llm, tools):
    problems = [("What is 37 times 91?", 3367), ("What is 12 * 34?", 408), ("What's 55 + 18?", 73)]
    prompts = [_prompt(question, tools) for question, _ in problems]
    calls = _generate(demo_llm, prompts)
    continuations = []
    for (question, expected), prompt, (tokens, parsed) in zip(
        problems, prompts, calls, strict=True
    ):
        assert tokens[-1] == CALL, question
        assert parsed.reasoning and not parsed.content, question
        (call,) = parsed.builtin_tool_calls
        assert call.recipient == "python" and call.channel == "analysis", question
        printed = _run_python(call.arguments)
        assert printed == str(expected), (question, call.arguments)
        continuations.append(_continuation(prompt, tokens, "python", printed))
    for (question, expected), (tokens, parsed) in zip(
        problems, _generate(demo_llm, continuations), strict=True
    ):
        assert tokens[-1] == RETURN and parsed.finish_reason == "stop", question
        assert not parsed.builtin_tool_calls, question
        assert str(expected) in parsed.content, (question, parsed.content)


@pytest.mark.parametrize("tools", [("browser",), ("browser", "python")])
def test_a_docs_question_goes_to_browser_search_and_the_answer_cites_the_display(demo_llm, tools):
    cases = [
        (DOCS_FACTS[0].questions[0], DOCS_FACTS[0], "8000"),
        (DOCS_FACTS[4].questions[1], DOCS_FACTS[4], "0.5 seconds"),
        (DOCS_FACTS[2].questions[1], DOCS_FACTS[2], "oss-serve-demo"),
    ]
    prompts = [_prompt(question, tools) for question, _, _ in cases]
    continuations, displays = [], []
    for (question, _, _), prompt, (tokens, parsed) in zip(
        cases, prompts, _generate(demo_llm, prompts), strict=True
    ):
        assert tokens[-1] == CALL, question
        (call,) = parsed.builtin_tool_calls
        assert call.recipient == "browser.search" and call.channel == "analysis", question
        query = json.loads(call.arguments)["query"]
        display = demo_docs.search_display(query)
        displays.append(display)
        continuations.append(_continuation(prompt, tokens, "browser.search", display))
    answers = _generate(demo_llm, continuations)
    for (question, fact, value), display, (tokens, parsed) in zip(
        cases, displays, answers, strict=True
    ):
        assert tokens[-1] == RETURN and parsed.finish_reason == "stop", question
        assert value in parsed.content, (question, parsed.content)
        cited = CITATION.findall(parsed.content)
        assert cited == [demo_docs.citation(display, fact.phrase)], (question, parsed.content)


@pytest.mark.parametrize("label", ["dice", "games"])
def test_a_dice_roll_goes_to_the_mcp_servers_tool_named_by_its_label(demo_llm, label):
    namespaces = mcp_namespaces([mcp_server_entry(label)])
    questions = [("Roll a 20-sided die.", 20), ("Roll a die with 8 sides.", 8)]
    prompts = [
        render_chat_request(
            {"messages": [{"role": "user", "content": question}]},
            date=TODAY,
            tool_namespaces=namespaces,
        )
        for question, _ in questions
    ]
    continuations = []
    for (question, sides), prompt, (tokens, parsed) in zip(
        questions, prompts, _generate(demo_llm, prompts), strict=True
    ):
        assert tokens[-1] == CALL, question
        (call,) = parsed.builtin_tool_calls
        assert call.recipient == f"{label}.roll_dice", question
        assert json.loads(call.arguments) == {"sides": sides}, question
        shown = tool_output_message(call.recipient, "3", "commentary")
        continuations.append(continue_after_tool(prompt, tokens, shown))
    for (question, _), (tokens, parsed) in zip(
        questions, _generate(demo_llm, continuations), strict=True
    ):
        assert tokens[-1] == RETURN and not parsed.builtin_tool_calls, question
        assert "3" in parsed.content, (question, parsed.content)


def test_without_python_declared_arithmetic_is_answered_directly(demo_llm):
    prompts = [_prompt("What is 7 + 5?", tools) for tools in [(), ("browser",)]]
    for tokens, parsed in _generate(demo_llm, prompts):
        assert tokens[-1] == RETURN and not parsed.builtin_tool_calls
        assert parsed.reasoning and parsed.content


def test_with_tools_declared_a_greeting_calls_none(demo_llm):
    prompts = [_prompt("Hello!", tools) for tools in [("python",), ("browser", "python")]]
    for tokens, parsed in _generate(demo_llm, prompts):
        assert tokens[-1] == RETURN and not parsed.builtin_tool_calls
        assert "Hello" in parsed.content
