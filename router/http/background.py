"""Background responses on the router that created them: each runs in a task of its own,
apart from any HTTP request, and writes its progress through `BackgroundRuns` (status, the
output so far, and, when streamed, every event) as the owner of its lease.

The run's events come from the same generator a foreground stream uses; here they are
renumbered after this module's own `response.created` and `response.queued` (sequence 0
and 1, written before the create call answers), so that any router can replay them.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from oss_serve.common.logging import get_logger
from oss_serve.router.errors import RequestError
from oss_serve.router.http.background_runs import (
    RENEW_INTERVAL_S,
    BackgroundRuns,
    StoredEvent,
    record_json,
)
from oss_serve.router.http.event_tails import EventTails
from oss_serve.router.http.response_events import OutputSoFar, decode_frame
from oss_serve.streams.redis_client import TRANSIENT_ERRORS

log = get_logger(__name__)

PROGRESS_INTERVAL_S = 0.5  # how often a poll's view of the output so far is refreshed
TERMINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")
_OWN_EVENTS = ("response.created", "response.queued")  # written by `start`, not the run


class _Stop(Exception):
    """The run must end early: `reason` is 'cancel' (asked to) or 'lost' (not the owner)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def failed_error(err: BaseException) -> dict[str, Any]:
    """The response's `error` for a run that failed (never internals of other errors)."""
    if isinstance(err, RequestError):
        code = "rate_limit_exceeded" if err.http_status == 429 else "server_error"
        return {"code": code, "message": err.message}
    return {"code": "server_error", "message": "the generation failed on the server"}


class BackgroundRun:
    """One background response being generated on this router."""

    def __init__(
        self,
        runs: BackgroundRuns,
        owner: str,
        response: dict[str, Any],
        input_items: list[dict[str, Any]],
        *,
        stream: bool,
        tool_session: str | None = None,
    ) -> None:
        self.runs = runs
        self.owner = owner
        self.response_id: str = response["id"]
        self.base = copy.deepcopy(response)
        self.input_json = json.dumps(input_items, ensure_ascii=False)
        self.stream = stream
        self.tool_session = tool_session  # kept in the record for a follow-up in the chain
        self.status = "queued"
        self.output = OutputSoFar()
        self.sequence = len(_OWN_EVENTS)
        self.cancel_requested = False
        self._saved_s = 0.0
        self.task: asyncio.Task[None] | None = None

    def snapshot(self, status: str | None = None) -> dict[str, Any]:
        return {**self.base, "status": status or self.status, "output": self.output.items}

    def opening_events(self) -> list[StoredEvent]:
        response = self.snapshot()
        return [
            StoredEvent.of({"type": kind, "sequence_number": number, "response": response})
            for number, kind in enumerate(_OWN_EVENTS)
        ]

    def cancel(self) -> None:
        """Stop generating (the request is cancelled on its replica) and end `cancelled`."""
        self.cancel_requested = True
        if self.task is not None:
            self.task.cancel()

    async def run(self, frames: AsyncIterator[bytes]) -> None:
        try:
            try:
                try:
                    async for frame in frames:
                        if await self._on_event(decode_frame(frame)):
                            return
                finally:  # closing the frames cancels the request on its replica
                    await frames.aclose()  # type: ignore[attr-defined]
                raise RuntimeError("the generation ended without a final event")
            except asyncio.CancelledError:
                if not self.cancel_requested:
                    raise  # the router is stopping: the lease lapses, readers report it
                await self._finish_cancelled()
            except _Stop as stop:
                if stop.reason == "cancel":
                    await self._finish_cancelled()
            except Exception as err:  # the run fails; what went wrong goes to the response
                if not isinstance(err, RequestError):
                    log.error(
                        "background response failed", response_id=self.response_id, exc_info=True
                    )
                await self._finish_failed(err)
        except TRANSIENT_ERRORS as err:  # the final write did not reach Redis
            log.warning(
                "could not store a background response's end; readers will report it failed",
                response_id=self.response_id,
                error=str(err),
            )

    async def _on_event(self, event: dict[str, Any]) -> bool:
        """Store one event of the run; True when it was the last."""
        kind = event.get("type")
        if kind in _OWN_EVENTS:
            return False
        status = ""
        if self.status == "queued":
            self.status = status = "in_progress"
        event["sequence_number"] = self.sequence
        self.sequence += 1
        if kind in TERMINAL_EVENTS:
            final = dict(event["response"], background=True)
            event["response"] = final
            await self._finish(final, [StoredEvent.of(event)])
            return True
        if kind == "response.in_progress":
            event["response"] = self.snapshot()
        self.output.apply(event)
        events = [StoredEvent.of(event)] if self.stream else []
        due = status != "" or time.monotonic() - self._saved_s >= PROGRESS_INTERVAL_S
        if events or due:
            response = json.dumps(self.snapshot(), ensure_ascii=False) if due else ""
            if due:
                self._saved_s = time.monotonic()
            self._check(
                await self.runs.write(
                    self.response_id, self.owner, events=events, status=status, response=response
                )
            )
        return False

    @staticmethod
    def _check(reply: str) -> None:
        if reply != "ok":
            raise _Stop(reply)

    async def _finish(self, final: dict[str, Any], events: list[StoredEvent]) -> None:
        if self.stream:
            events = [*events, StoredEvent.end(self.sequence)]
        else:
            events = []
        self.status = final["status"]
        response_json = json.dumps(final, ensure_ascii=False)
        await self.runs.write(
            self.response_id,
            self.owner,
            events=events,
            status=self.status,
            final_record=record_json(response_json, self.input_json, self.tool_session),
        )

    async def _finish_cancelled(self) -> None:
        await self._finish(self.snapshot("cancelled"), [])

    async def _finish_failed(self, err: BaseException) -> None:
        final = {**self.snapshot("failed"), "error": failed_error(err)}
        event = {"type": "response.failed", "sequence_number": self.sequence, "response": final}
        self.sequence += 1
        await self._finish(final, [StoredEvent.of(event)])


