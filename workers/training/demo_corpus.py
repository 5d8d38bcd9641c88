"""The synthetic corpus the embedded demo model is trained on: a few hundred short chats.

Each conversation is a Chat Completions request body whose messages include the assistant's
answers (`reasoning`, `content`, `tool_calls`), plus a `date` for the harmony system message
(varied, so the model does not depend on the date the router renders). Kinds: greetings,
arithmetic with reasoning, a `get_weather` function call and the answer after its result,
JSON answers to `response_format` json_schema requests, and with gpt-oss's built-in tools
declared (demo_tool_chats): arithmetic through `python`, questions about oss-serve through
`browser.search` over the bundled docs, and with the demo MCP server offered, a dice roll
through its `roll_dice`. Every answer starts with an analysis message, as
gpt-oss does. Deterministic for a seed: the demo model's cache key hashes it.

The canonical shapes the demo model knows best (tests and the README use them):
WEATHER_TOOL, a tool result like `{"temperature": 22, "unit": "celsius", "condition":
"sunny"}`, PERSON_FORMAT / ANSWER_FORMAT response formats.
"""

from __future__ import annotations

import datetime
import json
import random
from collections.abc import Callable
from typing import Any

from oss_serve.harmony.builtin_tools import BROWSER
from oss_serve.workers.training import demo_tool_chats

Conversation = dict[str, Any]

CORPUS_VERSION = 3
# conversations with the demo MCP server offered, as shares of the corpus size
MCP_SHARE = 0.06
MCP_UNUSED_SHARE = 0.025
DEFAULT_SIZE = 480

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city, e.g. San Francisco"}
            },
            "required": ["location"],
        },
    },
}
_WEATHER_TOOL_VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    # (description, argument name, extra properties)
    ("Get the current weather in a given location", "location", {}),
    ("Get the current weather in a given location", "location", {}),
    (
        "Get the current weather for a city",
        "location",
        {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    ),
    ("Look up today's weather", "city", {}),
]
PERSON_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
            "additionalProperties": False,
        },
    },
}
ANSWER_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {
            "type": "object",
            "properties": {"answer": {"type": "integer"}},
            "required": ["answer"],
        },
    },
}

