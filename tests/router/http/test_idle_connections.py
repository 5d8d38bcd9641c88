"""1,000 idle keep-alive HTTP connections on a real `oss-serve router` process: no thread
per connection, memory per connection under a stated bound, and the router still answers
on them and on new ones."""

from __future__ import annotations

import socket
import time
import uuid

import psutil
import pytest

from oss_serve.benchmarks.loadgen import raise_open_file_limit
from tests.router.servers import RedisServer
from tests.router.stack import http_url, start_router

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CONNECTIONS = 1000
WARM_UP = 50
MAX_THREADS_GROWTH = 2
MAX_BYTES_PER_CONNECTION = 64 * 1024  # the bound the README states
HEALTH = b"GET /health HTTP/1.1\r\nHost: router\r\nConnection: keep-alive\r\n\r\n"


def _answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = sock.recv(4096)
        assert chunk, "the router closed an idle keep-alive connection"
        data += chunk
    return data


def _open(port: int, count: int) -> list[socket.socket]:
    opened = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(HEALTH)
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        opened.append(sock)
    return opened


def _footprint(process: psutil.Process) -> tuple[int, int]:
    return process.num_threads(), process.memory_info().rss


def test_a_thousand_idle_keep_alive_connections_cost_no_thread_and_bounded_memory(tmp_path):
    wanted = 2 * CONNECTIONS + 512  # the router's and this process's ends
    if raise_open_file_limit(wanted) < wanted:  # the router inherits the limit
        pytest.skip(f"needs {wanted} open files")
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    router, _ = start_router(server.url, f"idle-{uuid.uuid4().hex[:6]}", tmp_path, "router")
    sockets: list[socket.socket] = []
    try:
        port = int(http_url(router).rsplit(":", 1)[1])
        process = psutil.Process(router.pid)
        sockets = _open(port, WARM_UP)
        time.sleep(0.5)
        threads_before, rss_before = _footprint(process)
        sockets += _open(port, CONNECTIONS - WARM_UP)
        time.sleep(0.5)
        threads_after, rss_after = _footprint(process)
        for sock in sockets[::100]:  # the idle connections still work
            sock.sendall(HEALTH)
            assert _answer(sock).startswith(b"HTTP/1.1 200")
        assert _open(port, 1)  # and new ones are taken
        per_connection = (rss_after - rss_before) / (CONNECTIONS - WARM_UP)
        print(
            f"{CONNECTIONS} idle connections: threads {threads_before} -> {threads_after}, "
            f"RSS +{(rss_after - rss_before) / 2**20:.1f} MiB ({per_connection / 1024:.1f} KiB each)"
        )
        assert threads_after - threads_before <= MAX_THREADS_GROWTH
        assert per_connection <= MAX_BYTES_PER_CONNECTION
    finally:
        for sock in sockets:
            sock.close()
        router.stop()
        server.stop()
