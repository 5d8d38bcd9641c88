"""What the browser needs of a search backend: results for a query, a page for a URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from oss_serve.tools.browser.page import Page


class BackendError(Exception):
    """A search or fetch that failed; its message is shown to the model."""


@dataclass(frozen=True)
class SearchResult:
    title: str
    url: str
    snippet: str
    line_idx: int | None = None  # where the snippet starts in the page `url` opens


class SearchBackend(Protocol):
    source: str  # what the model is told it searches ("local documents: ...", "the web")

    async def search(self, query: str, topn: int) -> list[SearchResult]: ...

    async def fetch(self, url: str) -> Page: ...

    async def aclose(self) -> None: ...
