"""A search backend over an HTTP search API, and pages fetched from the web.

The API is called as `GET {browser_search_url}?q={query}&count={topn}` with the key (when
configured) as `Authorization: Bearer {key}` and `X-Subscription-Token: {key}`, and answers
JSON: `{"results": [{"title": ..., "url": ..., "snippet": ...}, ...]}`. Brave's Web Search
shape (`{"web": {"results": [{"title", "url", "description"}]}}`) reads the same, so Brave
works by URL and key alone; another provider needs a small proxy to this shape.

Opened pages are fetched directly, and only from public addresses unless
`allow_private_urls`: the host is resolved, every address must be global (no loopback,
private, link-local or metadata address), and the connection goes to the address that was
checked (TLS still verifies the name), for every redirect hop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from oss_serve.tools.browser.backend import BackendError, SearchResult
from oss_serve.tools.browser.page import Page, get_domain, html_to_page, text_to_page

MAX_REDIRECTS = 5
MAX_PAGE_BYTES = 2 * 1024 * 1024
USER_AGENT = "oss-serve-browser/1.0"


class HttpSearchBackend:
    def __init__(
        self,
        search_url: str,
        api_key: str | None,
        *,
        timeout_s: float = 15.0,
        allow_private_urls: bool = False,
        verify: ssl.SSLContext | bool = True,  # a context with a private CA, where needed
    ) -> None:
        self.source = f"the web (search by {get_domain(search_url)})"
        self._search_url = search_url
        self._api_key = api_key
        self._allow_private_urls = allow_private_urls
        self._client = httpx.AsyncClient(
            timeout=timeout_s,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            verify=verify,
        )

    async def search(self, query: str, topn: int) -> list[SearchResult]:
        headers = {}
        if self._api_key:
            headers = {
                "Authorization": f"Bearer {self._api_key}",
                "X-Subscription-Token": self._api_key,
            }
        try:
            response = await self._client.get(
                self._search_url, params={"q": query, "count": topn}, headers=headers
            )
        except httpx.HTTPError as error:
            raise BackendError(
                f"the search service did not answer ({type(error).__name__})"
            ) from error
        if response.status_code != 200:
            raise BackendError(f"the search service answered HTTP {response.status_code}")
        try:
            return _results(response.json())[:topn]
        except ValueError as error:
            raise BackendError(f"the search service's answer is not usable: {error}") from error

    async def fetch(self, url: str) -> Page:
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._get_checked(url)
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise BackendError(f"`{url}` answered HTTP {response.status_code}")
                body = await _read_capped(response)
            finally:
                await response.aclose()
            content_type = response.headers.get("content-type", "")
            # parsing a large page takes a while: not on the event loop
            return await asyncio.to_thread(_page, url, content_type, body, response.encoding)
        raise BackendError(f"`{url}` redirected more than {MAX_REDIRECTS} times")

    async def _get_checked(self, url: str) -> httpx.Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendError(f"only http and https URLs can be opened, not `{url}`")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await self._checked_address(parts.hostname, port)
        host_in_url = f"[{address}]" if address.version == 6 else str(address)
        pinned = parts._replace(netloc=f"{host_in_url}:{port}").geturl()
        request = self._client.build_request(
            "GET",
            pinned,
            headers={"Host": parts.netloc.rpartition("@")[2]},
            extensions={"sni_hostname": parts.hostname},
        )
        try:
            return await self._client.send(request, stream=True)
        except httpx.HTTPError as error:
            raise BackendError(f"`{url}` could not be fetched ({type(error).__name__})") from error

    async def _checked_address(
        self, host: str, port: int
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as error:
            raise BackendError(f"`{host}` could not be resolved") from error
        addresses = [_unmapped(ipaddress.ip_address(info[4][0])) for info in infos]
        if not addresses:
            raise BackendError(f"`{host}` could not be resolved")
        if not self._allow_private_urls and not all(a.is_global for a in addresses):
            raise BackendError(f"`{host}` is not a public address; it cannot be opened")
        return addresses[0]

    async def aclose(self) -> None:
        await self._client.aclose()


def _unmapped(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _results(payload: Any) -> list[SearchResult]:
    if not isinstance(payload, dict):
        raise ValueError("expected a JSON object")
    items = payload.get("results")
    if items is None and isinstance(payload.get("web"), dict):
        items = payload["web"].get("results")
    if not isinstance(items, list):
        raise ValueError('expected "results": [...]')
    results = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            snippet = item.get("snippet") or item.get("description") or ""
            results.append(SearchResult(str(item.get("title") or ""), item["url"], str(snippet)))
    return results


async def _read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= MAX_PAGE_BYTES:
            break
    return bytes(body[:MAX_PAGE_BYTES])


def _page(url: str, content_type: str, body: bytes, encoding: str | None) -> Page:
    text = body.decode(encoding or "utf-8", errors="replace")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type in ("text/html", "application/xhtml+xml") or (
        not media_type and text.lstrip()[:1] == "<"
    ):
        return html_to_page(text, url)
    if media_type.startswith("text/") or media_type in ("application/json", "application/xml"):
        return text_to_page(text, url, get_domain(url))
    raise BackendError(f"`{url}` is {media_type}, which the browser cannot show")
