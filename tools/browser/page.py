"""Pages as the model reads them: plain text whose links are written `【{id}†{text}†{domain}】`
(the domain left out for links within the page's own site), with the link ids mapped to
their URLs so `browser.open(id=...)` can follow them. HTML goes through BeautifulSoup and
markdownify, Markdown through markdown-it first."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from bs4 import BeautifulSoup, Tag
from markdown_it import MarkdownIt
from markdownify import markdownify

# the display's own brackets, so that page text cannot forge a link or a citation
_RESERVED_CHARS = str.maketrans({"【": "〖", "】": "〗", "\u200b": ""})
_DROPPED_TAGS = ("script", "style", "noscript", "template", "svg", "math", "head", "title")
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")
_markdown = MarkdownIt("commonmark").enable("table")


@dataclass(frozen=True)
class Extract:
    """A quotable piece of a page: a search result's snippet, a find match."""

    url: str
    title: str
    text: str
    line_idx: int | None = None  # where it starts in the page it points into


@dataclass(frozen=True)
class Page:
    url: str
    title: str
    text: str
    urls: dict[str, str] = field(default_factory=dict)  # link id -> URL
    # set on pages made of results (search, find): their links point at extracts
    snippets: dict[str, Extract] | None = None
    citation_url: str | None = None  # what a citation of this page points at, when not `url`

    @property
    def cited_url(self) -> str:
        return self.url if self.citation_url is None else self.citation_url


def get_domain(url: str) -> str:
    return urlsplit(url if "://" in url else f"http://{url}").netloc


def resolve_link(page_url: str, href: str) -> str:
    """`href` against the page's URL, also for schemes urljoin does not know (the local
    index's docs://folder/path): resolved as if http, then given its scheme back."""
    scheme = urlsplit(page_url).scheme
    if scheme in ("http", "https", "file", "") or urlsplit(href).scheme:
        return urljoin(page_url, href)
    joined = urljoin("http" + page_url[len(scheme) :], href)
    return scheme + joined[len("http") :]


def clean_text(text: str) -> str:
    return text.translate(_RESERVED_CHARS)


def link_marker(link_id: str, text: str, url: str, page_url: str) -> str:
    text = " ".join(clean_text(text).replace("†", "‡").split())
    domain = get_domain(url)
    if domain and domain != get_domain(page_url):
        return f"【{link_id}†{text}†{domain}】"
    return f"【{link_id}†{text}】"


def html_to_page(html: str, url: str, title: str | None = None) -> Page:
    """A page from HTML: scripts and styles dropped, links numbered in order of first
    appearance, images as `[Image n: alt]`, the rest as Markdown-like text."""
    soup = BeautifulSoup(clean_text(html), "html.parser")
    page_title = title or (soup.title.get_text(" ", strip=True) if soup.title else "")
    for node in soup.find_all(_DROPPED_TAGS):
        node.decompose()
    urls = _number_links(soup, url)
    for index, image in enumerate(soup.find_all("img")):
        if isinstance(image, Tag):
            alt = image.get("alt") or image.get("title")
            image.replace_with(f"[Image {index}: {alt}]" if alt else f"[Image {index}]")
    text = markdownify(
        str(soup),
        heading_style="ATX",
        bullets="*",
        escape_asterisks=False,
        escape_underscores=False,
        escape_misc=False,
    )
    text = _BLANK_LINES.sub("\n\n", text).strip()
    return Page(url=url, title=page_title or get_domain(url) or url, text=text, urls=urls)


def markdown_to_page(markdown: str, url: str, title: str | None = None) -> Page:
    """A Markdown document: its first heading is the title unless one is given."""
    if title is None:
        heading = re.search(r"^#{1,6}\s+(.+?)\s*#*\s*$", markdown, re.MULTILINE)
        title = heading.group(1).strip() if heading else None
    return html_to_page(_markdown.render(markdown), url, title)


def text_to_page(text: str, url: str, title: str) -> Page:
    return Page(url=url, title=title, text=clean_text(text).strip())


def _number_links(soup: BeautifulSoup, page_url: str) -> dict[str, str]:
    """Replaces each <a href> with its link marker; the same URL keeps one id."""
    urls: dict[str, str] = {}
    ids_by_url: dict[str, str] = {}
    for anchor in soup.find_all("a", href=True):
        if not isinstance(anchor, Tag):
            continue
        href = str(anchor.get("href", "")).strip()
        text = anchor.get_text(" ", strip=True)
        if not text or href.startswith(("mailto:", "javascript:", "#")):
            anchor.replace_with(text)
            continue
        target = resolve_link(page_url, href)
        link_id = ids_by_url.get(target)
        if link_id is None:
            link_id = ids_by_url[target] = str(len(urls))
            urls[link_id] = target
        anchor.replace_with(link_marker(link_id, text, target, page_url))
    return urls
