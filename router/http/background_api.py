"""The HTTP side of background responses, on any router: create (`background: true`),
`GET /v1/responses/{id}` (poll, or `?stream=true&starting_after=N` to resume the events),
`POST /v1/responses/{id}/cancel`, `DELETE /v1/responses/{id}`.

Only the API key that created a background response sees it (404 for any other). A run
whose router stopped renewing its lease is settled here, by the first reader after the
lease lapsed: `failed` with an error (or `cancelled` when a cancel was asked for).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from oss_serve.router.gate import Caller
from oss_serve.router.http.background import BackgroundResponses
from oss_serve.router.http.background_runs import (
    BackgroundRuns,
    RunState,
    StoredEvent,
    record_json,
)
from oss_serve.router.http.context import ApiContext
from oss_serve.router.http.errors import ApiError, invalid
from oss_serve.router.http.event_tails import EventTails
from oss_serve.router.http.models import ResponsesRequest
from oss_serve.router.http.response_events import frame_of
from oss_serve.router.http.response_store import ResponseStore
from oss_serve.router.http.streaming import streaming_response

IDLE_CHECK_S = 1.0  # a stream with no new event this long checks its run (ended, abandoned)
CANCEL_POLL_S = 0.05
ABANDONED = (
    "the router running this background response stopped before it finished "
    "(its lease lapsed); create the response again"
)


def check_background(req: ResponsesRequest) -> None:
    """`background: true` keeps the response in the store, so it needs `store: true`."""
    if req.background and not req.store:
        raise invalid(
            "background responses are stored while they run: `background: true` needs "
            "`store: true`",
            "store",
        )


def background_of(request: Request) -> BackgroundResponses:
    manager = request.app.state.background
    if not isinstance(manager, BackgroundResponses):
        raise TypeError("the app has no background responses")
    return manager


async def start_background(
    request: Request,
    caller: Caller,
    store: ResponseStore,
    response: dict[str, Any],
    input_items: list[dict[str, Any]],
    frames: AsyncIterator[bytes],
    *,
    stream: bool,
    tool_session: str | None = None,
) -> Response:
    """Answer a `background: true` create: the queued response, or its event stream.
    `tool_session`: the built-in tools' session, kept in the record for a follow-up."""
    manager = background_of(request)
    queued = await manager.start(
        caller.key.key_id, response, input_items, frames, stream=stream, tool_session=tool_session
    )
    if stream:
        frames = tail(manager.runs, manager.tails, store, queued["id"], after=-1)
        return await streaming_response(frames)
    return JSONResponse(queued)


class BackgroundApi:
    """The routes that read, resume, cancel and delete stored responses."""

    def __init__(self, ctx: ApiContext, store: ResponseStore, manager: BackgroundResponses):
        self.ctx = ctx
        self.store = store
        self.manager = manager
        self.runs = manager.runs

    async def get(self, request: Request) -> Response:
        caller = await self.ctx.authenticate(request)
        response_id = request.path_params["response_id"]
        stream = _stream_flag(request)
        after = _starting_after(request)
        run = await self._run_of(caller, response_id)
        if stream:
            return await self._resume(response_id, run, after)
        return JSONResponse(await self._latest(response_id, run))

    async def cancel(self, request: Request) -> Response:
        caller = await self.ctx.authenticate(request)
        response_id = request.path_params["response_id"]
        run = await self._run_of(caller, response_id)
        if run is None:
            await self._stored(response_id)  # 404 when there is none at all
            raise invalid(
                "only responses created with `background: true` can be cancelled",
                "response_id",
            )
        if run.running and await self.runs.request_cancel(response_id):
            self.manager.cancel_here(response_id)
            run = await self._until_ended(response_id)
        return JSONResponse(await self._latest(response_id, run))

    async def delete(self, request: Request) -> Response:
        caller = await self.ctx.authenticate(request)
        response_id = request.path_params["response_id"]
        run = await self._run_of(caller, response_id)
        if run is not None and run.running:  # its router stops it on its next write
            await self.runs.request_cancel(response_id)
            self.manager.cancel_here(response_id)
        if not await self.store.delete(response_id):
            raise ApiError(404, "no stored response with that id", param="response_id")
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    async def _run_of(self, caller: Caller, response_id: str) -> RunState | None:
        """The background run, if the response is one; 404 for another key's."""
        run = await self.runs.state(response_id)
        if run is not None and run.key_id != caller.key.key_id:
            raise _not_found()
        return run

    async def _stored(self, response_id: str) -> dict[str, Any]:
        record = await self.store.load(response_id)
        if record is None:
            raise _not_found()
        response: dict[str, Any] = record["response"]
        return response

    async def _resume(self, response_id: str, run: RunState | None, after: int) -> Response:
        if run is None:
            await self._stored(response_id)
            raise invalid(
                "only a background response created with `stream: true` can be streamed "
                "again; retrieve it without `stream`",
                "stream",
            )
        if not run.stream:
            raise invalid(
                "this background response was created without `stream: true`, so its "
                "events are not kept; poll it instead",
                "stream",
            )
        first = await self.runs.first_sequence(response_id)
        if first is not None and first > after + 1:
            raise invalid(
                f"events before sequence number {first} are no longer kept; resume from "
                f"starting_after >= {first - 1}",
                "starting_after",
            )
        frames = tail(self.runs, self.manager.tails, self.store, response_id, after)
        return await streaming_response(frames)

    async def _latest(self, response_id: str, run: RunState | None) -> dict[str, Any]:
        """The response as it stands: the output so far while it runs, settled first when
        its router is gone."""
        if run is not None and run.running:
            if await self.runs.lapsed(run):
                await settle_abandoned(self.runs, self.store, response_id, run)
            elif run.response is not None:
                return run.response
        return await self._stored(response_id)

    async def _until_ended(self, response_id: str) -> RunState | None:
        """Wait until the run's owner has stopped it, or its lease lapsed (its router is
        gone), for at most twice the lease; the run as it then is."""
        deadline = asyncio.get_running_loop().time() + 2 * self.runs.lease_s
        while True:
            run = await self.runs.state(response_id)
            if run is None or not run.running or await self.runs.lapsed(run):
                return run
            if asyncio.get_running_loop().time() > deadline:
                return run
            await asyncio.sleep(CANCEL_POLL_S)


