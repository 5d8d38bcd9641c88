"""One stack (redis-server, a tiny-model replica, an in-process router) for every HTTP test."""

from __future__ import annotations

import uuid

import pytest

from tests.router.http.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):
    running = Stack(tmp_path_factory.mktemp("http-stack"), f"http-{uuid.uuid4().hex[:6]}")
    try:
        yield running.start()
    finally:
        running.stop()
