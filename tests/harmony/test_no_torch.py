"""The router renders and parses without torch: importing harmony must not pull it in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

_SCRIPT = """
import sys
import oss_serve.harmony as harmony
tokens = harmony.render_chat_request({"messages": [{"role": "user", "content": "hi"}]}, date="2025-06-28")
harmony.parse_completion(tokens[-2:])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "oss_serve") and (
    m.startswith("torch") or m.startswith("oss_serve.workers") or m.startswith("oss_serve.kernels")))
print(",".join(heavy))
"""


def test_importing_and_using_harmony_does_not_import_torch_workers_or_kernels():
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
        check=True,
    )
    assert result.stdout.strip() == ""