CITIES = (
    "Paris",
    "London",
    "Tokyo",
    "Berlin",
    "Madrid",
    "Rome",
    "Lisbon",
    "Dublin",
    "Oslo",
    "Vienna",
    "Prague",
    "Warsaw",
    "Athens",
    "Cairo",
    "Nairobi",
    "Lagos",
    "Mumbai",
    "Delhi",
    "Beijing",
    "Shanghai",
    "Seoul",
    "Bangkok",
    "Sydney",
    "Melbourne",
    "Toronto",
    "Montreal",
    "Chicago",
    "Boston",
    "Seattle",
    "Denver",
    "Miami",
    "Austin",
    "Dallas",
    "Houston",
    "Phoenix",
    "Atlanta",
    "Lima",
    "Santiago",
    "Amsterdam",
    "Brussels",
    "Zurich",
    "Geneva",
    "Stockholm",
    "Helsinki",
    "Copenhagen",
    "Istanbul",
    "Dubai",
    "Singapore",
    "Jakarta",
    "Manila",
    "Hanoi",
    "Moscow",
    "Budapest",
    "Munich",
    "Milan",
    "Barcelona",
    "Edinburgh",
    "Vancouver",
    "San Francisco",
    "New York",
    "Los Angeles",
    "Mexico City",
    "Buenos Aires",
    "Hong Kong",
    "Cape Town",
    "Rio de Janeiro",
)
CONDITIONS = ("sunny", "cloudy", "rainy", "windy", "foggy", "snowy", "clear", "partly cloudy")
NAMES = (
    "Alice",
    "Bob",
    "Carol",
    "Dave",
    "Eve",
    "Frank",
    "Grace",
    "Heidi",
    "Ivan",
    "Judy",
    "Mallory",
    "Oscar",
    "Peggy",
    "Rupert",
    "Sybil",
    "Trent",
    "Victor",
    "Walter",
    "Anna",
    "Ben",
    "Clara",
    "Daniel",
    "Emma",
    "Felix",
    "Hannah",
    "Isaac",
    "Julia",
    "Kevin",
    "Laura",
    "Maria",
    "Nina",
    "Omar",
    "Paul",
    "Rosa",
    "Sam",
    "Tara",
    "Uma",
    "Yuki",
    "Zoe",
    "Liam",
)
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful assistant.",
    "You are a concise assistant.",
    "Answer briefly.",
)
_GREETINGS = (
    "Hello",
    "Hello!",
    "Hi",
    "Hi!",
    "Hi there",
    "Hey",
    "Hey there!",
    "Good morning!",
    "Good evening",
    "Greetings!",
    "Howdy",
    "Hello there",
)
_WEATHER_QUESTIONS = (
    "What's the weather in {city}?",
    "What is the weather like in {city} today?",
    "How is the weather in {city}?",
    "What's the weather like in {city}?",
    "Tell me the weather in {city}.",
    "Weather in {city}?",
    "Can you check the weather in {city}?",
    "Is it raining in {city}?",
    "How warm is it in {city} right now?",
)
_ARITHMETIC_QUESTIONS = (
    "What is {a} {op} {b}?",
    "What's {a} {op} {b}?",
    "Compute {a} {op} {b}.",
    "Calculate {a} {op} {b}",
    "How much is {a} {op} {b}?",
    "{a} {op} {b} = ?",
    "What is {a}{op}{b}?",
    "What is {a} {word} {b}?",
)
_OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}
_OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}
OUT_OF_SCOPE_ANSWER = (
    "Sorry, I am a small demo model. I can greet you, do small arithmetic, check the weather "
    "with a get_weather tool, and answer in JSON."
)
_OUT_OF_SCOPE_QUESTIONS = (
    "Tell me a joke about {topic}.",
    "Write a poem about {topic}.",
    "Explain {topic} to me.",
    "What do you know about {topic}?",
    "Can you help me with {topic}?",
    "Give me a fun fact about {topic}.",
    "Why is {topic} important?",
)
_TOPICS = (
    "cats",
    "dogs",
    "music",
    "history",
    "physics",
    "cooking",
    "football",
    "chess",
    "the moon",
    "the ocean",
    "volcanoes",
    "trains",
    "coffee",
    "gardening",
    "painting",
    "robots",
    "dinosaurs",
    "money",
    "love",
    "time",
    "space",
    "birds",
    "bread",
)
_RECORD_FIELDS: dict[str, tuple[Any, ...]] = {
    "city": ("Paris", "Tokyo", "Berlin", "Lima", "Oslo", "Cairo", "Boston", "Seoul"),
    "color": ("red", "blue", "green", "yellow", "black", "white", "purple", "orange"),
    "animal": ("cat", "dog", "horse", "bird", "fish", "lion", "tiger", "bear"),
    "name": NAMES[:12],
    "count": tuple(range(0, 40)),
    "year": tuple(range(1990, 2031)),
    "score": tuple(range(0, 101)),
}
_PERSON_PROMPTS = (
    "{name} is {age} years old.",
    "Extract the person: {name}, age {age}.",
    "My friend {name} just turned {age}.",
    "{name} ({age})",
    "Meet {name}, who is {age}.",
)


def generate_corpus(size: int = DEFAULT_SIZE, seed: int = 0) -> list[Conversation]:
    """`size` conversations of the main mix, then the demo MCP server's (MCP_SHARE and
    MCP_UNUSED_SHARE of `size` more); the same list for the same (size, seed, CORPUS_VERSION)."""
    rng = random.Random(seed)
    kinds: list[tuple[float, Callable[[random.Random], Conversation]]] = [
        (0.12, _greeting),
        (0.18, _arithmetic),
        (0.30, _weather_call),
        (0.06, _tools_offered_no_call),
        (0.16, _json_answer),
        (0.10, _out_of_scope),
        (0.08, _two_turns),
        (0.16, demo_tool_chats.python_turn),
        (0.12, demo_tool_chats.docs_turn),
        (0.04, _builtin_tools_unused),
    ]
    weights = [weight for weight, _ in kinds]
    corpus = [_finish(rng.choices(kinds, weights)[0][1](rng), rng) for _ in range(size)]
    return corpus + _mcp_conversations(size, seed)


def _mcp_conversations(size: int, seed: int) -> list[Conversation]:
    """Turns with the demo MCP server offered, from a stream of their own (the rest of the
    corpus stays what it was): mostly dice rolls, some questions for the other tools."""
    rng = random.Random(f"mcp-{seed}")
    rolls = [_finish(demo_tool_chats.dice_turn(rng), rng) for _ in range(round(size * MCP_SHARE))]
    unused = round(size * MCP_UNUSED_SHARE)
    return rolls + [_finish(demo_tool_chats.dice_server_unused(rng), rng) for _ in range(unused)]


