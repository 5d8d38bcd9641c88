"""The official `openai` client (sync and async) against the real stack: router (HTTP over
the shared pipeline) -> Redis -> a tiny random-weight replica -> back."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from oss_serve.common.vocab import o200k_harmony
from tests.router.http.stack import API_KEY, TINY_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "unit": {"enum": ["c", "f"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["unit", "days"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["utc", "cet"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["ok", "color", "count"],
    "additionalProperties": False,
}
# the random-weight model never ends its reasoning by itself: cap it (vLLM's field)
BUDGET = {"thinking_token_budget": 4}


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.router.base_url, api_key=API_KEY, max_retries=0)


def test_chat_non_stream_returns_a_message_with_usage(client):
    response = client.chat.completions.create(
        model=TINY_MODEL, messages=MESSAGES, max_tokens=12, seed=3
    )
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == TINY_MODEL
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    usage = response.usage
    assert usage is not None and usage.completion_tokens == 12 and usage.prompt_tokens > 20
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_stream_concatenates_to_the_non_streamed_answer_and_ends_with_usage(client):
    kwargs = {"model": TINY_MODEL, "messages": MESSAGES, "max_tokens": 16, "seed": 11}
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == (whole.choices[0].message.content or "")
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 16
    assert all(c.usage is None for c in chunks[:-1])


def test_n_choices_get_distinct_seeds_and_one_prompt_in_usage(client):
    response = client.chat.completions.create(
        model=TINY_MODEL, messages=MESSAGES, max_tokens=6, seed=5, n=3
    )
    assert sorted(c.index for c in response.choices) == [0, 1, 2]
    assert response.usage is not None and response.usage.completion_tokens == 18
    single = client.chat.completions.create(model=TINY_MODEL, messages=MESSAGES, max_tokens=6)
    assert single.usage is not None and response.usage.prompt_tokens == single.usage.prompt_tokens


@pytest.mark.parametrize("seed", range(4))
def test_json_schema_output_validates_even_on_random_weights(client, seed):
    response = client.chat.completions.create(
        model=TINY_MODEL,
        messages=MESSAGES,
        max_tokens=120,
        seed=seed,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True},
        },
        extra_body=BUDGET,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content or ""), ANSWER_SCHEMA)


def test_json_object_output_is_a_json_object(client):
    """Free-form keys and strings may not end within max_tokens on random weights: every
    finished answer is an object, every cut one is the beginning of one. The last request
    favours "}" (logit_bias), so the grammar's closing path is taken at least once."""
    close_brace = o200k_harmony().encode_single_token("}")
    finished = 0
    for seed, logit_bias in [(0, None), (1, None), (2, None), (3, {str(close_brace): 100})]:
        response = client.chat.completions.create(
            model=TINY_MODEL,
            messages=MESSAGES,
            max_tokens=60,
            seed=seed,
            response_format={"type": "json_object"},
            logit_bias=logit_bias,
            extra_body={"thinking_token_budget": 2},
        )
        content = response.choices[0].message.content or ""
        if response.choices[0].finish_reason == "stop":
            finished += 1
            assert isinstance(json.loads(content), dict)
        else:
            assert content.lstrip().startswith("{")
    assert finished >= 1


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "function": {"name": "get_time"}}],
    ids=["required", "named"],
)
def test_forced_tool_calls_return_parsable_arguments(client, tool_choice):
    tools = [WEATHER_TOOL, TIME_TOOL]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for seed in range(3):
        response = client.chat.completions.create(
            model=TINY_MODEL,
            messages=MESSAGES,
            max_tokens=120,
            seed=seed,
            tools=tools,
            tool_choice=tool_choice,
            extra_body=BUDGET,
        )
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls or []
        assert len(calls) == 1 and calls[0].id
        if isinstance(tool_choice, dict):
            assert calls[0].function.name == "get_time"
        jsonschema.validate(
            json.loads(calls[0].function.arguments), schemas[calls[0].function.name]
        )


def test_auto_tool_choice_calls_parse_when_the_model_makes_them(client):
    """auto: the model may answer or call; every call it makes has schema-valid arguments."""
    made = 0
    for seed in range(4):
        response = client.chat.completions.create(
            model=TINY_MODEL,
            messages=MESSAGES,
            max_tokens=80,
            seed=seed,
            tools=[WEATHER_TOOL],
            extra_body=BUDGET,
        )
        choice = response.choices[0]
        calls = choice.message.tool_calls or []
        assert (choice.finish_reason == "tool_calls") == bool(calls)
        for call in calls:
            made += 1
            jsonschema.validate(
                json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"]
            )
    assert made >= 1  # on these seeds the random model does choose the tool


def test_streamed_tool_call_arguments_assemble_to_valid_json(client):
    chunks = client.chat.completions.create(
        model=TINY_MODEL,
        messages=MESSAGES,
        max_tokens=120,
        seed=2,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        extra_body=BUDGET,
        stream=True,
    )
    names, arguments, finish = [], "", None
    for chunk in chunks:
        for call in chunk.choices[0].delta.tool_calls or []:
            if call.function and call.function.name:
                names.append(call.function.name)
            arguments += (call.function.arguments or "") if call.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"] and finish == "tool_calls"
    jsonschema.validate(json.loads(arguments), WEATHER_TOOL["function"]["parameters"])


