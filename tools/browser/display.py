"""How a page is shown to the model, as gpt-oss's reference browser shows it:

    [{cursor}] {title} ({url})
    **viewing lines [{first} - {last}] of {last line}**

    L{first}: ...

Lines are the page's text wrapped at 80 columns; a view holds as many lines as fit in
`view_tokens` o200k tokens. Search and find results are pages too, whose links point at
their results.
"""

from __future__ import annotations

import itertools
import re
import textwrap
from urllib.parse import quote, unquote

from oss_serve.common.vocab import o200k_harmony
from oss_serve.tools.browser.backend import SearchResult
from oss_serve.tools.browser.page import Extract, Page, clean_text, link_marker

LINE_WIDTH = 80
FIND_MAX_RESULTS = 50
FIND_SHOWN_LINES = 4
MAX_URL_CHARS = 1024
# a link in page text, whole or cut by the view's edges, reduced to its text for `find`
_LINK = re.compile(r"【\d+†(?P<content>[^†】]+)(?:†[^†】]+)?】")
_PARTIAL_START = re.compile(r"^[^【】]*】")
_PARTIAL_END = re.compile(r"【\d*(?:†(?P<content>[^†】]*)(?:†[^†】]*)?)?$")


class ToolUsageError(Exception):
    """A call the model got wrong (a cursor out of range, an unknown link id); the
    message tells it what is valid."""


def wrap_lines(text: str, width: int = LINE_WIDTH) -> list[str]:
    wrapped = (
        textwrap.wrap(line, width=width, replace_whitespace=False, drop_whitespace=False)
        if line
        else [""]
        for line in text.split("\n")
    )
    return list(itertools.chain.from_iterable(wrapped))


def numbered(lines: list[str], first: int) -> str:
    return "\n".join(f"L{first + index}: {line}" for index, line in enumerate(lines))


def view_end(lines: list[str], first: int, num_lines: int, view_tokens: int) -> int:
    """One past the last line shown: `num_lines` when given, else as many lines as fit
    in `view_tokens` (at least one)."""
    if num_lines > 0:
        return min(first + num_lines, len(lines))
    encoding = o200k_harmony()
    used = 0
    for index in range(first, len(lines)):
        used += len(encoding.encode_ordinary(f"L{index}: {lines[index]}\n"))
        if used > view_tokens and index > first:
            return index
    return len(lines)


def render(page: Page, cursor: int, first: int, num_lines: int, view_tokens: int) -> str:
    lines = wrap_lines(page.text)
    if first >= len(lines) or first < 0:
        raise ToolUsageError(
            f"Invalid location parameter: `{first}`. Cannot exceed page maximum of "
            f"{len(lines) - 1}."
        )
    end = view_end(lines, first, num_lines, view_tokens)
    header = page.title
    shown_url = unquote(page.url)
    if shown_url:
        if len(shown_url) > MAX_URL_CHARS:
            shown_url = shown_url[: MAX_URL_CHARS - 3] + "..."
        header += f" ({shown_url})"
    scrollbar = f"viewing lines [{first} - {end - 1}] of {len(lines) - 1}"
    return f"[{cursor}] {header}\n**{scrollbar}**\n\n{numbered(lines[first:end], first)}"


def search_results_page(query: str, results: list[SearchResult]) -> Page:
    """The results as a page: one bullet per result, each a link to it."""
    urls: dict[str, str] = {}
    snippets: dict[str, Extract] = {}
    bullets = []
    for index, result in enumerate(results):
        link_id = str(index)
        urls[link_id] = result.url
        snippets[link_id] = Extract(result.url, result.title, result.snippet, result.line_idx)
        marker = link_marker(link_id, result.title or result.url, result.url, "")
        snippet = " ".join(clean_text(result.snippet).split())
        bullets.append(f"* {marker} {snippet}".rstrip())
    body = "\n".join(bullets) if bullets else f"No results for `{clean_text(query)}`."
    return Page(
        url="",
        title=clean_text(query),
        text=f"# Search Results\n\n{body}",
        urls=urls,
        snippets=snippets,
    )


def strip_links(text: str) -> str:
    text = _PARTIAL_START.sub("", text)
    text = _PARTIAL_END.sub(lambda match: match.group("content") or "", text)
    return _LINK.sub(lambda match: match.group("content"), text)


def find_page(pattern: str, page: Page) -> Page:
    """Every line of `page` holding `pattern` (case-insensitive), with the lines that
    follow it, as a page whose links point at the matches."""
    needle = pattern.lower()
    lines = strip_links("\n".join(wrap_lines(page.text))).split("\n")
    chunks: list[str] = []
    snippets: dict[str, Extract] = {}
    line_idx = 0
    while line_idx < len(lines) and len(chunks) < FIND_MAX_RESULTS:
        if needle not in lines[line_idx].lower():
            line_idx += 1
            continue
        match_id = str(len(chunks))
        snippet = "\n".join(lines[line_idx : line_idx + FIND_SHOWN_LINES])
        chunks.append(f"# 【{match_id}†match at L{line_idx}】\n{snippet}")
        snippets[match_id] = Extract(page.url, f"#{match_id}", snippet, line_idx)
        line_idx += FIND_SHOWN_LINES
    text = "\n\n".join(chunks) if chunks else f"No `find` results for pattern: `{pattern}`"
    return Page(
        url=f"{page.url}/find?pattern={quote(pattern)}",
        title=f"Find results for text: `{pattern}` in `{page.title}`",
        text=text,
        urls={match_id: page.url for match_id in snippets},
        snippets=snippets,
        citation_url=page.url,  # citing a find result cites the page searched
    )
