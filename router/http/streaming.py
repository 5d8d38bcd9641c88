"""Server-sent events and client disconnects.

A streamed answer is an async generator of SSE frames; Starlette cancels it when the client
goes away, and closing the pipeline's stream cancels the request on its replica. A
non-streamed answer is computed in a task raced against the client's disconnect, so a
client that hangs up aborts its request in the engine too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse

from oss_serve.router.errors import RequestError
from oss_serve.router.http.errors import from_request_error

T = TypeVar("T")
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {text}\n\n".encode()


async def first_then_rest(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pull the first frame before answering, so that an error the pipeline raises up front
    (400, 404, 429, 503) is a proper HTTP status instead of an error inside a 200 stream."""
    first = await anext(frames, None)

    async def replay() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield first
            async for frame in frames:
                yield frame
        except RequestError as err:  # failed mid-stream: the status is sent; report in-band
            yield sse(from_request_error(err).body())
        finally:
            await frames.aclose()  # type: ignore[attr-defined]

    return replay()


class _ClosingStreamingResponse(StreamingResponse):
    """Closes its frames however the response ends (a failed or stalled write included),
    so the request is cancelled at once rather than when the generator is collected."""

    async def stream_response(self, send: Any) -> None:
        try:
            await super().stream_response(send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def streaming_response(frames: AsyncIterator[bytes]) -> StreamingResponse:
    try:
        body = await first_then_rest(frames)
    except BaseException:
        await frames.aclose()  # type: ignore[attr-defined]
        raise
    return _ClosingStreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and so its request everywhere) if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientGone()
    return task.result()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def merged(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of several streams (n > 1 choices) as they come, tagged with the stream's
    index; closing the merge closes every stream (their requests are cancelled)."""
    if len(streams) == 1:
        try:
            async for item in streams[0]:
                yield 0, item
        finally:
            await streams[0].aclose()  # type: ignore[attr-defined]
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()
    end = object()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put((index, item, None))
            await queue.put((index, end, None))
        except BaseException as err:  # handed to the consumer, which re-raises it
            await queue.put((index, end, err))
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item, error = await queue.get()
            if error is not None and not isinstance(error, asyncio.CancelledError):
                raise error
            if item is end:
                remaining -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
