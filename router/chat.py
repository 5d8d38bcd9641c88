"""Chat over the request pipeline: plan (validate the counts, render the body with
harmony), pass the gate, generate, and parse the output tokens back into reasoning /
content / tool-call deltas.

Front ends hand a Chat Completions body (a plain dict in OpenAI's shape) and the sampling
parameters; the gRPC API converts its message first, the HTTP API passes the JSON. The
Responses API plans its own prompt (another rendering) and shares the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from oss_serve.harmony import (
    BuiltinToolCall,
    ContentDelta,
    HarmonyEvent,
    HarmonyRequestError,
    HarmonyStreamParser,
    MessageEnd,
    ReasoningDelta,
    ToolCallArgumentsDelta,
    ToolCallStart,
    render_chat_request,
    stop_token_ids,
)
from oss_serve.harmony.tool_schema import ToolNamespace
from oss_serve.protos import inference_pb2
from oss_serve.router.errors import InvalidRequest
from oss_serve.router.gate import Caller
from oss_serve.router.pipeline import GenerationRequest, RequestPipeline, TokenChunk
from oss_serve.router.request_limits import MAX_SESSION_KEY_CHARS, RequestLimits, check_length
from oss_serve.router.structured_output import chat_structured_output

INT64_SPAN = 2**64


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
    # the call to a tool outside `functions.` (python, browser.*, an MCP server's) that
    # ended the completion with `<|call|>`: the server runs it, or nobody does
    server_call: BuiltinToolCall | None = None

    def is_empty(self) -> bool:
        return not (
            self.reasoning
            or self.content
            or self.tool_calls
            or self.finish_reason
            or self.server_call
        )


@dataclass(frozen=True)
class ChatOptions:
    model: str = ""
    request_id: str = ""
    session_key: str = ""  # defaults to the body's `user`
    lane: str = "interactive"
    priority: int = 0
    timeout_s: float | None = None


@dataclass(frozen=True)
class HarmonyPlan:
    """A validated, rendered harmony request: what the pipeline generates from."""

    prompt: list[int]
    sampling: inference_pb2.SamplingParams  # the harmony stop tokens and grammar included
    function_names: list[str]
    session_key: str = ""  # the body's `user`, the default sticky-routing key


def plan_chat(
    body: Mapping[str, Any],
    sampling: inference_pb2.SamplingParams,
    limits: RequestLimits,
    *,
    n: int = 1,
    date: str | None = None,
    builtin_tools: Sequence[str] = (),
    tool_namespaces: Sequence[ToolNamespace] = (),
) -> HarmonyPlan:
    """Validate and render a Chat Completions body (InvalidRequest names a bad field);
    `builtin_tools` and `tool_namespaces` declare the server-side tools it may call."""
    messages, tools = body.get("messages"), body.get("tools")
    limits.check_counts(
        n=n,
        messages=len(messages) if isinstance(messages, list) else 0,
        tools=len(tools) if isinstance(tools, list) else 0,
    )
    try:
        prompt = render_chat_request(
            body, date=date, builtin_tools=builtin_tools, tool_namespaces=tool_namespaces
        )
    except HarmonyRequestError as err:
        raise InvalidRequest(str(err), field=err.field) from err
    user = body.get("user")
    if isinstance(user, str):
        check_length(user, "user", MAX_SESSION_KEY_CHARS)
    return harmony_plan(
        prompt,
        sampling,
        chat_structured_output(body),
        _function_names(body),
        session_key=user if isinstance(user, str) else "",
    )


def harmony_plan(
    prompt: list[int],
    sampling: inference_pb2.SamplingParams,
    structured_output: inference_pb2.StructuredOutput | None,
    function_names: list[str],
    *,
    session_key: str = "",
) -> HarmonyPlan:
    """The plan of a rendered prompt: harmony's stop tokens (the model's EOS) and the
    grammar, if any, added to the sampling parameters."""
    if structured_output is not None and sampling.min_tokens:
        raise InvalidRequest(
            "sampling.min_tokens cannot be combined with structured outputs",
            field="sampling.min_tokens",
        )
    with_stops = inference_pb2.SamplingParams()
    with_stops.CopyFrom(sampling)
    if not sampling.ignore_eos:  # harmony's <|return|> and <|call|> are the model's EOS
        with_stops.stop_token_ids.extend(
            t for t in stop_token_ids() if t not in sampling.stop_token_ids
        )
    if structured_output is not None:
        with_stops.structured_output.CopyFrom(structured_output)
    return HarmonyPlan(prompt, with_stops, function_names, session_key)


async def open_chat(
    pipeline: RequestPipeline,
    caller: Caller,
    plan: HarmonyPlan,
    options: ChatOptions,
    *,
    n: int = 1,
    on_tokens: Sequence[Callable[[TokenChunk], None]] = (),
) -> list[AsyncGenerator[ChatChunk, None]]:
    """The n choices of a planned request as parsed streams, once the caller's limits let
    them in; `on_tokens[i]` sees every raw token chunk of choice i first (logprobs)."""
    requests = [
        GenerationRequest(
            prompt_token_ids=plan.prompt,
            sampling=seeded(plan.sampling, index),
            model=options.model,
            request_id=options.request_id,
            choice=index,
            session_key=options.session_key or plan.session_key,
            lane=options.lane,
            priority=options.priority,
            timeout_s=options.timeout_s,
        )
        for index in range(n)
    ]
    await pipeline.charge(caller, requests)
    return [
        _parsed(
            pipeline,
            caller,
            request,
            plan.function_names,
            on_tokens[index] if on_tokens else None,
        )
        for index, request in enumerate(requests)
    ]


def seeded(sampling: inference_pb2.SamplingParams, index: int) -> inference_pb2.SamplingParams:
    """Choice `index` of n: the same parameters with its own seed (seed + index)."""
    if index == 0 or not sampling.HasField("seed"):
        return sampling
    copy = inference_pb2.SamplingParams()
    copy.CopyFrom(sampling)
    copy.seed = (sampling.seed + index + 2**63) % INT64_SPAN - 2**63
    return copy


async def _parsed(
    pipeline: RequestPipeline,
    caller: Caller,
    request: GenerationRequest,
    function_names: Sequence[str],
    on_tokens: Callable[[TokenChunk], None] | None,
) -> AsyncGenerator[ChatChunk, None]:
    """Generate and parse; the last chunk has finish_reason + usage (reasoning included)."""
    parser = HarmonyStreamParser(
        function_names=function_names, tool_call_id_prefix=_call_id_prefix(request)
    )
    tracker = pipeline.gate.track(caller, request.model)
    stream = pipeline.tracked(caller, request, on_tokens, tracker=tracker)
    async with aclosing(stream) as chunks:
        async for chunk in chunks:
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
                tracker.finish(out.finish_reason, out.usage)
            if not out.is_empty():
                yield out


def _call_id_prefix(request: GenerationRequest) -> str | None:
    """Tool call ids of a request with a client id are derived from it, so that a retry's
    replayed answer names its calls as the first one did (random otherwise)."""
    if not request.request_id:
        return None
    digest = hashlib.sha256(f"{request.request_id}:{request.choice}".encode()).hexdigest()
    return f"call_{digest[:16]}_"


def _chunk_of(request_id: str, events: list[HarmonyEvent]) -> ChatChunk:
    out = ChatChunk(request_id)
    for previous, event in zip([None, *events], events, strict=False):
        ends_with_call = isinstance(event, MessageEnd) and event.stop_reason == "tool_calls"
        if ends_with_call and isinstance(previous, BuiltinToolCall):
            out.server_call = previous
        elif isinstance(event, ReasoningDelta):
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
