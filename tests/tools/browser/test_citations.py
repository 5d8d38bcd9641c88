"""Citations of browser pages become url_citation annotations over the replaced text."""

from __future__ import annotations

import json

from oss_serve.tools.base import ToolCall
from oss_serve.tools.browser.citations import has_partial_citation, url_citations
from oss_serve.tools.browser.executor import BrowserExecutor


def test_citations_become_links_with_annotations() -> None:
    urls = ["", "https://docs.example.com/guide", "docs://demo/setup.md"]
    text = "Use Redis 【1†L3-L5】 and make up【2†L0】. Results【0†L2】 stay."
    replaced, annotations = url_citations(text, urls)
    assert replaced == (
        "Use Redis  ([docs.example.com](https://docs.example.com/guide))  and make up "
        "([demo](docs://demo/setup.md)) . Results【0†L2】 stay."
    )
    assert [a["url"] for a in annotations] == urls[1:]
    for annotation in annotations:
        span = replaced[annotation["start_index"] : annotation["end_index"]]
        assert span == f" ([{annotation['title']}]({annotation['url']})) "
        assert annotation["type"] == "url_citation"


def test_unknown_cursors_stay_as_written() -> None:
    assert url_citations("see 【9†L1】", ["x"]) == ("see 【9†L1】", [])


def test_an_unfinished_citation_is_noticed() -> None:
    assert has_partial_citation("as shown 【3†L")
    assert has_partial_citation("as shown 【")
    assert not has_partial_citation("as shown 【3†L1】.")


async def test_cursors_of_a_session_cite_the_pages_it_opened(browser: BrowserExecutor) -> None:
    def call(function: str, **arguments: object) -> ToolCall:
        return ToolCall(f"browser.{function}", json.dumps(arguments), "chain")

    await browser.call(call("search", query="redis"))
    await browser.call(call("open", id=0))
    await browser.call(call("find", pattern="redis"))
    urls = browser.cursor_urls("chain")
    assert urls == ["", "docs://demo-docs/serving.md", "docs://demo-docs/serving.md"]
    _, annotations = url_citations("Redis streams【2†L1】【1†L3】", urls)
    assert [a["url"] for a in annotations] == [urls[1], urls[1]]