def test_responses_create_store_and_continue_with_previous_response_id(client):
    first = client.responses.create(
        model=TINY_MODEL,
        input="Pick a color.",
        instructions="Answer in JSON.",
        max_output_tokens=120,
        text={"format": {"type": "json_schema", "name": "answer", "schema": ANSWER_SCHEMA}},
        extra_body={**BUDGET, "seed": 4},
    )
    assert first.status == "completed" and first.id.startswith("resp_")
    jsonschema.validate(json.loads(first.output_text), ANSWER_SCHEMA)
    kinds = [item.type for item in first.output]
    assert kinds[-1] == "message" and set(kinds) <= {"reasoning", "message"}
    assert first.usage is not None and first.usage.output_tokens > 0
    follow = client.responses.create(
        model=TINY_MODEL, input="And another?", previous_response_id=first.id, max_output_tokens=8
    )
    alone = client.responses.create(model=TINY_MODEL, input="And another?", max_output_tokens=1)
    assert follow.usage is not None and alone.usage is not None
    # the stored user turn and the JSON answer (not the instructions: they do not carry over)
    assert follow.usage.input_tokens >= alone.usage.input_tokens + 10
    assert client.responses.retrieve(first.id).id == first.id
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=TINY_MODEL, input="x", previous_response_id="resp_missing")


def test_responses_function_call_item_has_parsable_arguments(client):
    tool = {"type": "function", **WEATHER_TOOL["function"]}
    response = client.responses.create(
        model=TINY_MODEL,
        input="Weather?",
        tools=[tool],
        tool_choice="required",
        max_output_tokens=120,
        extra_body=BUDGET,
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id
    jsonschema.validate(json.loads(calls[0].arguments), tool["parameters"])


def test_responses_stream_events_rebuild_the_final_response(client):
    events = list(
        client.responses.create(
            model=TINY_MODEL,
            input="hello",
            max_output_tokens=60,
            text={"format": {"type": "json_schema", "name": "answer", "schema": ANSWER_SCHEMA}},
            extra_body=BUDGET,
            stream=True,
        )
    )
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text == final.output_text
    jsonschema.validate(json.loads(text), ANSWER_SCHEMA)


def test_models_list_and_retrieve(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [TINY_MODEL]
    assert client.models.retrieve(TINY_MODEL).id == TINY_MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_completions_with_text_and_token_prompts(client):
    response = client.completions.create(
        model=TINY_MODEL, prompt=["Hello", "Hi"], max_tokens=4, logprobs=2
    )
    assert [c.index for c in response.choices] == [0, 1]
    assert all(c.finish_reason == "length" and c.logprobs is not None for c in response.choices)
    assert all(len(c.logprobs.tokens or []) == 4 for c in response.choices)
    assert all(len(c.logprobs.top_logprobs[0]) >= 2 for c in response.choices)  # type: ignore
    assert response.usage is not None and response.usage.prompt_tokens == 1 + 1
    by_ids = client.completions.create(model=TINY_MODEL, prompt=[13225], max_tokens=4, seed=7)
    by_text = client.completions.create(model=TINY_MODEL, prompt="Hello", max_tokens=4, seed=7)
    assert by_ids.choices[0].text == by_text.choices[0].text  # "Hello" is token 13225


def test_errors_are_the_clients_typed_exceptions(stack, client):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=stack.router.base_url, api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=TINY_MODEL, messages=MESSAGES, temperature=-1)
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=TINY_MODEL, messages=[{"role": "wizard", "content": "x"}]
        )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-5", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError) as context:
        client.chat.completions.create(model=TINY_MODEL, messages=MESSAGES, max_tokens=5000)
    assert "max_tokens" in str(context.value)


def test_rate_limited_key_gets_429_with_retry_after(stack):
    from tests.router.auth.helpers import add_key

    key = add_key(stack.redis_url, stack.namespace, requests_per_min=2)
    limited = openai.OpenAI(base_url=stack.router.base_url, api_key=key, max_retries=0)
    for _ in range(2):
        limited.chat.completions.create(model=TINY_MODEL, messages=MESSAGES, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as refused:
        limited.chat.completions.create(model=TINY_MODEL, messages=MESSAGES, max_tokens=1)
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60


async def test_async_client_chat_and_stream(stack):
    client = openai.AsyncOpenAI(base_url=stack.router.base_url, api_key=API_KEY, max_retries=0)
    response = await client.chat.completions.create(
        model=TINY_MODEL, messages=MESSAGES, max_tokens=5
    )
    assert response.usage is not None and response.usage.completion_tokens == 5
    stream = await client.chat.completions.create(
        model=TINY_MODEL,
        messages=MESSAGES,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    await client.close()


def test_rate_limit_is_shared_by_two_routers(stack):
    from tests.router.auth.helpers import add_key

    second = stack.routers[1] if len(stack.routers) > 1 else stack.add_router()
    key = add_key(stack.redis_url, stack.namespace, requests_per_min=3)
    clients = [
        openai.OpenAI(base_url=router.base_url, api_key=key, max_retries=0)
        for router in (stack.router, second)
    ]
    for i in range(3):
        clients[i % 2].chat.completions.create(model=TINY_MODEL, messages=MESSAGES, max_tokens=1)
    for client in clients:
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=TINY_MODEL, messages=MESSAGES, max_tokens=1)


def test_logprobs_and_vllm_sampling_extras(client):
    response = client.chat.completions.create(
        model=TINY_MODEL,
        messages=MESSAGES,
        max_tokens=8,
        seed=3,
        logprobs=True,
        top_logprobs=2,
        extra_body={
            "top_k": 50,
            "min_p": 0.01,
            "repetition_penalty": 1.1,
            "min_tokens": 8,
            "ignore_eos": True,
            "priority": 1,
        },
    )
    choice = response.choices[0]
    assert response.usage is not None and response.usage.completion_tokens == 8
    entries = choice.logprobs.content if choice.logprobs is not None else None
    assert entries, "content tokens come with their logprobs"
    assert "".join(e.token for e in entries) == choice.message.content
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries)
