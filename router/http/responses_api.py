"""POST /v1/responses (background ones: background_api.py): Responses input items
through harmony and the shared pipeline (in the server-side tool loop), output items
`reasoning`, `message`, `function_call` and the server-side calls' (`tool_items.py`),
non-streamed or as the Responses streaming events."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from oss_serve.harmony import HarmonyRequestError, render_responses_request
from oss_serve.harmony.server_tools import server_tool_request
from oss_serve.protos import inference_pb2
from oss_serve.router.chat import ChatChunk, harmony_plan
from oss_serve.router.gate import Caller
from oss_serve.router.http import tool_items
from oss_serve.router.http.background_api import check_background, start_background
from oss_serve.router.http.chat_api import options_of
from oss_serve.router.http.context import ApiContext
from oss_serve.router.http.errors import ApiError, invalid
from oss_serve.router.http.models import ResponsesRequest
from oss_serve.router.http.openai_json import new_id, responses_usage
from oss_serve.router.http.request_body import parse_body, read_json, sampling_params
from oss_serve.router.http.response_store import ResponseStore
from oss_serve.router.http.streaming import sse, streaming_response, unless_disconnected
from oss_serve.router.structured_output import responses_structured_output
from oss_serve.router.tool_loop import (
    MAX_TOOL_CALLS,
    LoopEvent,
    ToolCallFinished,
    ToolCallStarted,
    ToolLoop,
    new_tool_session,
)
from oss_serve.router.tool_set import McpListing, RequestTools, open_request_tools


class OutputItems:
    """Builds the output items from parsed chunks, and the streaming events on the way."""

    def __init__(self, tool_session: str = "") -> None:
        self.items: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self._calls: dict[int, dict[str, Any]] = {}  # tool-call index -> its item
        self._tool_session = tool_session
        self._server_calls: dict[int, dict[str, Any]] = {}  # server-side call index -> item

    def feed_tool(self, event: ToolCallStarted | ToolCallFinished) -> list[dict[str, Any]]:
        """A server-side call's item: added when called, done with the tool's result."""
        events: list[dict[str, Any]] = []
        if isinstance(event, ToolCallStarted):
            item = tool_items.call_item(event, self._tool_session)
            if item is not None:
                self._server_calls[event.index] = item
                self._add_item(events, item, tool_items.started_events(item))
            return events
        item = self._server_calls.pop(event.index, None)
        if item is not None:
            self._done_item(events, item, tool_items.finish_item(item, event))
        return events

    def add_listing(self, listing: McpListing) -> list[dict[str, Any]]:
        """An MCP server's `mcp_list_tools` item, added and done at once."""
        events: list[dict[str, Any]] = []
        item = tool_items.list_tools_item(listing)
        progress, completed = tool_items.list_tools_events()
        self._add_item(events, item, progress)
        self._done_item(events, item, completed)
        return events

    def _add_item(
        self, events: list[dict[str, Any]], item: dict[str, Any], progress: list[dict[str, Any]]
    ) -> None:
        self._finish_open(events)
        self.items.append(item)
        index = len(self.items) - 1
        added = {"type": "response.output_item.added", "output_index": index}
        events.append({**added, "item": tool_items.in_progress_copy(item)})
        events.extend({**e, "item_id": item["id"], "output_index": index} for e in progress)

    def _done_item(
        self, events: list[dict[str, Any]], item: dict[str, Any], progress: list[dict[str, Any]]
    ) -> None:
        index = self.items.index(item)
        events.extend({**e, "item_id": item["id"], "output_index": index} for e in progress)
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})

    def feed(self, chunk: ChatChunk) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if chunk.reasoning:
            item = self._ensure(events, "reasoning")
            item["content"][0]["text"] += chunk.reasoning
            events.append(
                _text_delta("response.reasoning_text.delta", item, self.items, chunk.reasoning)
            )
        if chunk.content:
            item = self._ensure(events, "message")
            item["content"][0]["text"] += chunk.content
            events.append(
                _text_delta("response.output_text.delta", item, self.items, chunk.content)
            )
        for call in chunk.tool_calls:
            if call.index not in self._calls:
                self._calls[call.index] = self._start(
                    events, _function_call_item(call.id, call.name)
                )
            item = self._calls[call.index]
            item["arguments"] += call.arguments
            if call.arguments:
                events.append(
                    {
                        "type": "response.function_call_arguments.delta",
                        "item_id": item["id"],
                        "output_index": self.items.index(item),
                        "delta": call.arguments,
                    }
                )
        return events

    def close(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        self._finish_open(events)
        return events

    def _ensure(self, events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
        current = self._open
        if current is not None and current["type"] == kind:
            return current
        item = _reasoning_item() if kind == "reasoning" else _message_item()
        return self._start(events, item)

    def _start(self, events: list[dict[str, Any]], item: dict[str, Any]) -> dict[str, Any]:
        self._finish_open(events)
        self.items.append(item)
        index = len(self.items) - 1
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": _copy(item, "in_progress"),
            }
        )
        if item["type"] == "message":
            events.append(
                {
                    "type": "response.content_part.added",
                    "item_id": item["id"],
                    "output_index": index,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                }
            )
        self._open = item
        return item

    def _finish_open(self, events: list[dict[str, Any]]) -> None:
        item, self._open = self._open, None
        if item is None:
            return
        index = self.items.index(item)
        if item["type"] == "reasoning":
            events.append(_text_done("response.reasoning_text.done", item, index))
        elif item["type"] == "message":
            events.append(_text_done("response.output_text.done", item, index))
            events.append(
                {
                    "type": "response.content_part.done",
                    "item_id": item["id"],
                    "output_index": index,
                    "content_index": 0,
                    "part": item["content"][0],
                }
            )
        else:
            events.append(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item["id"],
                    "output_index": index,
                    "name": item["name"],
                    "arguments": item["arguments"],
                }
            )
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})


