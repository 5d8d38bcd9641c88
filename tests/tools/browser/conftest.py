"""A docs folder with Markdown, HTML and text, and a browser over its local index."""

from __future__ import annotations

from pathlib import Path

import pytest

from oss_serve.tools.browser.executor import BrowserExecutor
from oss_serve.tools.browser.local_index import LocalDocsBackend

SERVING_MD = """# Serving guide

oss-serve routes each request to a replica by prefix-cache affinity.
The router queues requests in Redis streams, one per replica.

See [the tuning notes](sub/tuning.md) and the [gpt-oss repo](https://github.com/openai/gpt-oss).
"""
TUNING_MD = """# Tuning

Set --max-num-seqs to bound the batch.
The KV cache holds 24 KiB per token for gpt-oss-20b.
"""
CATS_HTML = """<html><head><title>Cats</title><script>var hidden = "purring";</script></head>
<body><h1>About cats</h1><p>Cats purr when content. <img alt="a cat" src="c.png"></p></body></html>"""
LONG_TXT = "\n".join(f"line {n}: filler about nothing in particular" for n in range(400))


@pytest.fixture
def docs_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "demo_docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "serving.md").write_text(SERVING_MD)
    (folder / "sub" / "tuning.md").write_text(TUNING_MD)
    (folder / "cats.html").write_text(CATS_HTML)
    (folder / "long_notes.txt").write_text(LONG_TXT + "\nthe needle is here\n")
    (folder / "image.png").write_bytes(b"\x89PNG not a document")
    (tmp_path / "outside.md").write_text("# Secret\n\nthe outside secret")
    (folder / "escape.md").symlink_to(tmp_path / "outside.md")
    return folder


@pytest.fixture
async def browser(docs_dir: Path):
    executor = BrowserExecutor(LocalDocsBackend.from_folder(docs_dir), output_max_bytes=16_384)
    yield executor
    await executor.aclose()
