"""How long harmony rendering, tokenizing and parsing take for a ~100K-token prompt.

Run: `python -m oss_serve.benchmarks.harmony_tokenizer --tokens 100000 --repeat 5`
(set OSS_SERVE_VOCAB_DIR for an offline vocabulary). Prints the median of each step in
milliseconds and, as the baseline from the same run, openai-harmony (Rust) rendering the
same conversation.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from oss_serve.common.vocab import o200k_harmony, use_vocab_dir
from oss_serve.harmony import HarmonyStreamParser, parse_completion, render_chat_request
from oss_serve.harmony import render as render_module

_SAMPLE_TEXT = (
    "the model serves requests across replicas while the router keeps prefix caches warm "
    "tokens flow through attention and experts under tensor parallel shards with kv blocks "
    "función résumé 東京 数据 🙂 naïve coöperate 1234 3.14159 {json: [1, 2]} <tag> x_y-z"
)
_WORDS = _SAMPLE_TEXT.split()
_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Looks things up.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "default": 5}},
            "required": ["query"],
        },
    },
}


def _paragraph(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def long_chat_request(target_tokens: int, *, seed: int = 0) -> dict[str, Any]:
    """A multi-turn chat with tool calls whose rendering is about `target_tokens` long."""
    rng = random.Random(seed)
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Answer carefully."}]
    encoding = o200k_harmony()
    total = 0
    turn = 0
    while total < target_tokens:
        user = _paragraph(rng, 400)
        answer = _paragraph(rng, 300)
        call_id = f"call_{turn}"
        messages += [
            {"role": "user", "content": user},
            {
                "role": "assistant",
                "reasoning": _paragraph(rng, 60),
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"query": "x"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": _paragraph(rng, 200)},
            {"role": "assistant", "content": answer},
        ]
        tool_output = messages[-2]["content"]
        # Reasoning is left out: each turn ends in a final answer, so it is dropped.
        total += sum(len(encoding.encode_ordinary(t)) for t in (user, answer, tool_output)) + 40
        turn += 1
    return {"messages": messages, "tools": [_TOOL]}


def _median_ms(
    step: Callable[[], object], repeat: int, *, before: Callable[[], None] | None = None
) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _clear_caches() -> None:
    render_module._encode_cached.cache_clear()
    render_module._encode_preamble.cache_clear()


def _library_render(body: dict[str, Any]) -> Callable[[], object]:
    """The same conversation through openai-harmony's renderer (the baseline)."""
    from openai_harmony import (
        Author,
        Conversation,
        DeveloperContent,
        HarmonyEncodingName,
        Message,
        Role,
        SystemContent,
        ToolDescription,
        load_harmony_encoding,
    )

    encoding = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    function = body["tools"][0]["function"]
    developer = DeveloperContent.new().with_instructions("Answer carefully.")
    developer = developer.with_function_tools(
        [ToolDescription.new(function["name"], function["description"], function["parameters"])]
    )
    messages = [
        Message.from_role_and_content(
            Role.SYSTEM, SystemContent.new().with_conversation_start_date("2025-06-28")
        ),
        Message.from_role_and_content(Role.DEVELOPER, developer),
    ]
    for raw in body["messages"][1:]:
        if raw["role"] == "user":
            messages.append(Message.from_role_and_content(Role.USER, raw["content"]))
        elif raw["role"] == "tool":
            messages.append(
                Message.from_author_and_content(
                    Author.new(Role.TOOL, "functions.lookup"), raw["content"]
                )
                .with_channel("commentary")
                .with_recipient("assistant")
            )
        elif "tool_calls" in raw:
            # Every turn ends in a final answer, so its analysis is dropped (by our turn rule;
            # the library would keep all but the first turn's): leave it out here.
            messages.append(
                Message.from_role_and_content(
                    Role.ASSISTANT, raw["tool_calls"][0]["function"]["arguments"]
                )
                .with_channel("commentary")
                .with_recipient("functions.lookup")
                .with_content_type("<|constrain|>json")
            )
        else:
            messages.append(
                Message.from_role_and_content(Role.ASSISTANT, raw["content"]).with_channel("final")
            )
    conversation = Conversation.from_messages(messages)
    return lambda: encoding.render_conversation_for_completion(conversation, Role.ASSISTANT)


def _completion_tokens(target_tokens: int) -> list[int]:
    encoding = o200k_harmony()
    text = _paragraph(random.Random(1), target_tokens)
    body = encoding.encode_ordinary(text)[: target_tokens - 20]
    half = len(body) // 2
    head = encoding.encode("<|channel|>analysis<|message|>", allowed_special="all")
    middle = encoding.encode(
        "<|end|><|start|>assistant<|channel|>final<|message|>", allowed_special="all"
    )
    return (
        head
        + body[:half]
        + middle
        + body[half:]
        + encoding.encode("<|return|>", allowed_special="all")
    )


def run(target_tokens: int, repeat: int) -> dict[str, Any]:
    use_vocab_dir()
    encoding = o200k_harmony()
    body = long_chat_request(target_tokens)
    prompt = render_chat_request(body, date="2025-06-28")
    text = encoding.decode(prompt)
    completion = _completion_tokens(target_tokens)

    def stream_one_token_at_a_time() -> None:
        parser = HarmonyStreamParser()
        for token in completion:
            parser.feed((token,))

    library = _library_render(body)
    results: dict[str, Any] = {
        "prompt_tokens": len(prompt),
        "prompt_chars": len(text),
        "completion_tokens": len(completion),
        "render_chat_request_cold_ms": _median_ms(
            lambda: render_chat_request(body, date="2025-06-28"), repeat, before=_clear_caches
        ),
        "render_chat_request_warm_ms": _median_ms(
            lambda: render_chat_request(body, date="2025-06-28"), repeat
        ),
        "openai_harmony_render_ms": _median_ms(library, repeat),
        "tiktoken_encode_ordinary_ms": _median_ms(lambda: encoding.encode_ordinary(text), repeat),
        "tiktoken_decode_ms": _median_ms(lambda: encoding.decode(prompt), repeat),
        "parse_completion_ms": _median_ms(lambda: parse_completion(completion), repeat),
        "stream_parse_1_token_per_feed_ms": _median_ms(stream_one_token_at_a_time, repeat),
    }
    if library() != prompt:
        results["note"] = "openai-harmony rendering differs from ours for this conversation"
    results["render_vs_openai_harmony_ratio"] = round(
        results["render_chat_request_cold_ms"] / results["openai_harmony_render_ms"], 2
    )
    results["stream_parse_us_per_token"] = round(
        results["stream_parse_1_token_per_feed_ms"] * 1000 / len(completion), 2
    )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000, help="prompt / completion size")
    parser.add_argument("--repeat", type=int, default=5, help="runs per step (median reported)")
    args = parser.parse_args(argv)
    results = run(args.tokens, args.repeat)
    print(
        json.dumps(
            {k: round(v, 2) if isinstance(v, float) else v for k, v in results.items()}, indent=2
        )
    )


if __name__ == "__main__":
    main()
