"""The `browser` namespace: `browser.search`, `browser.open` and `browser.find` with the
arguments gpt-oss was trained on, over one search backend, with each session's pages kept
as a stack whose index is the cursor the model cites (`【{cursor}†L{a}-L{b}】`)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from oss_serve.common.logging import get_logger
from oss_serve.tools.arguments import ArgumentsError, json_object
from oss_serve.tools.base import ToolCall, ToolOutput
from oss_serve.tools.browser.backend import BackendError, SearchBackend
from oss_serve.tools.browser.display import (
    ToolUsageError,
    find_page,
    render,
    search_results_page,
)
from oss_serve.tools.browser.page import Page
from oss_serve.tools.output_cap import cap_text

if TYPE_CHECKING:
    from oss_serve.common.settings import Settings

log = get_logger(__name__)

MAX_SEARCH_RESULTS = 10
VIEW_TOKENS = 1024
MAX_PAGES_PER_SESSION = 256
MAX_SESSIONS = 4096


@dataclass
class _Session:
    pages: list[Page] = field(default_factory=list)  # the index is the cursor

    def page(self, cursor: int) -> Page:
        if not self.pages:
            raise ToolUsageError("No pages to access!")
        if cursor == -1:
            return self.pages[-1]
        if not 0 <= cursor < len(self.pages):
            raise ToolUsageError(
                f"Cursor `{cursor}` is out of range. Available cursor indices: "
                f"[0 - {len(self.pages) - 1}]."
            )
        return self.pages[cursor]

    def push(self, page: Page) -> int:
        if len(self.pages) >= MAX_PAGES_PER_SESSION:
            raise ToolUsageError(
                f"This browsing session has opened {MAX_PAGES_PER_SESSION} pages, the most it may."
            )
        self.pages.append(page)
        return len(self.pages) - 1


class BrowserExecutor:
    namespace = "browser"

    def __init__(
        self,
        backend: SearchBackend,
        *,
        output_max_bytes: int,
        view_tokens: int = VIEW_TOKENS,
        max_search_results: int = MAX_SEARCH_RESULTS,
    ) -> None:
        self.backend = backend
        self._output_max_bytes = output_max_bytes
        self._view_tokens = view_tokens
        self._max_search_results = max_search_results
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> BrowserExecutor:
        """An HTTP search API when `browser_search_url` is set, else the local index over
        `browser_docs_dir` (one of them is needed)."""
        backend: SearchBackend
        if settings.browser_search_url:
            from oss_serve.tools.browser.http_search import HttpSearchBackend

            key = settings.browser_search_api_key
            backend = HttpSearchBackend(
                settings.browser_search_url,
                key.get_secret_value() if key is not None else None,
                allow_private_urls=settings.browser_allow_private_urls,
            )
        elif settings.browser_docs_dir is not None:
            from oss_serve.tools.browser.local_index import LocalDocsBackend

            backend = LocalDocsBackend.from_folder(settings.browser_docs_dir)
        else:
            raise ValueError(
                "the browser tool needs --browser-docs-dir (a local folder to search) or "
                "--browser-search-url (an HTTP search API)"
            )
        return cls(backend, output_max_bytes=settings.tool_output_max_bytes)

    def cursor_urls(self, session: str) -> list[str]:
        """The URL of each page the session opened, by cursor: what the model's
        citations `【{cursor}†...】` point at."""
        held = self._sessions.get(session)
        return [page.cited_url for page in held.pages] if held else []

    async def call(self, call: ToolCall) -> ToolOutput:
        function = call.recipient.removeprefix("browser.")
        action: dict[str, Any] = {"type": _ACTION_TYPES.get(function, function)}
        try:
            arguments = _arguments(call.arguments)
            action = _requested_action(function, arguments)
            session = self._session(call.session)
            if function == "search":
                text, action, sources = await self._search(session, arguments)
            elif function == "open":
                text, action, sources = await self._open(session, arguments)
            elif function == "find":
                text, action, sources = self._find(session, arguments)
            else:
                raise ToolUsageError(f"Unknown function: {function}; use search, open or find")
        except (ToolUsageError, BackendError) as error:
            text = cap_text(str(error), self._output_max_bytes)
            details: dict[str, Any] = {"action": action, "sources": []}
            return ToolOutput(author=call.recipient, text=text, error=True, details=details)
        details = {"action": action, "sources": [{"type": "url", "url": u} for u in sources]}
        return ToolOutput(
            author=call.recipient, text=cap_text(text, self._output_max_bytes), details=details
        )

    async def _search(
        self, session: _Session, arguments: dict[str, Any]
    ) -> tuple[str, dict[str, Any], list[str]]:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ToolUsageError("`query` must be a non-empty string")
        action = {"type": "search", "query": query}
        try:
            results = await self.backend.search(query, self._max_search_results)
        except BackendError as error:
            raise BackendError(f"Error during search for `{query}`: {error}") from error
        page = search_results_page(query, results)
        return self._show(session, page, 0, -1), action, [r.url for r in results]

    async def _open(
        self, session: _Session, arguments: dict[str, Any]
    ) -> tuple[str, dict[str, Any], list[str]]:
        link_id = arguments.get("id", -1)
        if isinstance(link_id, float) and link_id.is_integer():
            link_id = int(link_id)
        cursor = _integer(arguments, "cursor", -1)
        loc = _integer(arguments, "loc", -1)
        num_lines = _integer(arguments, "num_lines", -1)
        line_idx: int | None = None
        if isinstance(link_id, str):
            page = await self._fetch(link_id)
        elif isinstance(link_id, int) and not isinstance(link_id, bool):
            current = session.page(cursor)
            if link_id < 0:
                page = current  # scroll the page at `cursor`
            else:
                url = current.urls.get(str(link_id))
                if url is None:
                    raise ToolUsageError(f"Invalid link id `{link_id}`.")
                snippet = (current.snippets or {}).get(str(link_id))
                line_idx = snippet.line_idx if snippet else None
                page = await self._fetch(url)
        else:
            raise ToolUsageError("`id` must be a link id (integer) or a URL (string)")
        if loc < 0:  # a result opens a few lines above its snippet
            loc = line_idx or 0
            if loc > 4:
                loc -= 4
        action = {"type": "open_page", "url": page.url}
        return self._show(session, page, loc, num_lines), action, [page.url]

    def _find(
        self, session: _Session, arguments: dict[str, Any]
    ) -> tuple[str, dict[str, Any], list[str]]:
        pattern = arguments.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ToolUsageError("`pattern` must be a non-empty string")
        page = session.page(_integer(arguments, "cursor", -1))
        if page.snippets is not None:
            raise ToolUsageError("Cannot run `find` on search results page or find results page")
        action = {"type": "find", "pattern": pattern, "url": page.url}
        return self._show(session, find_page(pattern, page), 0, -1), action, [page.url]

    async def _fetch(self, url: str) -> Page:
        try:
            return await self.backend.fetch(url)
        except BackendError as error:
            raise BackendError(f"Error fetching URL `{url[:1024]}`: {error}") from error

    def _show(self, session: _Session, page: Page, loc: int, num_lines: int) -> str:
        cursor = session.push(page)
        try:
            return render(page, cursor, loc, num_lines, self._view_tokens)
        except ToolUsageError:
            session.pages.pop()  # a view that failed leaves no page behind
            raise

    def _session(self, name: str) -> _Session:
        session = self._sessions.get(name)
        if session is None:
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.popitem(last=False)
            session = self._sessions[name] = _Session()
        self._sessions.move_to_end(name)
        return session

    async def close_session(self, session: str) -> None:
        self._sessions.pop(session, None)

    async def aclose(self) -> None:
        self._sessions.clear()
        await self.backend.aclose()


_ACTION_TYPES = {"search": "search", "open": "open_page", "find": "find"}


def _requested_action(function: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The action as far as the arguments tell it, for the call's details even when it
    fails (the page a link id leads to is known only once it opens)."""
    action: dict[str, Any] = {"type": _ACTION_TYPES.get(function, function)}
    if function == "search" and isinstance(arguments.get("query"), str):
        action["query"] = arguments["query"]
    elif function == "open" and isinstance(arguments.get("id"), str):
        action["url"] = arguments["id"]
    elif function == "find" and isinstance(arguments.get("pattern"), str):
        action["pattern"] = arguments["pattern"]
    return action


def _arguments(text: str) -> dict[str, Any]:
    try:
        return json_object(text)
    except ArgumentsError as error:
        raise ToolUsageError(f"Invalid function arguments: {error}") from error


def _integer(arguments: dict[str, Any], name: str, default: int) -> int:
    """An integer argument; the schema says "number", so 3.0 counts as 3."""
    value = arguments.get(name, default)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ToolUsageError(f"`{name}` should be an integer, not `{type(value).__name__}`")
    return value
