"""Fuzzing the API's validation layer against the real app (in-process router, real Redis,
real replica): >= 2,000 bodies of malformed JSON, wrong types, huge values and unicode.
Never a 5xx, never a hang (every call has a timeout), the server keeps serving, and each
run sees the mix of statuses its bodies call for (a regression that answers everything
with 400, or 401, or serves what it should refuse, changes the mix and fails).

Bodies that happen to be valid generate at most a couple of tokens, so the run stays fast."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.router.http.stack import API_KEY, MAX_BODY_BYTES, TINY_MODEL

pytestmark = [pytest.mark.integration]
TIMEOUT_S = 30.0

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.sampled_from(
        ["", "\u0000", "\ud7ff\ue000", "🙂" * 20, "<|start|>", "<|channel|>final", "a" * 3000]
    ),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=5,
)
roles = st.sampled_from(["user", "system", "developer", "assistant", "tool", "wizard", "", 7])
content = st.one_of(
    st.text(max_size=60),
    st.lists(
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(["text", "image_url", "input_text", 3]),
                "text": st.one_of(st.text(max_size=20), json_values),
            }
        ),
        max_size=3,
    ),
    json_values,
)
messages = st.lists(
    st.one_of(
        st.fixed_dictionaries({"role": roles, "content": content}),
        st.fixed_dictionaries(
            {"role": st.just("assistant"), "content": st.one_of(st.none(), st.text(max_size=10))},
            optional={
                "reasoning_content": st.text(max_size=20),
                "tool_calls": st.lists(
                    st.fixed_dictionaries(
                        {
                            "id": st.text(max_size=8),
                            "type": st.just("function"),
                            "function": st.fixed_dictionaries(
                                {
                                    "name": st.sampled_from(["f", "", "a b"]),
                                    "arguments": st.text(max_size=20),
                                }
                            ),
                        }
                    ),
                    max_size=2,
                ),
            },
        ),
        json_values,
    ),
    max_size=4,
)
schemas = st.one_of(
    st.just({"type": "object", "properties": {"a": {"type": "integer"}}}),
    st.just({"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}}),
    st.just({"type": "string", "pattern": "(("}),
    json_values,
)
tools = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(["function", "browser"]),
                "function": st.fixed_dictionaries(
                    {
                        "name": st.sampled_from(["get_weather", "", "x" * 80, "ü"]),
                        "parameters": schemas,
                    }
                ),
            }
        ),
        json_values,
    ),
    max_size=3,
)
small_or_bad_tokens = st.one_of(
    st.integers(min_value=1, max_value=2),
    st.integers(min_value=-5, max_value=0),
    st.integers(min_value=2**31, max_value=2**80),
    st.just(10**6),
    st.floats(),
    st.text(max_size=5),
)  # never absent: a valid body without it would generate up to the whole context
chat_bodies = st.fixed_dictionaries(
    {"messages": messages, "max_tokens": small_or_bad_tokens},
    optional={
        "model": st.one_of(st.just(TINY_MODEL), st.text(max_size=12), json_values),
        "temperature": st.one_of(st.floats(), st.integers(), st.text(max_size=3)),
        "top_p": st.floats(),
        "seed": st.integers(min_value=-(2**70), max_value=2**70),
        "n": st.integers(min_value=-2, max_value=40),
        "stop": st.one_of(
            st.text(max_size=5), st.lists(st.text(max_size=5), max_size=20), json_values
        ),
        "stream": st.booleans(),
        "logprobs": st.booleans(),
        "top_logprobs": st.integers(min_value=-3, max_value=50),
        "logit_bias": st.dictionaries(
            st.text(max_size=8), st.one_of(st.floats(), st.integers()), max_size=3
        ),
        "tools": tools,
        "tool_choice": st.one_of(
            st.sampled_from(["auto", "none", "required", "bogus"]), json_values
        ),
        "response_format": st.one_of(
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["json_schema", "json_object", "text", "xml"]),
                    "json_schema": st.fixed_dictionaries(
                        {"name": st.text(max_size=5), "schema": schemas}
                    ),
                }
            ),
            json_values,
        ),
        "reasoning_effort": st.one_of(
            st.sampled_from(["low", "medium", "high", "max"]), json_values
        ),
        "thinking_token_budget": st.one_of(st.integers(min_value=-3, max_value=3), json_values),
        "min_tokens": st.integers(min_value=-2, max_value=4),
        "stream_options": json_values,
        "top_k": st.integers(min_value=-(2**40), max_value=2**40),
        "presence_penalty": st.floats(),
        "priority": st.integers(min_value=-(2**40), max_value=2**40),
    },
)
responses_bodies = st.fixed_dictionaries(
    {
        "input": st.one_of(st.text(max_size=30), st.lists(json_values, max_size=3), json_values),
        "max_output_tokens": small_or_bad_tokens,
    },
    optional={
        "instructions": json_values,
        "previous_response_id": st.one_of(st.text(max_size=10), json_values),
        "tools": st.lists(json_values, max_size=2),
        "text": json_values,
        "reasoning": json_values,
        "stream": st.booleans(),
        "store": json_values,
    },
)
completion_bodies = st.fixed_dictionaries(
    {
        "prompt": st.one_of(
            st.text(max_size=30),
            st.lists(st.integers(min_value=-5, max_value=300_000), max_size=5),
            st.lists(st.text(max_size=5), max_size=3),
            json_values,
        ),
        "max_tokens": small_or_bad_tokens,
    },
    optional={
        "echo": json_values,
        "logprobs": st.integers(min_value=-2, max_value=30),
        "stream": st.booleans(),
        "suffix": json_values,
        "n": st.integers(min_value=0, max_value=3),
    },
)


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(
        base_url=stack.router.base_url,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=TIMEOUT_S,
    ) as client:
        yield client


def _post(http: httpx.Client, path: str, content: bytes) -> int:
    headers = {"Content-Type": "application/json"}
    with http.stream("POST", path, content=content, headers=headers) as response:
        status = response.status_code
        body = response.read()  # a stream must end: the read would time out on a hang
    assert status < 500, f"{status} for {content[:300]!r}: {body[:500]!r}"
    if status >= 400:
        error = json.loads(body)["error"]
        assert isinstance(error["message"], str) and error["type"]
    elif body.startswith(b"data:"):
        assert (
            body.rstrip().endswith(b"[DONE]")
            or b"response.completed" in body
            or b"response.incomplete" in body
        )
    return status


def _encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


FUZZ = settings(
    max_examples=900,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


def _fuzz(
    http: httpx.Client, bodies: st.SearchStrategy, paths: st.SearchStrategy, examples: int
) -> Counter[int]:
    """POST every example; the statuses seen."""
    seen: Counter[int] = Counter()

    @FUZZ.__class__(FUZZ, max_examples=examples)
    @given(content=bodies, path=paths)
    def fuzz(content: bytes, path: str) -> None:
        seen[_post(http, path, content)] += 1

    fuzz()
    print(f"statuses seen on {examples} bodies:", dict(sorted(seen.items())))
    assert sum(seen.values()) == examples
    assert seen[401] == 0, "every body carried the key"
    return seen


def test_chat_bodies_never_5xx(http):
    seen = _fuzz(http, chat_bodies.map(_encode), st.just("/chat/completions"), 900)
    assert seen[200] >= 20 and seen[400] >= 450 and seen[200] + seen[400] >= 800


def test_responses_bodies_never_5xx(http):
    seen = _fuzz(http, responses_bodies.map(_encode), st.just("/responses"), 450)
    assert seen[200] >= 15 and seen[400] >= 200


def test_completion_bodies_never_5xx(http):
    seen = _fuzz(http, completion_bodies.map(_encode), st.just("/completions"), 350)
    assert seen[200] >= 20 and seen[400] >= 150


def test_malformed_json_never_5xx(http):
    raw = st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from(
            [
                b"",
                b"{",
                b"[]",
                b"null",
                b"1e999999",
                b'{"messages": NaN}',
                b'{"messages": [' * 5000,
                b'{"max_tokens": ' + b"9" * 5000 + b"}",
                b'"\\ud800"',
                b'{"messages":[{"role":"user","content":"\\ud800"}],"max_tokens":1}',
            ]
        ),
    )
    paths = st.sampled_from(["/chat/completions", "/responses", "/completions"])
    seen = _fuzz(http, raw, paths, 350)
    assert seen[400] >= 340  # nothing here is a valid request


def test_oversized_body_is_413_and_the_server_keeps_serving(http):
    big = _encode({"messages": [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 10)}]})
    response = http.post("/chat/completions", content=big)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    ok = http.post(
        "/chat/completions",
        json={
            "model": TINY_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
        },
    )
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


def test_too_many_messages_or_tools_is_400(http):
    many = [{"role": "user", "content": "x"}] * 65
    response = http.post("/chat/completions", json={"messages": many, "max_tokens": 1})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    response = http.post(
        "/chat/completions",
        json={"messages": many[:1], "max_tokens": 1, "tools": [tool] * 17},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "tools"
