"""An offline search backend: a BM25 index (bm25s, Snowball stemming, English stopwords)
over the Markdown, HTML and text files of a folder.

Each document becomes a page at `docs://{folder}/{relative path}`; the index holds
passages of a few wrapped lines, so a result's snippet is the passage that matched and
opening the result shows the page at that passage. Only indexed documents can be opened:
the backend reads nothing outside the folder and fetches nothing from the network.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import bm25s
import Stemmer
from bm25s.tokenization import Tokenizer

from oss_serve.common.logging import get_logger
from oss_serve.tools.browser.backend import BackendError, SearchResult
from oss_serve.tools.browser.display import strip_links, wrap_lines
from oss_serve.tools.browser.page import Page, html_to_page, markdown_to_page, text_to_page

log = get_logger(__name__)

DOCS_SCHEME = "docs"
SUFFIXES = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".txt": "text",
}
PASSAGE_LINES = 8
SNIPPET_CHARS = 300
MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class _Passage:
    url: str
    line_idx: int
    text: str


class LocalDocsBackend:
    """Searches and opens the documents of one folder, indexed once at start-up."""

    def __init__(self, folder: Path, pages: dict[str, Page], passages: list[_Passage]) -> None:
        self.source = f"local documents ({folder.name})"
        self._pages = pages
        self._passages = passages
        self._tokenizer = Tokenizer(stopwords="en", stemmer=Stemmer.Stemmer("english").stemWord)
        self._index: bm25s.BM25 | None = None
        if passages:
            texts = [f"{pages[p.url].title}\n{p.text}" for p in passages]
            ids = self._tokenizer.tokenize(texts, return_as="ids", show_progress=False)
            self._index = bm25s.BM25()
            self._index.index(ids, show_progress=False)

    @classmethod
    def from_folder(cls, folder: Path) -> LocalDocsBackend:
        folder = folder.resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"browser docs folder {folder} does not exist")
        host = re.sub(r"[^a-z0-9.-]+", "-", folder.name.lower()).strip("-") or "docs"
        pages: dict[str, Page] = {}
        passages: list[_Passage] = []
        for path in sorted(folder.rglob("*")):
            kind = SUFFIXES.get(path.suffix.lower())
            if kind is None or not path.is_file() or not path.resolve().is_relative_to(folder):
                continue  # other files, and links that lead out of the folder
            if path.stat().st_size > MAX_FILE_BYTES:
                log.warning("browser docs: file too large to index", path=str(path))
                continue
            relative = path.relative_to(folder).as_posix()
            url = f"{DOCS_SCHEME}://{host}/{quote(relative)}"
            page = _load(path, kind, url)
            pages[url] = page
            passages += _passages(page)
        log.info("browser docs indexed", folder=str(folder), documents=len(pages))
        return cls(folder, pages, passages)

    @property
    def document_count(self) -> int:
        return len(self._pages)

    async def search(self, query: str, topn: int) -> list[SearchResult]:
        # scoring a large folder takes a while: not on the event loop (the index is only read)
        return await asyncio.to_thread(self._search, query, topn)

    def _search(self, query: str, topn: int) -> list[SearchResult]:
        if self._index is None:
            return []
        ids = self._tokenizer.tokenize(
            [query], update_vocab=False, return_as="ids", show_progress=False
        )
        k = min(len(self._passages), max(1, topn) * 4)  # room for several passages per page
        found, scores = self._index.retrieve(ids, k=k, show_progress=False)
        results: list[SearchResult] = []
        seen: set[str] = set()
        for passage_index, score in zip(found[0], scores[0], strict=True):
            passage = self._passages[int(passage_index)]
            if score <= 0 or passage.url in seen:
                continue
            seen.add(passage.url)
            snippet = " ".join(strip_links(passage.text).split())[:SNIPPET_CHARS]
            title = self._pages[passage.url].title
            results.append(SearchResult(title, passage.url, snippet, passage.line_idx))
            if len(results) == topn:
                break
        return results

    async def fetch(self, url: str) -> Page:
        parts = urlsplit(url)  # the fragment and query name no other document
        page = self._pages.get(f"{parts.scheme}://{parts.netloc}{quote(unquote(parts.path))}")
        if page is None:
            raise BackendError(
                f"`{url}` is not one of the local documents; open a link or a search "
                "result instead (this browser is offline)"
            )
        return page

    async def aclose(self) -> None:
        return None


def _load(path: Path, kind: str, url: str) -> Page:
    text = path.read_text(encoding="utf-8", errors="replace")
    if kind == "markdown":
        return markdown_to_page(text, url)
    if kind == "html":
        return html_to_page(text, url)
    return text_to_page(text, url, path.stem.replace("_", " ").replace("-", " "))


def _passages(page: Page) -> list[_Passage]:
    lines = wrap_lines(page.text)
    passages = []
    for first in range(0, len(lines), PASSAGE_LINES):
        text = "\n".join(lines[first : first + PASSAGE_LINES]).strip()
        if text:
            passages.append(_Passage(page.url, first, text))
    return passages