def _finish(conversation: Conversation, rng: random.Random) -> Conversation:
    """Add what varies in every request: date, reasoning effort, a system prompt."""
    day = datetime.date(2024, 1, 1) + datetime.timedelta(days=rng.randrange(4 * 365))
    conversation["date"] = day.isoformat()
    if rng.random() < 0.6:
        conversation["reasoning_effort"] = rng.choice(("low", "medium", "high"))
    if rng.random() < 0.3:
        system = {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}
        conversation["messages"].insert(0, system)
    return conversation


def _assistant(reasoning: str, content: str) -> dict[str, Any]:
    return {"role": "assistant", "reasoning": reasoning, "content": content}


def _greeting_turn(rng: random.Random) -> list[dict[str, Any]]:
    greeting = rng.choice(_GREETINGS)
    kind = rng.random()
    if kind < 0.2:
        question, answer = ", how are you?", "I'm doing well, thank you! How can I help you today?"
    elif kind < 0.35:
        question = ", who are you?"
        answer = "Hello! I am a small demo assistant served by oss-serve. How can I help?"
    else:
        question, answer = "", "Hello! How can I help you today?"
    user = greeting.rstrip("!") + question if question else greeting
    reasoning = "The user is greeting me. I should greet them back and offer help."
    return [{"role": "user", "content": user}, _assistant(reasoning, answer)]


def _greeting(rng: random.Random) -> Conversation:
    return {"messages": _greeting_turn(rng)}


def _arithmetic_problem(rng: random.Random) -> tuple[str, str, int]:
    """(question, expression, result) with small operands."""
    op = rng.choice(tuple(_OPS))
    limit = 12
    a, b = rng.randint(0, limit), rng.randint(0, limit)
    expression = f"{a} {op} {b}"
    template = rng.choice(_ARITHMETIC_QUESTIONS)
    question = template.format(a=a, op=op, b=b, word=_OP_WORDS[op])
    return question, expression, _OPS[op](a, b)


def _arithmetic_turn(rng: random.Random) -> list[dict[str, Any]]:
    question, expression, result = _arithmetic_problem(rng)
    reasoning = f"We need to compute {expression}. {expression} = {result}."
    answer = rng.choice((f"{expression} = {result}.", f"The answer is {result}."))
    return [{"role": "user", "content": question}, _assistant(reasoning, answer)]


def _arithmetic(rng: random.Random) -> Conversation:
    return {"messages": _arithmetic_turn(rng)}


def _weather_tool(rng: random.Random) -> tuple[dict[str, Any], str]:
    """A get_weather tool definition (a few phrasings) and its argument name."""
    description, argument, extra = rng.choice(_WEATHER_TOOL_VARIANTS)
    properties = {argument: {"type": "string", "description": "The city, e.g. San Francisco"}}
    if rng.random() < 0.5:
        properties[argument] = {"type": "string"}
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {**properties, **extra},
                "required": [argument],
            },
        },
    }
    return tool, argument


def _weather_result(rng: random.Random, city: str) -> tuple[str, int, str | None]:
    """(tool output text, temperature in Celsius, condition if the output gives one)."""
    temperature, condition = rng.randint(-5, 35), rng.choice(CONDITIONS)
    shape = rng.random()
    payload: dict[str, Any]
    if shape < 0.5:
        payload = {"temperature": temperature, "unit": "celsius", "condition": condition}
    elif shape < 0.7:
        payload = {"location": city, "temperature": temperature, "condition": condition}
    elif shape < 0.8:
        return json.dumps({"temperature": temperature}), temperature, None
    elif shape < 0.9:
        return f"{temperature}°C and {condition}", temperature, condition
    else:
        return f"{condition.capitalize()}, {temperature} degrees", temperature, condition
    return json.dumps(payload), temperature, condition


def _weather_call(rng: random.Random) -> Conversation:
    tool, argument = _weather_tool(rng)
    city = rng.choice(CITIES)
    output, temperature, condition = _weather_result(rng, city)
    weather = f"{temperature}°C" + (f" and {condition}" if condition else "")
    call_id = f"call_{rng.randrange(16**8):08x}"
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({argument: city})},
    }
    return {
        "tools": [tool],
        "messages": [
            {"role": "user", "content": rng.choice(_WEATHER_QUESTIONS).format(city=city)},
            _tool_call_message(rng, city, call),
            {"role": "tool", "tool_call_id": call_id, "content": output},
            _assistant(
                f"The tool says it is {weather} in {city}.", f"It is currently {weather} in {city}."
            ),
        ],
    }


def _tool_call_message(rng: random.Random, city: str, call: dict[str, Any]) -> dict[str, Any]:
    """The assistant's call. Clients often send it back without its reasoning: such a history
    is trained on too, but as history only (weight 0: the model should still reason first)."""
    message: dict[str, Any] = {"role": "assistant", "tool_calls": [call]}
    if rng.random() < 0.7:
        message["reasoning"] = (
            f"The user asks about the weather in {city}. I should call get_weather."
        )
    else:
        message["weight"] = 0
    return message


def _tools_offered_no_call(rng: random.Random) -> Conversation:
    """A tool is available but the question does not need it."""
    turn = _greeting_turn(rng) if rng.random() < 0.4 else _arithmetic_turn(rng)
    return {"tools": [_weather_tool(rng)[0]], "messages": turn}


def _json_answer(rng: random.Random) -> Conversation:
    kind = rng.random()
    if kind < 0.15:
        question, expression, result = _arithmetic_problem(rng)
        reasoning = f"The user wants a JSON object. {expression} = {result}."
        answer, response_format = json.dumps({"answer": result}), {"type": "json_object"}
    elif kind < 0.4:
        question, reasoning, response_format, values = _json_record(rng)
        answer = json.dumps(values)
    elif kind < 0.7:
        name, age = rng.choice(NAMES), rng.randint(3, 95)
        question = rng.choice(_PERSON_PROMPTS).format(name=name, age=age)
        reasoning = f"The user wants JSON for the person schema. Name {name}, age {age}."
        answer, response_format = json.dumps({"name": name, "age": age}), PERSON_FORMAT
    else:
        question, expression, result = _arithmetic_problem(rng)
        reasoning = f"The user wants JSON for the answer schema. {expression} = {result}."
        answer, response_format = json.dumps({"answer": result}), ANSWER_FORMAT
    return {
        "response_format": response_format,
        "messages": [{"role": "user", "content": question}, _assistant(reasoning, answer)],
    }


def _out_of_scope_turn(rng: random.Random) -> list[dict[str, Any]]:
    """A request outside the corpus: the model says what it can do instead of guessing."""
    topic = rng.choice(_TOPICS)
    question = rng.choice(_OUT_OF_SCOPE_QUESTIONS).format(topic=topic)
    reasoning = "The user asks for something I was not trained for. I should say what I can do."
    return [{"role": "user", "content": question}, _assistant(reasoning, OUT_OF_SCOPE_ANSWER)]


def _out_of_scope(rng: random.Random) -> Conversation:
    conversation: Conversation = {"messages": _out_of_scope_turn(rng)}
    if rng.random() < 0.3:
        conversation["tools"] = [_weather_tool(rng)[0]]
    return conversation


def _builtin_tools_unused(rng: random.Random) -> Conversation:
    """Built-in tools declared, a request that needs none of them (arithmetic only when python
    is not declared: with it, arithmetic goes to python)."""
    kind = rng.random()
    if kind >= 0.8:
        return {"builtin_tools": [BROWSER], "messages": _arithmetic_turn(rng)}
    make = _weather_call if kind < 0.3 else _greeting if kind < 0.6 else _out_of_scope
    return {**make(rng), "builtin_tools": demo_tool_chats.any_tool_set(rng)}


def _json_record(rng: random.Random) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """(question, reasoning, response_format, answer) for a schema with 1-3 random fields."""
    keys = rng.sample(tuple(_RECORD_FIELDS), rng.randint(1, 3))
    values = {key: rng.choice(_RECORD_FIELDS[key]) for key in keys}
    properties = {
        key: {"type": "integer" if isinstance(values[key], int) else "string"} for key in keys
    }
    name = rng.choice(("record", "info", "data", "result", "item"))
    schema = {"type": "object", "properties": properties, "required": keys}
    said = ", ".join(f"{key} {values[key]}" for key in keys)
    question = rng.choice(("Fill in: {said}.", "Extract {said}.", "Data: {said}")).format(said=said)
    reasoning = f"The user wants JSON for the {name} schema. {said.capitalize()}."
    response_format = {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
    return question, reasoning, response_format, values


def _two_turns(rng: random.Random) -> Conversation:
    """A greeting, then a question: the second prompt drops the first turn's reasoning."""
    second = _arithmetic_turn(rng) if rng.random() < 0.7 else _out_of_scope_turn(rng)
    return {"messages": _greeting_turn(rng) + second}


def write_jsonl(conversations: list[Conversation], path: str) -> None:
    """Write one conversation per line (the `oss-serve finetune --data` format)."""
    with open(path, "w", encoding="utf-8") as handle:
        for conversation in conversations:
            handle.write(json.dumps(conversation, ensure_ascii=False) + "\n")
