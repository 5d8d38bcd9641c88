"""Hypothesis strategies for Chat Completions requests: tools, schemas and multi-turn chats."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# Text the model could see: any Unicode scalar (no lone surrogates), plus harmony-looking
# markup that must stay plain text, newlines and runs of spaces.
_TRICKY = st.sampled_from(
    ["<|end|>", "<|start|>assistant", "<|channel|>final", " to=functions.x", "\n\n", "  ", "\r\n"]
)
TEXT = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=24),
    st.lists(st.one_of(_TRICKY, st.text(max_size=6)), max_size=4).map("".join),
)
SHORT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=10)
NAME = st.from_regex(r"\A[A-Za-z0-9_\-]{1,16}\Z")
PROPERTY = st.from_regex(r"\A[a-z_][a-z0-9_]{0,10}\Z")

# Floats the library reads exactly: at most 15 significant digits and |exponent| <= 22.
# (Beyond that serde_json, built without float_roundtrip, may read a neighbouring double;
# test_render_library_bugs.py documents that case.)
FLOAT = st.one_of(
    st.builds(
        lambda mantissa, exponent: float(f"{mantissa}e{exponent}"),
        st.integers(-(10**15) + 1, 10**15 - 1),
        st.integers(-22, 22),
    ),
    st.sampled_from([0.0, -0.0, 0.1, 1e16, 1e-7, 1e22, 123456789012345.0, -2.5e-5]),
)
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), FLOAT, SHORT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(PROPERTY, inner, max_size=3)
    ),
    max_leaves=5,
)


@st.composite
def _annotated(draw: st.DrawFn, schema: dict[str, Any]) -> dict[str, Any]:
    """Add the optional keys the renderer prints: description, title, examples, default."""
    if draw(st.booleans()):
        schema["description"] = draw(TEXT)
    if draw(st.integers(0, 5)) == 0:
        schema["title"] = draw(SHORT)
    if draw(st.integers(0, 6)) == 0:
        schema["examples"] = draw(st.lists(st.one_of(SHORT, st.integers()), max_size=3))
    if draw(st.integers(0, 3)) == 0:
        schema["default"] = draw(JSON_VALUE)
    if draw(st.integers(0, 6)) == 0:
        schema["nullable"] = draw(st.booleans())
    return schema


@st.composite
def leaf_schema(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["string", "enum", "integer", "number", "boolean", "multi", "any"]))
    if kind == "enum":
        values = draw(st.lists(SHORT, min_size=1, max_size=4, unique=True))
        schema: dict[str, Any] = {"type": "string", "enum": values}
        if draw(st.booleans()):
            schema["default"] = draw(st.sampled_from(values))
        return draw(_annotated(schema))
    if kind == "multi":
        types = draw(
            st.lists(
                st.sampled_from(["string", "integer", "null", "boolean"]), min_size=1, max_size=3
            )
        )
        return draw(_annotated({"type": types}))
    if kind == "any":
        return draw(_annotated({}))
    return draw(_annotated({"type": kind}))


@st.composite
def _object_schema(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> dict[str, Any]:
    properties = draw(st.dictionaries(PROPERTY, children, max_size=4))
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if properties:
        schema["required"] = draw(st.lists(st.sampled_from(sorted(properties)), unique=True))
    if draw(st.integers(0, 3)) == 0:
        schema["description"] = draw(TEXT)
    return schema


@st.composite
def _one_of_schema(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> dict[str, Any]:
    variants = draw(st.lists(children, min_size=1, max_size=3))
    schema: dict[str, Any] = {"oneOf": variants}
    if draw(st.booleans()):
        first = variants[0].get("description") if isinstance(variants[0], dict) else None
        # Sometimes equal to the first variant's description: the renderer dedupes that.
        schema["description"] = first if first and draw(st.booleans()) else draw(TEXT)
    if draw(st.integers(0, 3)) == 0:
        schema["default"] = draw(JSON_VALUE)
    return schema


@st.composite
def _library_bug_schema(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> dict[str, Any]:
    """Shapes openai-harmony prints as `any`: anyOf (incl. Optional), allOf, null variants."""
    child = draw(children)
    kind = draw(st.sampled_from(["optional", "any_of", "all_of", "one_of_null"]))
    if kind == "optional":
        return {"anyOf": [child, {"type": "null"}], **draw(_annotated({}))}
    if kind == "any_of":
        return {"anyOf": [child, draw(children)]}
    if kind == "all_of":
        return {"allOf": [child], "description": draw(TEXT)}
    return {"oneOf": [{"type": "null"}, child]}


@st.composite
def _node(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> Any:
    kind = draw(st.integers(0, 9))
    if kind <= 3:
        return draw(_object_schema(children))
    if kind <= 5:
        return {"type": "array", "items": draw(children)}
    if kind == 6:
        return {"type": "array"}
    if kind <= 8:
        return draw(_one_of_schema(children))
    return draw(_library_bug_schema(children))


SCHEMA = st.recursive(leaf_schema(), _node, max_leaves=6)


@st.composite
def parameters(draw: st.DrawFn) -> dict[str, Any] | None:
    kind = draw(st.sampled_from(["object"] * 6 + ["refs", "none", "empty"]))
    if kind == "none":
        return None
    if kind == "empty":
        return draw(st.sampled_from([{}, {"type": "object", "properties": {}}]))
    params = draw(_object_schema(SCHEMA))
    if kind == "refs":
        # pydantic-style nested models: properties that point into $defs.
        defs = draw(
            st.dictionaries(st.from_regex(r"\A[A-Z][a-z]{0,6}\Z"), SCHEMA, min_size=1, max_size=2)
        )
        params["$defs"] = defs
        for name in defs:
            params["properties"][f"ref_{name.lower()}"] = {"$ref": f"#/$defs/{name}"}
    return params


@st.composite
def function_tool(draw: st.DrawFn) -> dict[str, Any]:
    function: dict[str, Any] = {"name": draw(NAME)}
    if draw(st.integers(0, 4)):
        function["description"] = draw(TEXT)
    params = draw(parameters())
    if params is not None:
        function["parameters"] = params
    return {"type": "function", "function": function}


def _content() -> st.SearchStrategy[Any]:
    parts = st.lists(st.builds(lambda t: {"type": "text", "text": t}, TEXT), min_size=1, max_size=3)
    return st.one_of(TEXT, TEXT, parts)


@st.composite
def _tool_round(draw: st.DrawFn, names: list[str], counter: list[int]) -> list[dict[str, Any]]:
    """An assistant message with 1-2 tool calls, then one tool message per call."""
    calls = []
    for _ in range(draw(st.integers(1, 2))):
        counter[0] += 1
        arguments = json.dumps(draw(st.dictionaries(PROPERTY, JSON_VALUE, max_size=2)))
        calls.append(
            {
                "id": f"call_{counter[0]}",
                "type": "function",
                "function": {"name": draw(st.sampled_from(names)), "arguments": arguments},
            }
        )
    assistant: dict[str, Any] = {"role": "assistant", "tool_calls": calls}
    _maybe_reasoning(draw, assistant)
    if draw(st.integers(0, 3)) == 0:
        assistant["content"] = draw(TEXT)  # a preamble
    outputs = [
        {"role": "tool", "tool_call_id": call["id"], "content": draw(_content())} for call in calls
    ]
    return [assistant, *outputs]


def _maybe_reasoning(draw: st.DrawFn, message: dict[str, Any]) -> None:
    if draw(st.integers(0, 2)):
        key = draw(st.sampled_from(["reasoning", "reasoning_content"]))
        message[key] = draw(TEXT)


@st.composite
def chat_messages(draw: st.DrawFn, names: list[str]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    counter = [0]
    turns = draw(st.integers(1, 3))
    for turn in range(turns):
        if draw(st.integers(0, 2)) == 0:
            role = draw(st.sampled_from(["system", "developer"]))
            messages.append({"role": role, "content": draw(_content())})
        messages.append({"role": "user", "content": draw(_content())})
        last = turn == turns - 1
        ending = draw(st.sampled_from(["final", "pending_tool", "user"])) if last else "final"
        rounds = draw(st.integers(1 if ending == "pending_tool" else 0, 2))
        for _ in range(rounds):
            messages.extend(draw(_tool_round(names, counter)))
        if ending == "final":
            final: dict[str, Any] = {"role": "assistant", "content": draw(_content())}
            _maybe_reasoning(draw, final)
            messages.append(final)
    return messages


@st.composite
def response_format(draw: st.DrawFn) -> dict[str, Any] | None:
    kind = draw(st.sampled_from([None, None, "text", "json_object", "json_schema"]))
    if kind is None:
        return None
    if kind != "json_schema":
        return {"type": kind}
    spec: dict[str, Any] = {
        "name": draw(NAME),
        "schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
    }
    if draw(st.booleans()):
        spec["description"] = draw(SHORT)
    return {"type": "json_schema", "json_schema": spec}


@st.composite
def chat_cases(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A Chat Completions body and the built-in tools the server enables."""
    tools = draw(st.lists(function_tool(), max_size=3, unique_by=lambda t: t["function"]["name"]))
    names = [t["function"]["name"] for t in tools] or ["lookup"]
    body: dict[str, Any] = {"model": "gpt-oss-20b", "messages": draw(chat_messages(names))}
    if tools:
        body["tools"] = tools
        choice = draw(st.sampled_from([None, "auto", "none"]))
        if choice:
            body["tool_choice"] = choice
    effort = draw(st.sampled_from([None, "low", "medium", "high"]))
    if effort:
        body["reasoning_effort"] = effort
    fmt = draw(response_format())
    if fmt:
        body["response_format"] = fmt
    builtin = draw(st.sampled_from([(), (), ("browser",), ("python",), ("browser", "python")]))
    return body, builtin
