"""OpenAI request bodies as pydantic models (with vLLM's extra sampling fields).

Numbers are checked strictly (a string is not a number) and bounded so that nothing
downstream (protobuf int32/int64 fields, the engine) can overflow; messages, tools and
formats stay plain JSON here because harmony validates them field by field with its own
precise messages. Unknown top-level fields are ignored, as OpenAI's newer SDK fields would be.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from oss_serve.common.vocab import VOCAB_SIZE

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_LOGPROBS = 20
MAX_TOOL_CALLS = 1024  # server-side tool calls one response may make

Number = StrictFloat | StrictInt
TokenCount = Annotated[StrictInt, Field(ge=1, le=INT32_MAX)]
TokenId = Annotated[StrictInt, Field(ge=0, lt=VOCAB_SIZE)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: StrictBool = False


class SamplingFields(_Body):
    """Fields every generation endpoint shares (OpenAI names, vLLM extras)."""

    model: StrictStr = ""
    temperature: Number | None = None
    top_p: Number | None = None
    seed: Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)] | None = None
    stop: StrictStr | list[StrictStr] | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    logit_bias: dict[StrictStr, Number] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] = 1
    user: Annotated[StrictStr, Field(max_length=512)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    # vLLM extensions
    top_k: Annotated[StrictInt, Field(ge=-1, le=INT32_MAX)] | None = None
    min_p: Number | None = None
    repetition_penalty: Number | None = None
    ignore_eos: StrictBool | None = None
    min_tokens: Annotated[StrictInt, Field(ge=0, le=INT32_MAX)] | None = None
    priority: Annotated[StrictInt, Field(ge=-(2**31), le=INT32_MAX)] = 0
    stop_token_ids: list[TokenId] | None = None
    thinking_token_budget: Annotated[StrictInt, Field(ge=0, le=1 << 20)] | None = None


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[dict[str, Any]], Field(min_length=1)]
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    include_reasoning: StrictBool = True  # vLLM: False leaves reasoning out of the answer
    # extension: hosted tools the server runs (the Responses API's entries) and their bound
    server_tools: list[dict[str, Any]] | None = None
    max_tool_calls: Annotated[StrictInt, Field(ge=0, le=MAX_TOOL_CALLS)] | None = None


class CompletionRequest(SamplingFields):
    prompt: (
        StrictStr
        | Annotated[list[StrictStr], Field(min_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
    )
    max_tokens: TokenCount = 16
    logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: StrictBool = False
    suffix: StrictStr | None = None
    best_of: Annotated[StrictInt, Field(ge=1, le=1)] | None = None  # only 1 (= n) is served
    response_format: dict[str, Any] | None = None


class ReasoningOptions(_Body):
    effort: Literal["minimal", "low", "medium", "high"] | None = None
    summary: StrictStr | None = None


class ResponsesRequest(SamplingFields):
    input: StrictStr | list[dict[str, Any]]
    instructions: StrictStr | None = None
    previous_response_id: Annotated[StrictStr, Field(max_length=128)] | None = None
    max_output_tokens: TokenCount | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    reasoning: ReasoningOptions | None = None
    text: dict[str, Any] | None = None
    store: StrictBool = True
    metadata: dict[StrictStr, StrictStr] | None = None
    background: StrictBool = False
    max_tool_calls: Annotated[StrictInt, Field(ge=0, le=MAX_TOOL_CALLS)] | None = None
