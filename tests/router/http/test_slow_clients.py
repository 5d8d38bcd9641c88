"""Slow and stalled HTTP clients: a reader that stops reading fills bounded buffers (the
producer of its stream stops), is disconnected after the stall limit and its stream is
closed; a slow reader of a real streamed answer does not hold the replica (the engine
finishes and frees the KV while the client has read one frame), and still gets it all."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
from fastapi import FastAPI

from oss_serve.router.http.server import HttpServer
from oss_serve.router.http.streaming import streaming_response
from tests.router.http.stack import API_KEY, TINY_MODEL, RouterLoop

pytestmark = [pytest.mark.integration]
FRAME = b"data: " + b"x" * 1018 + b"\n\n"  # 1 KiB
STALL_S = 1.5


class EndlessStream:
    """An SSE stream that never ends, counting what it produced and whether it was closed."""

    def __init__(self) -> None:
        self.frames = 0
        self.closed = asyncio.Event()

    async def produce(self):
        try:
            while True:
                self.frames += 1
                yield FRAME
                await asyncio.sleep(0)
        finally:
            self.closed.set()


@pytest.fixture(scope="module")
def endless_server():
    loop = RouterLoop()
    stream = EndlessStream()
    app = FastAPI()

    @app.get("/endless")
    async def endless():
        return await streaming_response(stream.produce())

    async def start() -> HttpServer:
        server = HttpServer(app, "127.0.0.1", 0, stall_timeout_s=STALL_S)
        await server.start()
        return server

    server = loop.run(start())
    try:
        yield server, stream, loop
    finally:
        loop.run(server.stop())
        loop.close()


def test_a_client_that_stops_reading_is_cut_off_and_its_stream_closed(endless_server):
    server, stream, loop = endless_server
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /endless HTTP/1.1\r\nHost: test\r\n\r\n")
    started = time.monotonic()
    deadline = started + 10
    produced = -1
    while produced != stream.frames:  # buffers full: the producer waits
        produced = stream.frames
        time.sleep(0.2)
        assert time.monotonic() < deadline, "the producer never stopped"
    assert produced * len(FRAME) < 64 * 2**20  # kernel + transport buffers, not the stream
    assert loop.run(asyncio.wait_for(stream.closed.wait(), STALL_S + 10))
    cut_after_s = time.monotonic() - started
    sock.settimeout(10)
    received = 0
    while chunk := sock.recv(1 << 16):  # what was buffered, then the server's close
        received += len(chunk)
    sock.close()
    assert STALL_S <= cut_after_s < STALL_S + 10
    assert stream.frames == produced  # nothing more was produced after the stall
    assert received <= produced * (len(FRAME) + 16) + 1024  # chunked framing, headers


def test_a_slow_reader_does_not_hold_the_replica(serving_stack):
    body = {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "a long story"}],
        "max_tokens": 300,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    url = f"{serving_stack.router.base_url}/chat/completions"
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", url, json=body, headers=headers) as response,
    ):
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        deadline = time.monotonic() + 60
        while int(serving_stack.replica_load().get("running", 1)) != 0:  # read nothing meanwhile
            assert time.monotonic() < deadline, "the replica never finished"
            time.sleep(0.05)
        load = serving_stack.replica_load()
        assert load["kv_blocks_free"] == load["kv_blocks_total"]
        frames = [line.removeprefix("data: ") for line in lines if line.startswith("data:")]
    assert frames[-1] == "[DONE]"
    usage = json.loads(frames[-2])["usage"]
    assert usage["completion_tokens"] == 300
