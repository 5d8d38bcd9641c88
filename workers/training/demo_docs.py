"""The bundled docs folder the demo's browser searches, and what a search of it displays.

`oss-serve up` points the browser tool at `oss_serve/tools/demo_docs`; the demo corpus
trains on the display the real browser tool returns for each query there (a fresh session,
so cursor 0), so the model reads in training exactly what it reads when served.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from oss_serve import tools
from oss_serve.common.settings import Settings
from oss_serve.tools.base import ToolCall
from oss_serve.tools.browser.executor import BrowserExecutor
from oss_serve.tools.browser.local_index import LocalDocsBackend

DEMO_DOCS_DIR = Path(tools.__file__).resolve().parent / "demo_docs"
SEARCH_RECIPIENT = "browser.search"
_LINE = re.compile(r"^L(\d+): (.*)$")


@functools.cache
def _browser() -> BrowserExecutor:
    """The browser `oss-serve up` runs: the local index over the demo docs, the default cap."""
    output_max_bytes = Settings.model_fields["tool_output_max_bytes"].default
    backend = LocalDocsBackend.from_folder(DEMO_DOCS_DIR)
    return BrowserExecutor(backend, output_max_bytes=output_max_bytes)


@functools.lru_cache(maxsize=256)
def search_display(query: str) -> str:
    """The browser's message for `browser.search({"query": query})`, first call of a session."""

    async def search() -> str:
        browser = _browser()
        session = f"demo-corpus:{query}"
        try:
            call = ToolCall(SEARCH_RECIPIENT, json.dumps({"query": query}), session)
            output = await browser.call(call)
        finally:
            await browser.close_session(session)
        if output.error:
            raise ValueError(f"browser.search({query!r}) failed: {output.text}")
        return output.text

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(search())
    with ThreadPoolExecutor(max_workers=1) as thread:  # called from async code: its own loop
        return thread.submit(asyncio.run, search()).result()


def citation(display: str, phrase: str) -> str:
    """`【cursor†Lstart(-Lend)?】` for the display lines that hold `phrase`; a phrase the
    display wrapped onto the next line cites both."""
    cursor = int(display[1 : display.index("]")])
    numbered = [
        (int(match.group(1)), match.group(2))
        for match in map(_LINE.match, display.splitlines())
        if match
    ]
    for index, (number, text) in enumerate(numbered):
        if phrase in text:
            return f"【{cursor}†L{number}】"
        following = numbered[index + 1][1] if index + 1 < len(numbered) else ""
        joined = (f"{text} {following}", text + following)  # wrapped at a space or a hyphen
        if phrase not in following and any(phrase in text for text in joined):
            return f"【{cursor}†L{number}-L{number + 1}】"
    raise ValueError(f"the search display has no line with {phrase!r}")
