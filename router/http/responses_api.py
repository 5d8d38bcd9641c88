"""POST /v1/responses (background ones: background_api.py): Responses input items through
harmony and the shared pipeline, output items `reasoning`, `message`, `function_call`,
non-streamed or as the Responses streaming events."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from oss_serve.harmony import HarmonyRequestError, render_responses_request
from oss_serve.protos import inference_pb2
from oss_serve.router.chat import ChatChunk, harmony_plan, open_chat
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


class OutputItems:
    """Builds the output items from parsed chunks, and the streaming events on the way."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self._calls: dict[int, dict[str, Any]] = {}  # tool-call index -> its item

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
    items = await _input_items(req, store)
    ctx.pipeline.limits.check_counts(messages=len(items), tools=len(req.tools or ()))
    try:
        prompt = render_responses_request({**body, "input": items})
    except HarmonyRequestError as err:
        raise invalid(str(err), err.field) from err
    plan = harmony_plan(
        prompt,
        sampling_params(req, max_tokens=req.max_output_tokens, logprobs=None),
        responses_structured_output(body),
        [t["name"] for t in req.tools or () if isinstance(t.get("name"), str)],
        session_key=req.user or "",
    )
    [stream] = await open_chat(ctx.pipeline, caller, plan, options_of(req))
    response = _response_json(req, new_id("resp_"), "in_progress")
    run = _Run(req, response, items, store)
    if req.background:
        frames = run.events(stream)
        return await start_background(
            request, caller, store, response, items, frames, stream=req.stream
        )
    if req.stream:
        return await streaming_response(run.events(stream))
    await unless_disconnected(request, run.collect(stream))
    return JSONResponse(response)


async def _input_items(req: ResponsesRequest, store: ResponseStore) -> list[dict[str, Any]]:
    new_items = (
        [{"type": "message", "role": "user", "content": req.input}]
        if isinstance(req.input, str)
        else list(req.input)
    )
    if req.previous_response_id is None:
        return new_items
    record = await store.load(req.previous_response_id)
    if record is None:
        raise ApiError(
            404,
            f"previous response {req.previous_response_id!r} not found (expired or never stored)",
            param="previous_response_id",
        )
    return ResponseStore.conversation(record) + new_items


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

    def _event(self, event: dict[str, Any]) -> bytes:
        event["sequence_number"] = self.sequence
        self.sequence += 1
        return sse(event, event["type"])

    async def collect(self, stream: AsyncGenerator[ChatChunk, None]) -> None:
        async with aclosing(stream) as chunks:
            async for chunk in chunks:
                self.output.feed(chunk)
                if chunk.finish_reason:
                    self._finish(chunk)
        self.output.close()
        await self._save()

    async def events(self, stream: AsyncGenerator[ChatChunk, None]) -> AsyncIterator[bytes]:
        first = True
        async with aclosing(stream) as chunks:
            async for chunk in chunks:
                if first:
                    first = False
                    yield self._event({"type": "response.created", "response": dict(self.response)})
                    yield self._event(
                        {"type": "response.in_progress", "response": dict(self.response)}
                    )
                for event in self.output.feed(chunk):
                    yield self._event(event)
                if chunk.finish_reason:
                    for event in self.output.close():
                        yield self._event(event)
                    self._finish(chunk)
        await self._save()
        kind = (
            "response.completed"
            if self.response["status"] == "completed"
            else "response.incomplete"
        )
        yield self._event({"type": kind, "response": self.response})

    def _finish(self, chunk: ChatChunk) -> None:
        response = self.response
        response["output"] = self.output.items
        response["usage"] = responses_usage(chunk.usage or inference_pb2.Usage())
        if chunk.finish_reason == "length":
            response["status"] = "incomplete"
            response["incomplete_details"] = {"reason": "max_output_tokens"}
        else:
            response["status"] = "completed"

    async def _save(self) -> None:
        if self.req.store:
            await self.store.save(self.response, self.items)


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
        "tools": req.tools or [],
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
