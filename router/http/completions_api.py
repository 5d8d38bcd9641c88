"""POST /v1/completions: a raw prompt (text or token ids, one or a batch) through the
shared pipeline, no harmony; text_completion objects or SSE chunks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from oss_serve.common.vocab import ENDOFTEXT, o200k_harmony
from oss_serve.protos import inference_pb2
from oss_serve.router.chat import seeded
from oss_serve.router.detokenize import Detokenizer
from oss_serve.router.errors import InvalidRequest
from oss_serve.router.http.context import ApiContext
from oss_serve.router.http.errors import invalid
from oss_serve.router.http.models import CompletionRequest
from oss_serve.router.http.openai_json import chat_usage, completion_logprobs, new_id, sum_usage
from oss_serve.router.http.request_body import parse_body, read_json, sampling_params
from oss_serve.router.http.streaming import (
    DONE,
    merged,
    sse,
    streaming_response,
    unless_disconnected,
)
from oss_serve.router.pipeline import GenerationRequest, TokenChunk
from oss_serve.router.structured_output import raw_structured_output


@dataclass
class TextChoice:
    index: int
    prompt: list[int]
    detokenizer: Detokenizer = field(default_factory=Detokenizer)
    text: str = ""
    logprobs: list[inference_pb2.TokenLogprob] = field(default_factory=list)
    finish_reason: str = ""
    usage: inference_pb2.Usage | None = None

    def absorb(self, chunk: TokenChunk) -> str:
        piece = self.detokenizer.feed(chunk.token_ids, final=bool(chunk.finish_reason))
        self.text += piece
        self.logprobs += chunk.logprobs
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason
            self.usage = chunk.usage
        return piece


async def create_completion(request: Request, ctx: ApiContext) -> Response:
    caller = await ctx.authenticate(request)
    body = await read_json(request, ctx.max_body_bytes)
    completion = parse_body(CompletionRequest, body)
    prompts = _prompts(completion)
    ctx.pipeline.limits.check_counts(n=completion.n * len(prompts))
    if completion.suffix:
        raise invalid("suffix is not supported", "suffix")
    structured = raw_structured_output(body)
    if structured is not None and completion.min_tokens:
        raise invalid("min_tokens cannot be combined with response_format", "min_tokens")
    sampling = sampling_params(
        completion, max_tokens=completion.max_tokens, logprobs=completion.logprobs
    )
    if structured is not None:
        sampling.structured_output.CopyFrom(structured)
        if ENDOFTEXT not in sampling.stop_token_ids:
            sampling.stop_token_ids.append(ENDOFTEXT)  # the grammar ends the text with it
    choices = [
        TextChoice(i * completion.n + j, prompt)
        for i, prompt in enumerate(prompts)
        for j in range(completion.n)
    ]
    streams = await ctx.pipeline.open(
        caller,
        [
            GenerationRequest(
                prompt_token_ids=c.prompt,
                sampling=seeded(sampling, c.index % completion.n),
                model=completion.model,
                session_key=completion.user or "",
                priority=completion.priority,
            )
            for c in choices
        ],
    )
    completion_id = new_id("cmpl-")
    if completion.stream:
        return await streaming_response(_sse_frames(completion, choices, streams, completion_id))
    usage = await unless_disconnected(request, _collect(choices, streams))
    return JSONResponse(_completion_json(completion, choices, completion_id, usage))


def _prompts(completion: CompletionRequest) -> list[list[int]]:
    prompt = completion.prompt
    encoding = o200k_harmony()
    prompts: list[list[int]] = []
    if isinstance(prompt, str):
        prompts.append(encoding.encode_ordinary(prompt))
    elif all(isinstance(p, int) for p in prompt):
        prompts.append([int(t) for t in prompt if isinstance(t, int)])
    else:  # a batch: texts or token-id lists
        for item in prompt:
            if isinstance(item, str):
                prompts.append(encoding.encode_ordinary(item))
            elif isinstance(item, list):
                prompts.append([int(t) for t in item])
    if any(not p for p in prompts):
        raise InvalidRequest("prompt must not be empty", field="prompt")
    return prompts


async def _collect(
    choices: list[TextChoice], streams: Sequence[AsyncIterator[TokenChunk]]
) -> inference_pb2.Usage:
    async for index, chunk in merged(streams):
        choices[index].absorb(chunk)
    return _usage(choices)


def _usage(choices: list[TextChoice]) -> inference_pb2.Usage:
    """Each prompt counts once (its n choices share it); completions add up."""
    prompts_seen: set[int] = set()
    total = sum_usage(c.usage for c in choices if c.usage is not None)
    total.prompt_tokens = 0
    for choice in choices:
        if choice.usage is not None and id(choice.prompt) not in prompts_seen:
            prompts_seen.add(id(choice.prompt))
            total.prompt_tokens += choice.usage.prompt_tokens
    return total


def _choice_json(completion: CompletionRequest, choice: TextChoice) -> dict[str, Any]:
    prefix = o200k_harmony().decode(choice.prompt) if completion.echo else ""
    return {
        "index": choice.index,
        "text": prefix + choice.text,
        "logprobs": completion_logprobs(choice.logprobs, len(prefix))
        if completion.logprobs is not None
        else None,
        "finish_reason": choice.finish_reason or "stop",
    }


def _completion_json(
    completion: CompletionRequest,
    choices: list[TextChoice],
    completion_id: str,
    usage: inference_pb2.Usage,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": completion.model or "default",
        "choices": [_choice_json(completion, c) for c in choices],
        "usage": _text_usage(usage),
    }


def _text_usage(usage: inference_pb2.Usage) -> dict[str, Any]:
    data = chat_usage(usage)
    data.pop("completion_tokens_details")
    return data


async def _sse_frames(
    completion: CompletionRequest,
    choices: list[TextChoice],
    streams: Sequence[AsyncIterator[TokenChunk]],
    completion_id: str,
) -> AsyncIterator[bytes]:
    created = int(time.time())
    model = completion.model or "default"
    include_usage = bool(completion.stream_options and completion.stream_options.include_usage)
    offsets = [0] * len(choices)
    async for index, chunk in merged(streams):
        choice = choices[index]
        piece = choice.absorb(chunk)
        logprobs = (
            completion_logprobs(chunk.logprobs, offsets[index])
            if completion.logprobs is not None
            else None
        )
        offsets[index] += len(piece)
        frame: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": choice.index,
                    "text": piece,
                    "logprobs": logprobs,
                    "finish_reason": choice.finish_reason or None,
                }
            ],
        }
        if include_usage:
            frame["usage"] = None
        yield sse(frame)
    if include_usage:
        yield sse(
            {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _text_usage(_usage(choices)),
            }
        )
    yield DONE
