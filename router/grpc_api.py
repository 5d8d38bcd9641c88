"""The public gRPC service `oss_serve.v1.Inference`, a thin adapter over the request pipeline.

Every call presents an API key as metadata, `authorization: Bearer <key>` or `x-api-key`;
the pipeline's gate decides (UNAUTHENTICATED when a key is required and this one is not
known). Pipeline errors become gRPC statuses with their message; RESOURCE_EXHAUSTED
(overload or a key's rate limit) carries the retry delay twice, as `retry-after` trailing
metadata (seconds, like HTTP) and as a standard `google.rpc.RetryInfo` status detail. A
client cancel or an expired deadline ends the handler, which stops the request on its
replica.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from oss_serve.protos import inference_pb2, inference_pb2_grpc
from oss_serve.router.chat import ChatChunk, ChatOptions, open_chat, plan_chat
from oss_serve.router.detokenize import Detokenizer
from oss_serve.router.errors import InvalidRequest, RequestError
from oss_serve.router.gate import Caller, presented_key
from oss_serve.router.pipeline import GenerationRequest, RequestPipeline, TokenChunk
from oss_serve.streams.records import lane_name


class InferenceService(inference_pb2_grpc.InferenceServicer):
    def __init__(self, pipeline: RequestPipeline, *, owned_by: str = "oss-serve") -> None:
        self._pipeline = pipeline
        self._owned_by = owned_by
        self._created = int(time.time())

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        detokenizer = Detokenizer(skip_special_tokens=request.skip_special_tokens)
        try:
            caller = await self._caller(context)
            generation = _generation_request(request, context)
            [stream] = await self._pipeline.open(caller, [generation])
        except RequestError as err:
            await _abort(context, err)
        async for chunk in _relaying(stream, context):
            yield _generate_response(chunk, detokenizer)

    async def ChatCompletion(
        self, request: inference_pb2.ChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.ChatCompletionChunk]:
        options = request.options
        try:
            caller = await self._caller(context)
            chat_options = ChatOptions(
                model=request.model,
                request_id=options.request_id,
                session_key=options.session_key,
                lane=_lane(options.lane),
                priority=options.priority,
                timeout_s=context.time_remaining(),
            )
            plan = plan_chat(chat_body(request), request.sampling, self._pipeline.limits)
            [stream] = await open_chat(self._pipeline, caller, plan, chat_options)
        except RequestError as err:
            await _abort(context, err)
        created = int(time.time())
        first = True
        async for chunk in _relaying(stream, context):
            yield _chat_chunk(chunk, request.model, created, role="assistant" if first else "")
            first = False

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        try:
            await self._caller(context)
        except RequestError as err:
            await _abort(context, err)
        view = self._pipeline.view
        lengths = view.models()
        named = [(name, "") for name in sorted(lengths)] + sorted(view.adapters().items())
        models = [
            inference_pb2.Model(
                id=name,
                owned_by=self._owned_by,
                created=self._created,
                max_model_len=lengths.get(parent or name, 0),
                parent=parent,
            )
            for name, parent in named
        ]
        return inference_pb2.ListModelsResponse(models=models)

    async def _caller(self, context: grpc.aio.ServicerContext) -> Caller:
        metadata = {
            key: value
            for key, value in context.invocation_metadata() or ()
            if isinstance(value, str)
        }
        return await self._pipeline.authenticate(
            presented_key(metadata.get("authorization"), metadata.get("x-api-key"))
        )


async def _relaying(
    stream: AsyncIterator[Any], context: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    """Iterate the pipeline's stream, turning its errors into gRPC statuses; closing the
    stream (client gone) cancels the request."""
    try:
        async for item in stream:
            yield item
    except RequestError as err:
        await _abort(context, err)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def _abort(context: grpc.aio.ServicerContext, err: RequestError) -> NoReturn:
    metadata: list[tuple[str, str | bytes]] = []
    if err.retry_after_header is not None:  # overloaded, rate limited, a retry still running
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=int(err.retry_after_header))
        )
        detail = any_pb2.Any()
        detail.Pack(retry)
        status = status_pb2.Status(
            code=err.grpc_code.value[0], message=err.message, details=[detail]
        )
        metadata = [
            ("retry-after", err.retry_after_header),
            ("grpc-status-details-bin", status.SerializeToString()),
        ]
    await context.abort(err.grpc_code, err.message, trailing_metadata=tuple(metadata))
    raise AssertionError("unreachable: context.abort raises")


def _lane(value: int) -> str:
    try:
        return lane_name(value)
    except ValueError:
        raise InvalidRequest(
            f"options.lane {value} is not a known lane", field="options.lane"
        ) from None


def _generation_request(
    request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
) -> GenerationRequest:
    options = request.options
    return GenerationRequest(
        prompt_token_ids=list(request.prompt_token_ids),
        sampling=request.sampling,
        model=request.model,
        request_id=options.request_id,
        session_key=options.session_key,
        lane=_lane(options.lane),
        priority=options.priority,
        timeout_s=context.time_remaining(),
    )


def _generate_response(
    chunk: TokenChunk, detokenizer: Detokenizer
) -> inference_pb2.GenerateResponse:
    response = inference_pb2.GenerateResponse(
        request_id=chunk.request_id,
        token_ids=chunk.token_ids,
        text=detokenizer.feed(chunk.token_ids, final=bool(chunk.finish_reason)),
        logprobs=chunk.logprobs,
        finish_reason=chunk.finish_reason,
    )
    if chunk.usage is not None:
        response.usage.CopyFrom(chunk.usage)
    return response


def _chat_chunk(
    chunk: ChatChunk, model: str, created: int, role: str
) -> inference_pb2.ChatCompletionChunk:
    out = inference_pb2.ChatCompletionChunk(
        id=chunk.request_id,
        model=model,
        created=created,
        role=role,
        reasoning=chunk.reasoning,
        content=chunk.content,
        finish_reason=chunk.finish_reason,
        tool_calls=[
            inference_pb2.ToolCallDelta(index=c.index, id=c.id, name=c.name, arguments=c.arguments)
            for c in chunk.tool_calls
        ],
    )
    if chunk.usage is not None:
        out.usage.CopyFrom(chunk.usage)
    return out


def chat_body(request: inference_pb2.ChatCompletionRequest) -> dict[str, Any]:
    """The Chat Completions body (OpenAI's JSON shape) of a gRPC ChatCompletionRequest."""
    body: dict[str, Any] = {"messages": [_message(m) for m in request.messages]}
    if request.model:
        body["model"] = request.model
    if request.user:
        body["user"] = request.user
    if request.reasoning_effort:
        body["reasoning_effort"] = request.reasoning_effort
    if request.tools:
        body["tools"] = [_tool(t, i) for i, t in enumerate(request.tools)]
    for name, raw in (
        ("tool_choice", request.tool_choice_json),
        ("response_format", request.response_format_json),
    ):
        if raw:
            body[name] = _json(raw, f"{name}_json", lambda v: v)
    if request.HasField("parallel_tool_calls"):
        body["parallel_tool_calls"] = request.parallel_tool_calls
    return body


def _message(message: inference_pb2.ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role}
    if message.content_parts:
        out["content"] = [{"type": p.type or "text", "text": p.text} for p in message.content_parts]
    else:
        out["content"] = message.content
    for name in ("name", "tool_call_id", "reasoning"):
        if getattr(message, name):
            out[name] = getattr(message, name)
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": c.type or "function",
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in message.tool_calls
        ]
    return out


def _tool(tool: inference_pb2.Tool, index: int) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.function.name}
    if tool.function.description:
        function["description"] = tool.function.description
    if tool.function.parameters_json:
        function["parameters"] = _json(
            tool.function.parameters_json, f"tools[{index}].function.parameters_json", dict
        )
    if tool.function.HasField("strict"):
        function["strict"] = tool.function.strict
    return {"type": tool.type or "function", "function": function}


def _json(raw: str, field: str, expect: Callable[[Any], Any]) -> Any:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        if field == "tool_choice_json":
            return raw  # a bare "auto" / "none" / "required"
        raise InvalidRequest(f"{field} is not valid JSON: {err}", field=field) from None
    if expect is dict and not isinstance(value, dict):
        raise InvalidRequest(f"{field} must be a JSON object", field=field)
    return value