def _reasoning_item() -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": new_id("rs_"),
        "summary": [],
        "content": [{"type": "reasoning_text", "text": ""}],
        "status": "completed",
    }


def _message_item() -> dict[str, Any]:
    return {
        "type": "message",
        "id": new_id("msg_"),
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}],
    }


def _function_call_item(call_id: str, name: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": new_id("fc_"),
        "call_id": call_id,
        "name": name,
        "arguments": "",
        "status": "completed",
    }


def _copy(item: dict[str, Any], status: str) -> dict[str, Any]:
    copy = dict(item, status=status)
    if "content" in copy:
        copy["content"] = [dict(part, text="") for part in copy["content"]]
    if "arguments" in copy:
        copy["arguments"] = ""
    return copy


def _text_delta(
    kind: str, item: dict[str, Any], items: list[dict[str, Any]], text: str
) -> dict[str, Any]:
    event = {
        "type": kind,
        "item_id": item["id"],
        "output_index": items.index(item),
        "content_index": 0,
        "delta": text,
    }
    if kind == "response.output_text.delta":
        event["logprobs"] = []
    return event


def _text_done(kind: str, item: dict[str, Any], index: int) -> dict[str, Any]:
    event = {
        "type": kind,
        "item_id": item["id"],
        "output_index": index,
        "content_index": 0,
        "text": item["content"][0]["text"],
    }
    if kind == "response.output_text.done":
        event["logprobs"] = []
    return event


# --- the route --------------------------------------------------------------------------------


async def create_response(request: Request, ctx: ApiContext, store: ResponseStore) -> Response:
    caller = await ctx.authenticate(request)
    body = await read_json(request, ctx.max_body_bytes)
    req = parse_body(ResponsesRequest, body)
    check_background(req)
    items, tool_session = await _input_items(req, store)
    ctx.pipeline.limits.check_counts(messages=len(items), tools=len(req.tools or ()))
    try:
        requested = server_tool_request(body.get("tools"))
    except HarmonyRequestError as err:
        raise invalid(str(err), err.field) from err
    tools = await open_request_tools(ctx.tools, requested, tool_session or new_tool_session())
    try:
        run = _Run(req, _response_json(req, new_id("resp_"), "in_progress"), items, store)
        run.bind_tools(tools, ctx)
        stream = _loop(ctx, caller, req, body, items, tools).run()
        if req.background:
            return await start_background(
                request,
                caller,
                store,
                run.response,
                items,
                run.events(stream),
                stream=req.stream,
                tool_session=tools.session,
            )
    except BaseException:
        await tools.aclose()
        raise
    if req.stream:
        return await streaming_response(run.events(stream))
    await unless_disconnected(request, run.collect(stream))
    return JSONResponse(run.response)


def _loop(
    ctx: ApiContext,
    caller: Caller,
    req: ResponsesRequest,
    body: dict[str, Any],
    items: list[dict[str, Any]],
    tools: RequestTools,
) -> ToolLoop:
    """The request rendered with its tools, as a tool loop (one step when it has none)."""
    try:
        prompt = render_responses_request(
            {**body, "input": items},
            builtin_tools=tools.builtin_names,
            tool_namespaces=tools.namespaces,
        )
    except HarmonyRequestError as err:
        raise invalid(str(err), err.field) from err
    plan = harmony_plan(
        prompt,
        sampling_params(req, max_tokens=req.max_output_tokens, logprobs=None),
        responses_structured_output(body),
        [
            t["name"]
            for t in req.tools or ()
            if t.get("type") == "function" and isinstance(t.get("name"), str)
        ],
        session_key=req.user or "",
    )
    max_tool_calls = ctx.max_tool_calls if req.max_tool_calls is None else req.max_tool_calls
    return ToolLoop(
        ctx.pipeline, caller, plan, options_of(req), tools, max_tool_calls=max_tool_calls
    )


async def _input_items(
    req: ResponsesRequest, store: ResponseStore
) -> tuple[list[dict[str, Any]], str | None]:
    """The conversation so far and the tool session of its chain (None for a new chain)."""
    new_items = (
        [{"type": "message", "role": "user", "content": req.input}]
        if isinstance(req.input, str)
        else list(req.input)
    )
    if req.previous_response_id is None:
        return new_items, None
    record = await store.load(req.previous_response_id)
    if record is None:
        raise ApiError(
            404,
            f"previous response {req.previous_response_id!r} not found (expired or never stored)",
            param="previous_response_id",
        )
    return ResponseStore.conversation(record) + new_items, record.get("tool_session")