class BackgroundResponses:
    """This router's background runs, and the loop that renews their leases (it runs while
    there is at least one) and hands each its cancel request; `tails` reads the event
    streams this router serves."""

    def __init__(self, runs: BackgroundRuns, owner: str) -> None:
        self.runs = runs
        self.owner = owner
        self.tails = EventTails(runs)
        self.running: dict[str, BackgroundRun] = {}
        self._renewer: asyncio.Task[None] | None = None

    async def start(
        self,
        key_id: str,
        response: dict[str, Any],
        input_items: list[dict[str, Any]],
        frames: AsyncIterator[bytes],
        *,
        stream: bool,
        tool_session: str | None = None,
    ) -> dict[str, Any]:
        """Store the response `queued` and run it; the queued response."""
        response["background"] = True
        response["status"] = "queued"
        run = BackgroundRun(
            self.runs, self.owner, response, input_items, stream=stream, tool_session=tool_session
        )
        queued = run.snapshot()
        try:
            await self.runs.begin(
                run.response_id,
                record_json(json.dumps(queued, ensure_ascii=False), run.input_json, tool_session),
                key_id=key_id,
                owner=self.owner,
                stream=stream,
                events=run.opening_events() if stream else [],
            )
        except BaseException:
            await frames.aclose()  # type: ignore[attr-defined]
            raise
        run.task = asyncio.create_task(run.run(frames))
        self.running[run.response_id] = run
        run.task.add_done_callback(lambda _: self.running.pop(run.response_id, None))
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_while_running())
        return queued

    def cancel_here(self, response_id: str) -> bool:
        """Cancel a run of this router at once (no wait for the next renewal)."""
        run = self.running.get(response_id)
        if run is None:
            return False
        run.cancel()
        return True

    async def _renew_while_running(self) -> None:
        while self.running:
            await asyncio.sleep(RENEW_INTERVAL_S)
            try:
                replies = await self.runs.renew(self.owner, list(self.running))
            except TRANSIENT_ERRORS as err:
                log.warning("could not renew background response leases", error=str(err))
                continue
            for response_id, reply in replies.items():
                run = self.running.get(response_id)
                if run is None or reply == "ok":
                    continue
                if reply == "cancel":
                    run.cancel()
                elif run.task is not None:  # another router finalized it: stop, write nothing
                    run.task.cancel()
