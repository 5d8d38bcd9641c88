"""Pieces of OpenAI response bodies shared by the routes: ids, usage, logprobs."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from oss_serve.common.vocab import STARTOFTEXT, o200k_harmony
from oss_serve.protos import inference_pb2


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def chat_usage(usage: inference_pb2.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def responses_usage(usage: inference_pb2.Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_prompt_tokens,
            # the engine keeps the blocks it computes in its prefix cache
            "cache_write_tokens": usage.prompt_tokens - usage.cached_prompt_tokens,
        },
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def sum_usage(usages: Iterable[inference_pb2.Usage]) -> inference_pb2.Usage:
    """n choices share one prompt: prompt counts once, completions add up."""
    total = inference_pb2.Usage()
    for index, usage in enumerate(usages):
        if index == 0:
            total.prompt_tokens = usage.prompt_tokens
            total.cached_prompt_tokens = usage.cached_prompt_tokens
        total.completion_tokens += usage.completion_tokens
        total.reasoning_tokens += usage.reasoning_tokens
    return total


def _token_bytes(token_id: int) -> bytes:
    return o200k_harmony().decode_single_token_bytes(token_id)


def chat_logprobs(entries: Iterable[inference_pb2.TokenLogprob]) -> list[dict[str, Any]]:
    """Chat Completions `logprobs.content` entries (text tokens only)."""
    out = []
    for entry in entries:
        if entry.token_id >= STARTOFTEXT:
            continue
        data = _token_bytes(entry.token_id)
        out.append(
            {
                "token": data.decode("utf-8", "replace"),
                "logprob": entry.logprob,
                "bytes": list(data),
                "top_logprobs": [
                    {
                        "token": _token_bytes(top.token_id).decode("utf-8", "replace"),
                        "logprob": top.logprob,
                        "bytes": list(_token_bytes(top.token_id)),
                    }
                    for top in entry.top_logprobs
                ],
            }
        )
    return out


def completion_logprobs(
    entries: Iterable[inference_pb2.TokenLogprob], text_offset: int
) -> dict[str, Any]:
    """Legacy Completions `logprobs` ({tokens, token_logprobs, top_logprobs, text_offset})."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    offset = text_offset
    for entry in entries:
        text = _token_bytes(entry.token_id).decode("utf-8", "replace")
        tokens.append(text)
        token_logprobs.append(entry.logprob)
        tops.append(
            {
                _token_bytes(t.token_id).decode("utf-8", "replace"): t.logprob
                for t in entry.top_logprobs
            }
        )
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }
