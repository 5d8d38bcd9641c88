"""The server-side tool loop: generate; when the model ends its turn with a call to a tool
the server runs (python, browser.*, an MCP server's tool), run it, append the call and the
tool's message in harmony, and generate again, until a final answer, a call to one of the
client's functions, or the request's `max_tool_calls`.

Each step is an ordinary request through the pipeline (limits, routing, usage), under one
session key so that every step lands on the replica that holds the previous step's KV;
the next prompt is the previous one plus the model's tokens as generated plus the tool's
message, so that replica's prefix cache covers all of it but the tool's message. The loop
yields the steps' parsed chunks as one stream (the last one carries the finish reason and
the usage of every step summed), with a start and a finish event around each call.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace

from oss_serve.harmony import BuiltinToolCall
from oss_serve.harmony.conversation import tool_output_message
from oss_serve.harmony.render import continue_after_tool
from oss_serve.protos import inference_pb2
from oss_serve.router.chat import ChatChunk, ChatOptions, HarmonyPlan, open_chat
from oss_serve.router.errors import InvalidRequest
from oss_serve.router.gate import Caller
from oss_serve.router.pipeline import RequestPipeline, TokenChunk
from oss_serve.router.tool_set import RequestTools
from oss_serve.tools.base import ToolOutput

# the finish reason of a response that wanted more server-side calls than it may make
MAX_TOOL_CALLS = "max_tool_calls"


@dataclass(frozen=True)
class ToolCallStarted:
    """The model called a server-side tool; `index` counts this response's calls from 0."""

    index: int
    kind: str  # "browser", "python", "mcp"; "" for a recipient the request has no tool for
    call: BuiltinToolCall


@dataclass(frozen=True)
class ToolCallFinished:
    index: int
    kind: str
    call: BuiltinToolCall
    output: ToolOutput


LoopEvent = ChatChunk | ToolCallStarted | ToolCallFinished


@dataclass
class _Step:
    """One generation of the loop: the tokens it produced and how it ended."""

    generated: list[int]
    last: ChatChunk | None = None


class ToolLoop:
    def __init__(
        self,
        pipeline: RequestPipeline,
        caller: Caller,
        plan: HarmonyPlan,
        options: ChatOptions,
        tools: RequestTools,
        *,
        max_tool_calls: int,
        on_tokens: Callable[[TokenChunk], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.caller = caller
        self.plan = plan
        self.options = options
        self.tools = tools
        self.max_tool_calls = max_tool_calls
        self.on_tokens = on_tokens
        self.calls_made = 0
        self.usage = inference_pb2.Usage()

    async def run(self) -> AsyncGenerator[LoopEvent, None]:
        prompt = list(self.plan.prompt)
        step_number = 0
        while True:
            if self._tokens_left() == 0:
                yield self._final(ChatChunk(self._request_id(step_number)), "length")
                return
            step = _Step(generated=[])
            try:
                async for chunk in self._generate(prompt, step_number, step):
                    yield chunk
            except InvalidRequest as err:
                if step_number == 0 or err.field != "prompt":
                    raise
                yield self._final(ChatChunk(self._request_id(step_number)), "length")
                return  # the conversation outgrew the model's context between steps
            last = step.last
            assert last is not None  # a finished generation ends with its finish chunk
            call = last.server_call if last.finish_reason == "tool_calls" else None
            if call is None or self.tools.is_empty or last.tool_calls:
                yield self._final(last, last.finish_reason)
                return
            last.finish_reason, last.usage, last.server_call = "", None, None
            if not last.is_empty():
                yield last
            if self.calls_made >= self.max_tool_calls:
                yield self._final(ChatChunk(last.request_id), MAX_TOOL_CALLS)
                return
            kind = self.tools.kind_of(call.recipient) or ""
            index, self.calls_made = self.calls_made, self.calls_made + 1
            yield ToolCallStarted(index, kind, call)
            output = await self.tools.call(call)
            yield ToolCallFinished(index, kind, call, output)
            result = tool_output_message(output.author, output.text, call.channel or "commentary")
            prompt = continue_after_tool(prompt, step.generated, result)
            step_number += 1

    async def _generate(
        self, prompt: list[int], step_number: int, step: _Step
    ) -> AsyncGenerator[ChatChunk, None]:
        """One step's chunks but its last (kept in `step.last` with its usage added up)."""

        def collect(chunk: TokenChunk) -> None:
            step.generated.extend(chunk.token_ids)
            if self.on_tokens is not None:
                self.on_tokens(chunk)

        [stream] = await open_chat(
            self.pipeline,
            self.caller,
            replace(self.plan, prompt=prompt, sampling=self._sampling()),
            replace(
                self.options,
                request_id=self._request_id(step_number),
                session_key=self._session_key(),
            ),
            on_tokens=[collect],
        )
        async with aclosing(stream) as chunks:
            async for chunk in chunks:
                if chunk.finish_reason:
                    step.last = chunk
                    if chunk.usage is not None:
                        _add_usage(self.usage, chunk.usage)
                    continue
                yield chunk

    def _tokens_left(self) -> int | None:
        """What the request's max_tokens leaves after the earlier steps (None: no bound)."""
        sampling = self.plan.sampling
        if not sampling.HasField("max_tokens"):
            return None
        return max(0, sampling.max_tokens - self.usage.completion_tokens)

    def _sampling(self) -> inference_pb2.SamplingParams:
        """The request's parameters with max_tokens lowered by what earlier steps generated."""
        left = self._tokens_left()
        if left is None or not self.usage.completion_tokens:
            return self.plan.sampling
        lowered = inference_pb2.SamplingParams()
        lowered.CopyFrom(self.plan.sampling)
        lowered.max_tokens = left
        return lowered

    def _request_id(self, step_number: int) -> str:
        """The client's id for the first step; later steps get ids derived from it, so a
        retry with the same id replays each step instead of conflicting with the first."""
        request_id = self.options.request_id
        if not request_id or step_number == 0:
            return request_id
        return hashlib.sha256(f"{request_id}#{step_number}".encode()).hexdigest()[:32]

    def _session_key(self) -> str:
        """The client's key if any, else the tool session's: every step on one replica."""
        chosen = self.options.session_key or self.plan.session_key
        if chosen or self.tools.is_empty:
            return chosen
        return f"tools:{self.tools.session}"

    def _final(self, chunk: ChatChunk, finish_reason: str) -> ChatChunk:
        chunk.finish_reason = finish_reason
        chunk.usage = self.usage
        chunk.server_call = None
        return chunk


def _add_usage(total: inference_pb2.Usage, step: inference_pb2.Usage) -> None:
    """Every step's prompt is processed again (its cached part counted as cached)."""
    total.prompt_tokens += step.prompt_tokens
    total.completion_tokens += step.completion_tokens
    total.cached_prompt_tokens += step.cached_prompt_tokens
    total.reasoning_tokens += step.reasoning_tokens


def new_tool_session() -> str:
    return f"ts_{uuid.uuid4().hex}"
