"""The demo corpus's tool messages are what the served tools return: python's output from
the real sandboxed executor, the browser's search display from a browser over the folder
`oss-serve up` serves; every cited line holds the fact the answer states."""

from __future__ import annotations

import json
import re

import pytest

from oss_serve.commands.up import DEMO_DOCS_DIR
from oss_serve.common.settings import Settings
from oss_serve.harmony.server_tools import server_tool_request
from oss_serve.router.tool_set import open_request_tools
from oss_serve.tools.base import ToolCall
from oss_serve.tools.browser.executor import BrowserExecutor
from oss_serve.tools.browser.local_index import LocalDocsBackend
from oss_serve.tools.demo_mcp import DemoMcpServer
from oss_serve.tools.python.executor import PythonExecutor
from oss_serve.tools.server_tools import ServerTools
from oss_serve.workers.training import demo_docs
from oss_serve.workers.training.data import mcp_namespaces
from oss_serve.workers.training.demo_corpus import generate_corpus
from oss_serve.workers.training.demo_tool_chats import (
    DOCS_FACTS,
    SEARCH_RECIPIENT,
    mcp_server_entry,
)
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


async def test_the_dice_turns_declare_the_demo_mcp_server_as_the_router_does():
    """The router lists the live demo server's tools and declares them; the corpus's
    `mcp_servers` entry renders to the same namespace, and its calls to what the server
    answers."""
    server = await DemoMcpServer().start()
    server_tools = ServerTools.from_settings(Settings(tools=["mcp"], mcp_allowed_urls=[server.url]))
    entry = {"type": "mcp", "server_label": "games", "server_url": server.url,
             "require_approval": "never"}  # fmt: skip
    tools = await open_request_tools(server_tools, server_tool_request([entry]), "ts_corpus")
    try:
        assert mcp_namespaces([mcp_server_entry("games")]) == tools.namespaces
        turns = [c for c in generate_corpus(400, seed=11) if "mcp_servers" in c]
        rolls = [c for c in turns if "roll_dice" in json.dumps(c["messages"])]
        assert rolls and len(rolls) < len(turns)  # some offer the server for other questions
        for conversation in rolls[:5]:
            raw = [m["harmony"] for m in conversation["messages"] if "harmony" in m]
            call = next(m for m in raw if m.get("recipient", "").endswith(".roll_dice"))
            label = conversation["mcp_servers"][0]["server_label"]
            assert call["recipient"] == f"{label}.roll_dice"
            sides = json.loads(call["text"])["sides"]
            shown = next(m for m in raw if m["author"] == call["recipient"])["text"]
            assert 1 <= int(shown) <= sides and raw[-1]["text"].startswith(f"You rolled a {shown}")
        games = tools.executors["games"]
        answer = await games.call(ToolCall("games.roll_dice", '{"sides": 4}', "ts_corpus"))
        assert not answer.error and answer.text in {"1", "2", "3", "4"}
    finally:
        await tools.aclose()
        await server_tools.aclose()
        await server.stop()
