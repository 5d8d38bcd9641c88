"""Real servers for router and replica tests: redis-server from the venv on a free port."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis

from oss_serve.cluster.launch.local_redis import LocalRedis, RedisNotFoundError, free_port

__all__ = ["RedisServer", "child_env", "free_port", "redis_server"]


class RedisServer(LocalRedis):
    """The project's LocalRedis, restartable on the same port; skips the test without a binary."""

    def __init__(
        self, folder: Path, *, appendonly: bool = True, password: str | None = None
    ) -> None:
        try:
            super().__init__(folder, appendonly=appendonly, password=password)
        except RedisNotFoundError as error:
            pytest.skip(str(error))

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def flush(self) -> None:
        redis.Redis.from_url(self.url).flushall()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


def child_env() -> dict[str, str]:
    """Environment for subprocesses: the suite's vocabulary and a quiet torch."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