async def settle_abandoned(
    runs: BackgroundRuns, store: ResponseStore, response_id: str, run: RunState
) -> None:
    """End a run whose lease lapsed: `cancelled` if that was asked for, else `failed`."""
    record = await store.load(response_id) or {"response": {}, "input": []}
    base = run.response or record["response"]
    status = "cancelled" if run.cancel_requested else "failed"
    final = {**base, "status": status}
    if status == "failed":
        final["error"] = {"code": "server_error", "message": ABANDONED}
    last = await runs.last_sequence(response_id) if run.stream else -1
    events: list[StoredEvent] = []
    if run.stream:
        if status == "failed":
            events.append(
                StoredEvent.of(
                    {"type": "response.failed", "sequence_number": last + 1, "response": final}
                )
            )
        events.append(StoredEvent.end(last + 1 + len(events)))
    record_text = record_json(
        json.dumps(final, ensure_ascii=False),
        json.dumps(record["input"], ensure_ascii=False),
        record.get("tool_session"),
    )
    await runs.abandon(response_id, record_text, status, last, events)


async def tail(
    runs: BackgroundRuns, tails: EventTails, store: ResponseStore, response_id: str, after: int
) -> AsyncIterator[bytes]:
    """The stored events after sequence number `after`, then the new ones as they come,
    until the end marker (or the response is gone)."""
    async with tails.follow(response_id, after) as follower:
        ended = False
        while True:
            try:
                _, fields = await asyncio.wait_for(follower.entries.get(), IDLE_CHECK_S)
            except TimeoutError:
                if ended:
                    return
                run = await runs.state(response_id)
                if run is None or not run.running:
                    ended = True  # what it wrote last comes with the next read, if anything
                elif await runs.lapsed(run):
                    await settle_abandoned(runs, store, response_id, run)
                continue
            if b"end" in fields:
                return
            yield frame_of(fields[b"type"].decode(), fields[b"event"].decode())


def _not_found() -> ApiError:
    return ApiError(
        404, "no stored response with that id (expired or never stored)", param="response_id"
    )


def _stream_flag(request: Request) -> bool:
    raw = request.query_params.get("stream", "false").lower()
    if raw not in ("true", "false"):
        raise invalid("stream must be true or false", "stream")
    return raw == "true"


def _starting_after(request: Request) -> int:
    raw = request.query_params.get("starting_after")
    if raw is None:
        return -1
    try:
        value = int(raw)
    except ValueError:
        raise invalid(
            "starting_after must be a sequence number (an integer >= 0)", "starting_after"
        ) from None
    if value < 0:
        raise invalid(
            "starting_after must be a sequence number (an integer >= 0)", "starting_after"
        )
    return value
