"""Fixtures of the router's tests: a module's real redis-server, and one serving stack
(redis-server, a tiny-model replica, an in-process router with HTTP and gRPC) shared by
the session's tests of both front ends."""

from __future__ import annotations

import uuid

import pytest

from tests.router.http.stack import Stack
from tests.router.servers import redis_server

__all__ = ["redis_server"]


@pytest.fixture(scope="session")
def serving_stack(tmp_path_factory: pytest.TempPathFactory):
    running = Stack(tmp_path_factory.mktemp("serving-stack"), f"serve-{uuid.uuid4().hex[:6]}")
    try:
        yield running.start()
    finally:
        running.stop()
