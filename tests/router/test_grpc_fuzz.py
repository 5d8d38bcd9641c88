"""Fuzzing the public gRPC API against the real stack (in-process router with a key, real
Redis, a tiny-model replica): >= 2,000 hypothesis-built GenerateRequest and
ChatCompletionRequest messages, with no key, a wrong one, or the right one (as
`authorization: Bearer` or `x-api-key`). Never INTERNAL or UNKNOWN, never a hang (every
call has a deadline it must not reach), a mix of answers a regression would change (some
served, some INVALID_ARGUMENT, some UNAUTHENTICATED), and the stack serves afterwards.

Served requests generate one token and eight calls are in flight at a time, so the run
stays within tens of seconds (a failure is reported with its request, unshrunk)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oss_serve.protos import inference_pb2, inference_pb2_grpc
from tests.router.http.stack import API_KEY, TINY_MODEL
from tests.router.stack import key_metadata

pytestmark = [pytest.mark.integration]
TIMEOUT_S = 30.0
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)

metadata = st.one_of(
    st.sampled_from([key_metadata(API_KEY), (("x-api-key", API_KEY),)]),
    st.sampled_from([(), key_metadata("sk-wrong-key"), (("authorization", "Basic " + API_KEY),)]),
)
floats = st.one_of(st.floats(width=32), st.sampled_from([0.0, 0.5, 1.0]))
texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "<|start|>", "<|channel|>final", "🙂" * 10, "a" * 600, "{", "null"]),
)
schemas = st.sampled_from(
    [
        "",
        '{"type": "object", "properties": {"a": {"type": "integer"}}}',
        '{"type": "string", "pattern": "(("}',
        '{"$ref": "#/$defs/missing"}',
        "not json",
        "[]",
    ]
)
structured = st.one_of(
    st.none(),
    st.builds(
        inference_pb2.StructuredOutput,
        raw=st.booleans(),
        final_json_schema=schemas,
        functions=st.lists(
            st.builds(
                inference_pb2.FunctionGrammar,
                name=st.sampled_from(["f", "", "a b"]),
                parameters_json_schema=schemas,
            ),
            max_size=2,
        ),
        require_function_call=st.booleans(),
        reasoning_token_budget=st.one_of(st.none(), st.integers(-3, 3)),
    ),
)


@st.composite
def sampling(draw) -> inference_pb2.SamplingParams:
    """Always a max_tokens: small, or out of range (a valid request stays short)."""
    params = inference_pb2.SamplingParams(
        max_tokens=draw(st.one_of(st.integers(1, 3), st.integers(-5, 0), st.just(2**31 - 1)))
    )
    for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                 "repetition_penalty"):  # fmt: skip
        if draw(st.booleans()):
            setattr(params, name, draw(floats))
    for name in ("top_k", "min_tokens", "logprobs"):
        if draw(st.booleans()):
            setattr(params, name, draw(st.one_of(st.integers(-3, 30), INT32)))
    if draw(st.booleans()):
        params.seed = draw(st.integers(min_value=-(2**63), max_value=2**63 - 1))
    params.stop.extend(draw(st.lists(texts, max_size=18)))
    params.stop_token_ids.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=3)))
    for token, bias in draw(st.dictionaries(st.integers(0, 2**32 - 1), floats, max_size=3)).items():
        params.logit_bias[token] = bias
    params.ignore_eos = draw(st.booleans())
    spec = draw(structured)
    if spec is not None:
        params.structured_output.CopyFrom(spec)
    return params


options = st.builds(
    inference_pb2.RequestOptions,
    request_id=st.one_of(st.just(""), texts),
    session_key=st.one_of(st.just(""), texts),
    lane=st.integers(0, 4),
    priority=INT32,
)
models = st.one_of(st.just(TINY_MODEL), st.just(""), texts)
wild_generate_requests = st.builds(
    inference_pb2.GenerateRequest,
    model=models,
    prompt_token_ids=st.lists(
        st.one_of(st.integers(0, 1000), st.integers(0, 2**32 - 1)), max_size=12
    ),
    sampling=sampling(),
    options=options,
    skip_special_tokens=st.booleans(),
)
messages = st.lists(
    st.builds(
        inference_pb2.ChatMessage,
        role=st.sampled_from(["user", "system", "developer", "assistant", "tool", "wizard", ""]),
        content=texts,
        content_parts=st.lists(
            st.builds(
                inference_pb2.ContentPart, type=st.sampled_from(["text", "image", ""]), text=texts
            ),
            max_size=2,
        ),
        name=st.one_of(st.just(""), texts),
        tool_call_id=st.one_of(st.just(""), texts),
        tool_calls=st.lists(
            st.builds(
                inference_pb2.ToolCall,
                id=texts,
                type=st.sampled_from(["function", "", "x"]),
                function=st.builds(inference_pb2.FunctionCall, name=texts, arguments=texts),
            ),
            max_size=2,
        ),
        reasoning=st.one_of(st.just(""), texts),
    ),
    max_size=4,
)
tools = st.lists(
    st.builds(
        inference_pb2.Tool,
        type=st.sampled_from(["function", "", "browser"]),
        function=st.builds(
            inference_pb2.FunctionDefinition,
            name=st.sampled_from(["get_weather", "", "x" * 80, "ü"]),
            description=texts,
            parameters_json=schemas,
        ),
    ),
    max_size=3,
)
wild_chat_requests = st.builds(
    inference_pb2.ChatCompletionRequest,
    model=models,
    messages=messages,
    sampling=sampling(),
    options=options,
    user=st.one_of(st.just(""), texts),
    reasoning_effort=st.one_of(st.sampled_from(["", "low", "medium", "high"]), texts),
    tools=tools,
    tool_choice_json=st.one_of(
        st.sampled_from(["", "auto", "none", "required", '{"type": "function"}']), texts
    ),
    response_format_json=st.one_of(
        st.sampled_from(
            ["", '{"type": "json_object"}', '{"type": "json_schema", "json_schema": {}}']
        ),
        texts,
    ),
)

# valid requests (one draw in four), so that some are served
plausible_sampling = st.builds(
    inference_pb2.SamplingParams,
    max_tokens=st.just(1),
    temperature=st.floats(0, 2),
    top_p=st.floats(0.05, 1),
    seed=st.integers(-(2**63), 2**63 - 1),
    ignore_eos=st.booleans(),
)
plausible_options = st.builds(
    inference_pb2.RequestOptions,
    request_id=st.text(max_size=20),
    session_key=st.text(max_size=20),
    lane=st.integers(0, 2),
    priority=st.integers(-5, 5),
)
generate_requests = st.one_of(
    st.builds(
        inference_pb2.GenerateRequest,
        model=st.sampled_from([TINY_MODEL, ""]),
        prompt_token_ids=st.lists(st.integers(0, 199_000), min_size=1, max_size=12),
        sampling=plausible_sampling,
        options=plausible_options,
        skip_special_tokens=st.booleans(),
    ),
    *[wild_generate_requests] * 3,  # served requests cost the most time: fewer of them
)
chat_requests = st.one_of(
    st.builds(
        inference_pb2.ChatCompletionRequest,
        model=st.sampled_from([TINY_MODEL, ""]),
        messages=st.lists(
            st.builds(
                inference_pb2.ChatMessage,
                role=st.sampled_from(["user", "system", "developer"]),
                content=st.text(max_size=40),
            ),
            min_size=1,
            max_size=3,
        ),
        sampling=plausible_sampling,
        options=plausible_options,
        user=st.text(max_size=20),
        reasoning_effort=st.sampled_from(["", "low", "medium", "high"]),
    ),
    *[wild_chat_requests] * 3,
)

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@pytest.fixture(scope="module")
def stub(serving_stack):
    with grpc.insecure_channel(serving_stack.router.router.address) as channel:
        yield inference_pb2_grpc.InferenceStub(channel)


def _answer(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        code = err.code()
        assert code not in NEVER, f"{code}: {err.details()}"
        assert err.details(), f"{code} without a message"
        return code
    return grpc.StatusCode.OK


def _assert_mix(seen: Counter[grpc.StatusCode], total: int) -> None:
    """A regression that refuses (or serves) everything changes this mix."""
    print("gRPC codes seen:", {code.name: n for code, n in seen.most_common()})
    assert sum(seen.values()) == total
    assert seen[grpc.StatusCode.OK] >= total * 0.05
    assert seen[grpc.StatusCode.INVALID_ARGUMENT] >= total * 0.1
    assert total * 0.1 <= seen[grpc.StatusCode.UNAUTHENTICATED] <= total * 0.7


def _fuzz(strategy: st.SearchStrategy, method) -> None:
    """Send every example (eight in flight: served ones wait on the replica), then check
    each answer and the mix; a failure names the request that caused it."""
    answers: list[tuple[object, Future[grpc.StatusCode]]] = []
    with ThreadPoolExecutor(8) as pool:

        @FUZZ
        @given(request=strategy, md=metadata)
        def fuzz(request, md):
            call = partial(method, request, timeout=TIMEOUT_S, metadata=md)
            answers.append((request, pool.submit(_answer, lambda: list(call()))))

        fuzz()
    seen: Counter[grpc.StatusCode] = Counter()
    for request, answer in answers:
        try:
            seen[answer.result()] += 1
        except AssertionError as err:
            raise AssertionError(f"{err}\nfor {request}") from None
    _assert_mix(seen, FUZZ.max_examples)


def test_fuzzed_generate_requests_never_fail_inside_the_router(stub):
    _fuzz(generate_requests, stub.Generate)


def test_fuzzed_chat_requests_never_fail_inside_the_router(stub):
    _fuzz(chat_requests, stub.ChatCompletion)


def test_the_stack_still_serves_after_the_fuzz(stub):
    request = inference_pb2.GenerateRequest(
        model=TINY_MODEL,
        prompt_token_ids=[1, 2, 3],
        sampling=inference_pb2.SamplingParams(temperature=0, max_tokens=3),
    )
    chunks = list(stub.Generate(request, timeout=TIMEOUT_S, metadata=key_metadata(API_KEY)))
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 3
