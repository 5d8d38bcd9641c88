"""The HTTP search API backend against a real HTTP server on loopback: the documented
request (`GET ?q=&count=`, the key as a bearer token) and answer shapes, pages fetched
and shown, private addresses refused unless allowed, the key never shown."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from oss_serve.tools.base import ToolCall
from oss_serve.tools.browser.executor import BrowserExecutor
from oss_serve.tools.browser.http_search import HttpSearchBackend

pytestmark = [pytest.mark.integration]
API_KEY = "sk-search-key-123456"


class _SearchApi(BaseHTTPRequestHandler):
    requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self.requests.append((parts.path, parse_qs(parts.query), dict(self.headers)))
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if parts.path == "/search":
            results = [
                {"title": "Redis streams", "url": f"{base}/page.html", "snippet": "XADD appends"},
                {"title": "No URL"},
                {"title": "Other", "url": "https://example.org/x", "snippet": "elsewhere"},
            ]
            self._send(200, "application/json", json.dumps({"results": results}))
        elif parts.path == "/brave/search":
            web = {
                "results": [{"title": "Brave hit", "url": "https://b.example/", "description": "d"}]
            }
            self._send(200, "application/json", json.dumps({"web": web}))
        elif parts.path == "/page.html":
            html = "<html><title>Streams</title><body><p>XADD appends. <a href='/next'>Next</a></p></body></html>"
            self._send(200, "text/html; charset=utf-8", html)
        elif parts.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/page.html")
            self.end_headers()
        elif parts.path == "/image":
            self._send(200, "image/png", "\x89PNG")
        else:
            self._send(500, "text/plain", f"broken, key was {API_KEY}")

    def _send(self, status: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def search_api() -> Iterator[str]:
    _SearchApi.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SearchApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def browser_for(url: str, *, allow_private_urls: bool = True) -> BrowserExecutor:
    backend = HttpSearchBackend(url, API_KEY, allow_private_urls=allow_private_urls)
    return BrowserExecutor(backend, output_max_bytes=16_384)


def call(function: str, **arguments: object) -> ToolCall:
    return ToolCall(f"browser.{function}", json.dumps(arguments), "chain")


async def test_search_sends_the_documented_request_and_reads_results(search_api: str) -> None:
    browser = browser_for(f"{search_api}/search")
    try:
        out = await browser.call(call("search", query="redis xadd"))
    finally:
        await browser.aclose()
    path, query, headers = _SearchApi.requests[0]
    assert path == "/search" and query == {"q": ["redis xadd"], "count": ["10"]}
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert "L2: * 【0†Redis streams†127.0.0.1:" in out.text and "XADD appends" in out.text
    assert "【1†Other†example.org】 elsewhere" in out.text  # the entry with no URL is skipped
    assert [s["url"] for s in out.details["sources"]] == [
        f"{search_api}/page.html",
        "https://example.org/x",
    ]


async def test_braves_answer_shape_reads_the_same(search_api: str) -> None:
    browser = browser_for(f"{search_api}/brave/search")
    try:
        out = await browser.call(call("search", query="q"))
    finally:
        await browser.aclose()
    assert "【0†Brave hit†b.example】 d" in out.text


async def test_a_failing_search_service_is_an_error_without_the_key(
    search_api: str, caplog: pytest.LogCaptureFixture
) -> None:
    browser = browser_for(f"{search_api}/down")
    with caplog.at_level(logging.DEBUG):
        out = await browser.call(call("search", query="q"))
    await browser.aclose()
    assert out.error
    assert out.text == "Error during search for `q`: the search service answered HTTP 500"
    assert API_KEY not in caplog.text


async def test_results_open_as_pages_following_redirects(search_api: str) -> None:
    browser = browser_for(f"{search_api}/search")
    try:
        await browser.call(call("search", query="redis"))
        page = await browser.call(call("open", id=0))
        moved = await browser.call(call("open", id=f"{search_api}/moved"))
        image = await browser.call(call("open", id=f"{search_api}/image"))
    finally:
        await browser.aclose()
    assert page.text.startswith(f"[1] Streams ({search_api}/page.html)")
    assert "L0: XADD appends. 【0†Next】" in page.text
    assert moved.text.startswith(f"[2] Streams ({search_api}/page.html)")
    assert image.error and "image/png, which the browser cannot show" in image.text


async def test_private_addresses_are_refused_unless_allowed(search_api: str) -> None:
    browser = browser_for(f"{search_api}/search", allow_private_urls=False)
    try:
        for url in [f"{search_api}/page.html", "http://169.254.169.254/latest/", "http://[::1]/"]:
            out = await browser.call(call("open", id=url))
            assert out.error and "is not a public address" in out.text, out.text
        ftp = await browser.call(call("open", id="ftp://example.org/file"))
        assert ftp.error and "only http and https URLs" in ftp.text
    finally:
        await browser.aclose()
    assert not any(path == "/page.html" for path, _, _ in _SearchApi.requests)


async def test_https_pages_connect_to_the_checked_address_and_verify_the_name(tmp_path) -> None:
    import ssl

    from tests.router.tls import make_tls_material

    tls = make_tls_material(tmp_path / "tls")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SearchApi)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tls.server_cert, tls.server_key)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    trusted = ssl.create_default_context(cafile=str(tls.ca))
    untrusted = ssl.create_default_context(cafile=str(tls.other_ca))
    try:
        for verify, expect_ok in ((trusted, True), (untrusted, False)):
            backend = HttpSearchBackend(
                f"https://localhost:{port}/search", None, allow_private_urls=True, verify=verify
            )
            browser = BrowserExecutor(backend, output_max_bytes=4096)
            out = await browser.call(call("open", id=f"https://localhost:{port}/page.html"))
            await browser.aclose()
            if expect_ok:
                assert out.text.startswith(f"[0] Streams (https://localhost:{port}/page.html)")
            else:
                assert out.error and "could not be fetched (ConnectError)" in out.text
    finally:
        server.shutdown()
        server.server_close()
