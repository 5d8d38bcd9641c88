"""The model's citations of browser pages, `【{cursor}†{lines}】` (the format the browser's
description teaches), as the Responses API's `url_citation` annotations.

As in gpt-oss's reference server, each citation of a page with a URL is replaced by
` ([domain](url)) ` and annotated over that span; citations of pages without one (search
results) stay as written. Call it before the session closes: the cursors are its pages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from oss_serve.tools.browser.page import get_domain

CITATION = re.compile(r"【(?P<cursor>\d+)†(?P<content>[^†】]+)(?:†[^†】]+)?】")
# a citation the model has started but not closed (while streaming)
PARTIAL_CITATION = re.compile(r"【\d*(?:†[^†】]*(?:†[^†】]*)?)?$")


def url_citations(text: str, cursor_urls: Sequence[str]) -> tuple[str, list[dict[str, Any]]]:
    """(text with citations as Markdown links, their annotations by character offset)."""
    pieces: list[str] = []
    annotations: list[dict[str, Any]] = []
    length = 0
    last = 0
    for match in CITATION.finditer(text):
        cursor = int(match.group("cursor"))
        url = cursor_urls[cursor] if cursor < len(cursor_urls) else ""
        before = text[last : match.start()]
        pieces.append(before)
        length += len(before)
        last = match.end()
        if not url:
            pieces.append(match.group(0))
            length += len(match.group(0))
            continue
        domain = get_domain(unquote(url)) or url
        replacement = f" ([{domain}]({url})) "
        annotations.append(
            {
                "type": "url_citation",
                "start_index": length,
                "end_index": length + len(replacement),
                "url": url,
                "title": domain,
            }
        )
        pieces.append(replacement)
        length += len(replacement)
    pieces.append(text[last:])
    return "".join(pieces), annotations


def has_partial_citation(text: str) -> bool:
    """True when `text` ends inside a citation: a streaming caller holds that tail back."""
    return PARTIAL_CITATION.search(text) is not None
