"""Chat Completions over the request pipeline: render the body with harmony, generate,
parse the output tokens back into reasoning / content / tool-call deltas.

Front ends hand a Chat Completions body (a plain dict in OpenAI's shape) and the sampling
parameters; the gRPC API converts its message first, the HTTP API passes the JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from oss_serve.harmony import (
    ContentDelta,
    HarmonyEvent,
    HarmonyRequestError,
    HarmonyStreamParser,
    ReasoningDelta,
    ToolCallArgumentsDelta,
    ToolCallStart,
    render_chat_request,
    stop_token_ids,
)
from oss_serve.protos import inference_pb2
from oss_serve.router.errors import InvalidRequest
from oss_serve.router.pipeline import GenerationRequest, RequestPipeline, TokenChunk
from oss_serve.router.structured_output import chat_structured_output


@dataclass
class ToolCallDelta:
    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class ChatChunk:
    request_id: str
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str = ""
    usage: inference_pb2.Usage | None = None

    def is_empty(self) -> bool:
        return not (self.reasoning or self.content or self.tool_calls or self.finish_reason)


@dataclass(frozen=True)
class ChatOptions:
    model: str = ""
    request_id: str = ""
    session_key: str = ""  # defaults to the body's `user`
    lane: str = "interactive"
    priority: int = 0
    timeout_s: float | None = None
    date: str | None = None  # the system message's date (YYYY-MM-DD), default today


def render_chat(body: Mapping[str, Any], date: str | None = None) -> list[int]:
    """Harmony tokens of a Chat Completions body; InvalidRequest names a bad field."""
    try:
        return render_chat_request(body, date=date)
    except HarmonyRequestError as err:
        raise InvalidRequest(str(err), field=err.field) from err


async def stream_chat(
    pipeline: RequestPipeline,
    body: Mapping[str, Any],
    sampling: inference_pb2.SamplingParams,
    options: ChatOptions,
) -> AsyncIterator[ChatChunk]:
    """Stream one chat completion as parsed deltas; the last chunk has finish_reason + usage."""
    prompt = render_chat(body, options.date)
    user = body.get("user")
    async for out in stream_harmony(
        pipeline,
        prompt,
        sampling,
        options,
        function_names=_function_names(body),
        session_key=user if isinstance(user, str) else "",
        structured_output=chat_structured_output(body),
    ):
        yield out


async def stream_harmony(
    pipeline: RequestPipeline,
    prompt: list[int],
    sampling: inference_pb2.SamplingParams,
    options: ChatOptions,
    *,
    function_names: Sequence[str] = (),
    session_key: str = "",
    structured_output: inference_pb2.StructuredOutput | None = None,
    on_tokens: Callable[[TokenChunk], None] | None = None,
) -> AsyncIterator[ChatChunk]:
    """Generate from a rendered harmony prompt (Chat or Responses) and parse the output;
    `on_tokens` sees every raw token chunk first (metrics, logprobs)."""
    with_stops = inference_pb2.SamplingParams()
    with_stops.CopyFrom(sampling)
    if not sampling.ignore_eos:  # harmony's <|return|> and <|call|> are the model's EOS
        with_stops.stop_token_ids.extend(
            t for t in stop_token_ids() if t not in sampling.stop_token_ids
        )
    if structured_output is not None:
        with_stops.structured_output.CopyFrom(structured_output)
    request = GenerationRequest(
        prompt_token_ids=prompt,
        sampling=with_stops,
        model=options.model,
        request_id=options.request_id,
        session_key=options.session_key or session_key,
        lane=options.lane,
        priority=options.priority,
        timeout_s=options.timeout_s,
    )
    parser = HarmonyStreamParser(function_names=function_names)
    async for chunk in pipeline.generate(request):
        if on_tokens is not None:
            on_tokens(chunk)
        events = parser.feed(chunk.token_ids)
        if chunk.finish_reason:
            events += parser.finish()
        out = _chunk_of(chunk.request_id, events)
        if chunk.finish_reason:
            out.finish_reason = _finish_reason(chunk.finish_reason, parser)
            if chunk.usage is not None:
                out.usage = inference_pb2.Usage()
                out.usage.CopyFrom(chunk.usage)
                out.usage.reasoning_tokens = parser.reasoning_tokens
        if not out.is_empty():
            yield out


def _chunk_of(request_id: str, events: list[HarmonyEvent]) -> ChatChunk:
    out = ChatChunk(request_id)
    for event in events:
        if isinstance(event, ReasoningDelta):
            out.reasoning += event.text
        elif isinstance(event, ContentDelta):
            out.content += event.text
        elif isinstance(event, ToolCallStart):
            out.tool_calls.append(ToolCallDelta(event.index, event.id, event.name))
        elif isinstance(event, ToolCallArgumentsDelta):
            last = out.tool_calls[-1] if out.tool_calls else None
            if last is not None and last.index == event.index:
                last.arguments += event.text
            else:
                out.tool_calls.append(ToolCallDelta(event.index, arguments=event.text))
    return out


def _finish_reason(engine_reason: str, parser: HarmonyStreamParser) -> str:
    """The parser knows tool_calls vs stop from the stop token; the engine knows abort."""
    if engine_reason == "abort":
        return "abort"
    if engine_reason == "stop" and parser.finish_reason in (None, "length"):
        return "stop"  # a stop string, or a stop token the engine left out of the ids
    return parser.finish_reason or engine_reason


def _function_names(body: Mapping[str, Any]) -> list[str]:
    names = []
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names
