"""Streaming keeps the channels apart: across many seeds, the streamed `content` is exactly
the final channel and `reasoning` exactly the analysis channel as openai-harmony's own
parser reads the same tokens (fetched over gRPC Generate with the same seed and grammar),
and no harmony token or header text ever reaches `content`."""

from __future__ import annotations

import datetime

import grpc
import openai
import pytest
from openai_harmony import HarmonyEncodingName, Role, StreamableParser, load_harmony_encoding

from oss_serve.common.vocab import SPECIAL_TOKENS, STOP_TOKEN_IDS, use_vocab_dir
from oss_serve.harmony import render_chat_request
from oss_serve.protos import inference_pb2, inference_pb2_grpc
from oss_serve.router.structured_output import chat_structured_output
from tests.router.http.stack import API_KEY, TINY_MODEL
from tests.router.stack import key_metadata

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
SEEDS = range(12)
MAX_TOKENS = 24


def _body(seed: int) -> dict:
    return {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": f"Tell me something, {seed}."}],
        "max_tokens": MAX_TOKENS,
        "seed": seed,
        "thinking_token_budget": 3 + seed % 5,  # the grammar makes random weights speak harmony
    }


def _reference(stack, body: dict) -> tuple[str, str]:
    """(analysis text, final text) of the same generation, parsed by openai-harmony."""
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    sampling = inference_pb2.SamplingParams(
        seed=body["seed"], max_tokens=body["max_tokens"], stop_token_ids=list(STOP_TOKEN_IDS)
    )
    spec = chat_structured_output(body)
    assert spec is not None
    sampling.structured_output.CopyFrom(spec)
    request = inference_pb2.GenerateRequest(
        model=TINY_MODEL, prompt_token_ids=render_chat_request(body, date=date), sampling=sampling
    )
    assert stack.router.router is not None
    with grpc.insecure_channel(stack.router.router.address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        chunks = list(stub.Generate(request, timeout=60, metadata=key_metadata(API_KEY)))
    tokens = [t for c in chunks for t in c.token_ids]
    use_vocab_dir()  # openai-harmony reads the local vocabulary
    parser = StreamableParser(
        load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS), Role.ASSISTANT
    )
    for token in tokens:
        if token not in STOP_TOKEN_IDS:
            parser.process(token)
    parser.process_eos()  # the generation ended: close the last message as a finished stream does
    texts: dict[str, str] = {"analysis": "", "final": ""}
    for message in parser.messages:
        texts[message.channel or ""] = texts.get(message.channel or "", "") + "".join(
            c.text for c in message.content
        )
    return texts["analysis"], texts["final"]


def test_streamed_content_and_reasoning_are_exactly_the_final_and_analysis_channels(stack):
    client = openai.OpenAI(base_url=stack.router.base_url, api_key=API_KEY, max_retries=0)
    specials = tuple(SPECIAL_TOKENS)[:9]  # the named ones: <|start|>, <|channel|>, ...
    with_final = 0
    for seed in SEEDS:
        body = _body(seed)
        stream = client.chat.completions.create(
            model=TINY_MODEL,
            messages=body["messages"],
            max_tokens=MAX_TOKENS,
            seed=seed,
            stream=True,
            extra_body={"thinking_token_budget": body["thinking_token_budget"]},
        )
        content, reasoning = "", ""
        for chunk in stream:
            delta = chunk.choices[0].delta
            content += delta.content or ""
            reasoning += getattr(delta, "reasoning", None) or ""
            assert not any(s in (delta.content or "") for s in specials)
        analysis, final = _reference(stack, body)
        assert (reasoning, content) == (analysis, final), f"seed {seed}"
        for header_word in (
            "<|channel|>",
            "analysis<|message|>",
            "final<|message|>",
            "assistant<|",
        ):
            assert header_word not in content
        if reasoning:
            assert reasoning not in content
        with_final += bool(content)
    assert with_final >= len(SEEDS) // 2  # the check compared real final messages


def test_reasoning_is_left_out_when_include_reasoning_is_false(stack):
    client = openai.OpenAI(base_url=stack.router.base_url, api_key=API_KEY, max_retries=0)
    response = client.chat.completions.create(
        model=TINY_MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=MAX_TOKENS,
        seed=1,
        extra_body={"thinking_token_budget": 4, "include_reasoning": False},
    )
    message = response.choices[0].message
    assert getattr(message, "reasoning", None) is None
    assert response.usage is not None and response.usage.completion_tokens_details is not None
    assert response.usage.completion_tokens_details.reasoning_tokens > 0  # it did reason
