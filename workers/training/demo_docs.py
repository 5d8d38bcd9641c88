"""The bundled docs folder the demo's browser searches, and what a search of it displays.

`oss-serve up` points the browser tool at `oss_serve/tools/demo_docs`; the demo corpus
trains on the very display the browser shows for each query there, so the model reads in
training what it reads when served.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

DEMO_DOCS_DIR = Path(__file__).resolve().parents[2] / "tools" / "demo_docs"
_LINE = re.compile(r"^L(\d+): (.*)$")
_WORD = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*")
_WRAP = 80


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


@functools.lru_cache(maxsize=64)
def search_display(query: str, cursor: int = 0) -> str:
    """The browser's display for `browser.search({"query": query})` as the page at `cursor`.

    Reference page-and-cursor format: `[cursor] title`, the scrollbar, numbered lines; each
    hit is a link `【i†title†file】` followed by the doc's lines that share words with the query.
    """
    query_words = _words(query)
    hits: list[tuple[int, str, str, list[str]]] = []
    for path in sorted(DEMO_DOCS_DIR.glob("*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        title = lines[0].lstrip("# ").strip()
        body = [line for line in lines[1:] if line.strip()]
        matched = [line for line in body if query_words & _words(line)]
        score = len(query_words & _words(path.read_text(encoding="utf-8")))
        if score:
            hits.append((-score, path.name, title, matched or body[:1]))
    hits.sort()
    page = ["# Search Results", ""]
    for index, (_, name, title, snippet) in enumerate(hits[:10]):
        page.append(f"* 【{index}†{title}†{name}】")
        for line in snippet:
            page += _wrap(line)
        page.append("")
    body_lines = [f"L{number}: {line}" for number, line in enumerate(page)]
    header = f"[{cursor}] Search results for `{query}`\n"
    header += f"**viewing lines [0 - {len(page) - 1}] of {len(page) - 1}**\n\n"
    return header + "\n".join(body_lines)


def _wrap(line: str) -> list[str]:
    import textwrap

    return textwrap.wrap(line, width=_WRAP) or [""]


def citation(display: str, phrase: str) -> str:
    """`【cursor†Lstart(-Lend)?】` for the display lines that hold `phrase`; the text may wrap
    over two lines, so a phrase split at a line end is found too."""
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
