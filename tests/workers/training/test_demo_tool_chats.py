"""The demo corpus's tool messages are what the served tools return: python's output from
the real sandboxed executor, the browser's search display from a browser over the folder
`oss-serve up` serves; every cited line holds the fact the answer states."""

from __future__ import annotations

import re

import pytest

from oss_serve.commands.up import DEMO_DOCS_DIR
from oss_serve.tools.base import ToolCall
from oss_serve.tools.browser.executor import BrowserExecutor
from oss_serve.tools.browser.local_index import LocalDocsBackend
from oss_serve.tools.python.executor import PythonExecutor
from oss_serve.workers.training import demo_docs
from oss_serve.workers.training.demo_corpus import generate_corpus
from oss_serve.workers.training.demo_tool_chats import DOCS_FACTS, SEARCH_RECIPIENT
from tests.tools.python.conftest import sandboxed  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

CITED = re.compile(r"【(\d+)†L(\d+)(?:-L(\d+))?】")


def _tool_turns(recipient: str, count: int) -> list[tuple[str, str, str]]:
    """(call text, tool message text, final answer) of the corpus's turns calling recipient."""
    turns = []
    for conversation in generate_corpus(400, seed=11):
        raw = [m["harmony"] for m in conversation["messages"] if "harmony" in m]
        calls = [m for m in raw if m.get("recipient") == recipient]
        if calls:
            output = next(m for m in raw if m["author"] == recipient)
            turns.append((calls[0]["text"], output["text"], raw[-1]["text"]))
    assert len(turns) >= count
    return turns[:count]


async def test_pythons_messages_are_what_the_sandboxed_python_tool_prints(
    sandboxed: PythonExecutor,  # noqa: F811
):
    for index, (code, message, answer) in enumerate(_tool_turns("python", 6)):
        output = await sandboxed.call(ToolCall("python", code, f"corpus-{index}"))
        assert not output.error and output.text == message, code
        assert message in answer


async def test_the_browsers_messages_are_the_search_displays_up_serves():
    assert DEMO_DOCS_DIR.resolve() == demo_docs.DEMO_DOCS_DIR
    browser = BrowserExecutor(LocalDocsBackend.from_folder(DEMO_DOCS_DIR), output_max_bytes=16384)
    for index, (arguments, message, _) in enumerate(_tool_turns(SEARCH_RECIPIENT, 8)):
        output = await browser.call(ToolCall(SEARCH_RECIPIENT, arguments, f"corpus-{index}"))
        assert not output.error and output.text == message, arguments
    await browser.aclose()


def test_every_fact_is_in_the_cited_lines_of_its_search_display():
    for fact in DOCS_FACTS:
        display = demo_docs.search_display(fact.query)
        cursor, first, last = CITED.fullmatch(demo_docs.citation(display, fact.phrase)).groups()
        lines = {
            int(number): text
            for number, text in re.findall(r"^L(\d+): (.*)$", display, flags=re.MULTILINE)
        }
        cited = "".join(lines[n] for n in range(int(first), int(last or first) + 1))
        assert cursor == "0" and fact.phrase.replace(" ", "") in cited.replace(" ", ""), fact
        assert display.startswith(f"[0] {fact.query}\n")  # the first page of a session
