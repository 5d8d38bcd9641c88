"""A real streaming stub server in its own process (own GIL, so client timings stay clean)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from oss_serve.cluster.launch.local_redis import free_port

STUB_API_KEY = "stub-test-key"
STUB_TTFT_MS = 80.0
STUB_ITL_MS = 20.0


@pytest.fixture(scope="session")
def stub_url() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oss_serve.benchmarks.stub_server",
            "--port",
            str(port),
            "--ttft-ms",
            str(STUB_TTFT_MS),
            "--itl-ms",
            str(STUB_ITL_MS),
            "--api-key",
            STUB_API_KEY,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"stub server exited: {process.stderr.read().decode()}")
            try:
                httpx.get(f"{url}/v1/models", timeout=1.0)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