class _Run:
    """One Responses generation: folds chunks into the response object, stores it."""

    def __init__(
        self,
        req: ResponsesRequest,
        response: dict[str, Any],
        items: list[dict[str, Any]],
        store: ResponseStore,
    ) -> None:
        self.req = req
        self.response = response
        self.items = items
        self.store = store
        self.output = OutputItems()
        self.sequence = 0
        self.tools: RequestTools | None = None
        self.ctx: ApiContext | None = None

    def bind_tools(self, tools: RequestTools, ctx: ApiContext) -> None:
        """The request's server-side tools: their items, and their session after the run."""
        self.tools, self.ctx = tools, ctx
        self.output = OutputItems(tools.session)

    def _event(self, event: dict[str, Any]) -> bytes:
        event["sequence_number"] = self.sequence
        self.sequence += 1
        return sse(event, event["type"])

    async def collect(self, stream: AsyncGenerator[LoopEvent, None]) -> None:
        try:
            self._listings()
            async with aclosing(stream) as loop_events:
                async for loop_event in loop_events:
                    self._apply(loop_event)
            self.output.close()
            await self._save()
        finally:
            await self._end_tools()

    async def events(self, stream: AsyncGenerator[LoopEvent, None]) -> AsyncIterator[bytes]:
        try:
            async with aclosing(stream) as loop_events:
                # the first step opens before anything is sent: a refusal is an HTTP status
                first = await anext(loop_events, None)
                yield self._event({"type": "response.created", "response": dict(self.response)})
                yield self._event({"type": "response.in_progress", "response": dict(self.response)})
                for event in self._listings():
                    yield self._event(event)
                if first is not None:
                    for event in self._apply(first):
                        yield self._event(event)
                async for loop_event in loop_events:
                    for event in self._apply(loop_event):
                        yield self._event(event)
            await self._save()
        finally:
            await self._end_tools()
        kind = (
            "response.completed"
            if self.response["status"] == "completed"
            else "response.incomplete"
        )
        yield self._event({"type": kind, "response": self.response})

    def _listings(self) -> list[dict[str, Any]]:
        listings = self.tools.listings if self.tools is not None else ()
        return [event for listing in listings for event in self.output.add_listing(listing)]

    def _apply(self, loop_event: LoopEvent) -> list[dict[str, Any]]:
        """Fold one event of the loop in; the streaming events it makes."""
        if not isinstance(loop_event, ChatChunk):
            return self.output.feed_tool(loop_event)
        events = self.output.feed(loop_event)
        if loop_event.finish_reason:
            events += self.output.close()
            self._finish(loop_event)
        return events

    def _finish(self, chunk: ChatChunk) -> None:
        response = self.response
        response["output"] = self.output.items
        response["usage"] = responses_usage(chunk.usage or inference_pb2.Usage())
        if chunk.finish_reason in ("length", MAX_TOOL_CALLS):
            response["status"] = "incomplete"
            reason = "max_output_tokens" if chunk.finish_reason == "length" else MAX_TOOL_CALLS
            response["incomplete_details"] = {"reason": reason}
        else:
            response["status"] = "completed"

    async def _save(self) -> None:
        if self.req.store:
            session = self.tools.session if self.tools is not None else None
            await self.store.save(self.response, self.items, tool_session=session)

    async def _end_tools(self) -> None:
        """MCP connections close with the response; built-in sessions stay with a stored
        chain (until idle for the session TTL) and close now for an unstored response."""
        tools, ctx = self.tools, self.ctx
        if tools is None or ctx is None:
            return
        await tools.aclose()
        if ctx.tool_sessions is not None:
            await ctx.tool_sessions.end(tools, keep=self.req.store)


def _response_json(req: ResponsesRequest, response_id: str, status: str) -> dict[str, Any]:
    effort = req.reasoning.effort if req.reasoning is not None else None
    text = req.text if req.text is not None else {"format": {"type": "text"}}
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": req.model or "default",
        "output": [],
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "previous_response_id": req.previous_response_id,
        "max_output_tokens": req.max_output_tokens,
        "tools": [_echoed_tool(tool) for tool in req.tools or []],
        "max_tool_calls": req.max_tool_calls,
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "parallel_tool_calls": req.parallel_tool_calls
        if req.parallel_tool_calls is not None
        else True,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "reasoning": {"effort": effort or "medium", "summary": None},
        "text": text,
        "truncation": "disabled",
        "store": req.store,
        "metadata": req.metadata or {},
        "user": req.user,
        "usage": None,
    }


def _echoed_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool as the response shows (and the store keeps) it: MCP headers left out, since
    they usually hold the server's credentials."""
    if tool.get("type") != "mcp":
        return tool
    return {k: v for k, v in tool.items() if k not in ("headers", "authorization")}
