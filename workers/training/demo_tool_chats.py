"""The demo corpus's turns with gpt-oss's built-in tools declared in the system message.

Arithmetic goes to `python` (the code prints the expression; the answer repeats what it
printed); a question about oss-serve goes to `browser.search` over the bundled docs
(`oss_serve/tools/demo_docs`), and the answer states the fact and cites the lines of the
search display it came from, `【0†L4-L5】`. Calls go on the analysis channel with the `code`
content type, as gpt-oss writes them; each tool message is the tool's real output.

A request for a dice roll goes to the demo MCP server's `roll_dice` (`tools/demo_mcp.py`),
declared as the router declares an MCP server: a developer-message namespace named by its
`server_label`, usually `dice`. That call is a function-style call (commentary channel, JSON
arguments) to `<label>.roll_dice`, and the answer states the number the die shows.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from oss_serve.harmony.builtin_tools import BROWSER, PYTHON
from oss_serve.harmony.conversation import CONSTRAIN_JSON
from oss_serve.tools.demo_mcp import DEMO_MCP_LABEL, DEMO_MCP_TOOLS, ROLL_DICE, roll
from oss_serve.workers.training import demo_docs

Conversation = dict[str, Any]

CALL_CHANNEL = "analysis"
CALL_CONTENT_TYPE = "code"
SEARCH_RECIPIENT = f"{BROWSER}.search"
# one tool declared more often than both: both make the longest prompts, the costliest to train
TOOL_SETS = ((PYTHON,), (PYTHON,), (BROWSER,), (BROWSER,), (BROWSER, PYTHON))


@dataclass(frozen=True)
class DocsFact:
    """A fact the bundled docs state: questions that ask for it, the query the model searches
    with, the answer it gives, and a phrase of the docs' line that holds it (for the citation)."""

    questions: tuple[str, ...]
    query: str
    answer: str
    phrase: str


DOCS_FACTS: tuple[DocsFact, ...] = (
    DocsFact(
        (
            "What port does the oss-serve HTTP API use?",
            "Which port does the router serve HTTP on?",
            "On which port is the OpenAI API of oss-serve?",
        ),
        "oss-serve HTTP API port",
        "The router serves the OpenAI HTTP API on port 8000 by default",
        "port 8000",
    ),
    DocsFact(
        (
            "What is the default gRPC port of oss-serve?",
            "Which port does the gRPC API listen on?",
            "On which port is the oss-serve gRPC API?",
        ),
        "oss-serve gRPC API port",
        "The public gRPC API listens on port 50051 by default",
        "port 50051",
    ),
    DocsFact(
        (
            "What is the name of the demo model?",
            "Under which name does oss-serve up serve the demo model?",
            "What is the demo model called?",
        ),
        "demo model name",
        "oss-serve up serves the demo model named oss-serve-demo",
        "oss-serve-demo",
    ),
    DocsFact(
        (
            "How many layers does the demo model have?",
            "How many experts does the demo model have?",
            "How big is the demo model?",
        ),
        "demo model layers hidden size",
        "The demo model has 2 layers, a hidden size of 64 and 4 experts",
        "2 layers",
    ),
    DocsFact(
        (
            "How often do replicas send a heartbeat?",
            "What is the heartbeat interval of a replica?",
            "How frequently does an oss-serve replica heartbeat?",
        ),
        "replica heartbeat interval",
        "Replicas send a heartbeat every 0.5 seconds",
        "0.5 seconds",
    ),
    DocsFact(
        (
            "How many active parameters does gpt-oss-20b have?",
            "How many parameters does gpt-oss-20b have?",
            "How large is gpt-oss-20b?",
        ),
        "gpt-oss-20b active parameters",
        "gpt-oss-20b has 20.9 billion parameters, 3.6 billion of them active per token",
        "3.6 billion",
    ),
    DocsFact(
        (
            "How much KV cache does gpt-oss-20b need per token?",
            "What is the KV cache size per token of gpt-oss-20b?",
            "How many bytes of KV cache per token does gpt-oss-20b use?",
        ),
        "gpt-oss-20b KV cache per token",
        "In bf16, gpt-oss-20b needs 24 KiB of KV cache per token",
        "24 KiB",
    ),
    DocsFact(
        (
            "What sandbox does the python tool use?",
            "How is the python tool of oss-serve sandboxed?",
            "Where does oss-serve run python code?",
        ),
        "python tool sandbox",
        "The python tool runs code in a bubblewrap sandbox with no network access",
        "bubblewrap",
    ),
    DocsFact(
        (
            "What does the API key of oss-serve up start with?",
            "What prefix does the generated API key have?",
            "How does the key that oss-serve up generates begin?",
        ),
        "generated API key prefix",
        "The API key that oss-serve up generates for a run starts with sk-oss-",
        "sk-oss-",
    ),
    DocsFact(
        (
            "Where is the Helm chart of oss-serve?",
            "In which folder is the oss-serve Helm chart?",
            "Where do I find the Helm chart?",
        ),
        "Helm chart folder",
        "The Helm chart lives in helm/oss-serve",
        "helm/oss-serve",
    ),
    DocsFact(
        (
            "How many tokens does a KV cache block hold?",
            "What is the KV cache block size?",
            "How big is a block of the paged KV cache?",
        ),
        "KV cache block size tokens",
        "The KV cache is paged in blocks of 16 tokens",
        "16 tokens",
    ),
)

_OPS = {"+": "plus", "-": "minus", "*": "times"}
_PYTHON_QUESTIONS = (
    "What is {a} {op} {b}?",
    "What's {a} {op} {b}?",
    "Compute {a} {op} {b}.",
    "Calculate {a} {op} {b}",
    "How much is {a} {op} {b}?",
    "What is {a} {word} {b}?",
    "What is {a} {word} {b}?",
    "Use python: what is {a} {op} {b}?",
)
# problems the tests and the README ask, often in the corpus: the model copies the numbers,
# and it copies a number token well only when it has seen that token many times
CANONICAL_PROBLEMS = ((37, "*", 91), (12, "*", 34), (55, "+", 18))


def harmony(author: str, text: str, **fields: str) -> dict[str, Any]:
    """A raw harmony message of a tool-loop turn (see workers.training.tool_loop)."""
    return {"harmony": {"author": author, "text": text, **fields}}


def _analysis(text: str) -> dict[str, Any]:
    return harmony("assistant", text, channel="analysis")


def _final(text: str) -> dict[str, Any]:
    return harmony("assistant", text, channel="final")


def _call(recipient: str, text: str) -> dict[str, Any]:
    return harmony(
        "assistant", text, channel=CALL_CHANNEL, recipient=recipient, content_type=CALL_CONTENT_TYPE
    )


def _tool_output(author: str, text: str, channel: str = CALL_CHANNEL) -> dict[str, Any]:
    return harmony(author, text, channel=channel, recipient="assistant")


def python_output(a: int, op: str, b: int) -> str:
    """The python tool's message for `print(a op b)`: the cell's stdout without its last
    newline."""
    return str({"+": a + b, "-": a - b, "*": a * b}[op])


def python_turn(rng: random.Random) -> Conversation:
    """An arithmetic question answered with the number python printed."""
    if rng.random() < 0.25:
        a, op, b = rng.choice(CANONICAL_PROBLEMS)
    else:
        op = rng.choice(tuple(_OPS))
        a, b = rng.randint(2, 99), rng.randint(2, 99)
    expression = f"{a} {op} {b}"
    question = rng.choice(_PYTHON_QUESTIONS).format(a=a, op=op, b=b, word=_OPS[op])
    printed = python_output(a, op, b)
    return {
        "builtin_tools": list(rng.choice([tools for tools in TOOL_SETS if PYTHON in tools])),
        "messages": [
            {"role": "user", "content": question},
            _analysis(f"We need to compute {expression}. Let me run it in python."),
            _call(PYTHON, f"print({expression})"),
            _tool_output(PYTHON, printed),
            _analysis(f"python printed {printed}."),
            _final(f"The answer is {printed}."),
        ],
    }


def docs_turn(rng: random.Random) -> Conversation:
    """A question about oss-serve answered from a search of the bundled docs, with a citation."""
    fact = rng.choice(DOCS_FACTS)
    display = demo_docs.search_display(fact.query)
    citation = demo_docs.citation(display, fact.phrase)
    return {
        "builtin_tools": list(rng.choice([tools for tools in TOOL_SETS if BROWSER in tools])),
        "messages": [
            {"role": "user", "content": rng.choice(fact.questions)},
            _analysis("The user asks about oss-serve. I should search the docs."),
            _call(SEARCH_RECIPIENT, json.dumps({"query": fact.query})),
            _tool_output(SEARCH_RECIPIENT, display),
            _analysis(f"The search result answers it {citation}."),
            _final(f"{fact.answer} {citation}."),
        ],
    }


def any_tool_set(rng: random.Random) -> list[str]:
    """The built-in tools a request declares: python, browser or both."""
    return list(rng.choice(TOOL_SETS))


# a die's sides as users ask for them; the server label a request gives the demo server
DIE_SIDES = (4, 6, 8, 10, 12, 20)
_DICE_QUESTIONS = (
    "Roll a {n}-sided die.",
    "Roll a die with {n} sides.",
    "Can you roll a {n}-sided die for me?",
    "Roll a d{n}.",
    "Throw a {n}-sided die.",
    "Please roll a {n} sided dice.",
)
_SIX_SIDED_QUESTIONS = ("Roll a die.", "Roll the dice.", "Can you roll a die for me?")
# mostly the README's label; sometimes another, so the call names the namespace it was given
OTHER_MCP_LABELS = ("die", "games", "random", "tabletop")


def mcp_server_entry(label: str) -> dict[str, Any]:
    """The demo MCP server as a training line's `mcp_servers` entry (see training.data)."""
    return {
        "server_label": label,
        "tools": [
            {"name": tool.name, "description": tool.description, "input_schema": tool.input_schema}
            for tool in DEMO_MCP_TOOLS
        ],
    }


def _mcp_label(rng: random.Random) -> str:
    return DEMO_MCP_LABEL if rng.random() < 0.75 else rng.choice(OTHER_MCP_LABELS)


def dice_turn(rng: random.Random) -> Conversation:
    """A dice roll through the demo MCP server's `roll_dice`, answered with what it shows."""
    label = _mcp_label(rng)
    if rng.random() < 0.2:
        sides, question = 6, rng.choice(_SIX_SIDED_QUESTIONS)
    else:
        sides = rng.choice(DIE_SIDES)
        question = rng.choice(_DICE_QUESTIONS).format(n=sides)
    shown = str(roll(sides, rng))
    recipient = f"{label}.{ROLL_DICE}"
    builtins = list(rng.choice(TOOL_SETS)) if rng.random() < 0.4 else []
    return {
        "builtin_tools": builtins,
        "mcp_servers": [mcp_server_entry(label)],
        "messages": [
            {"role": "user", "content": question},
            _analysis(f"The user wants me to roll a {sides}-sided die. I should call {ROLL_DICE}."),
            harmony(
                "assistant",
                json.dumps({"sides": sides}),
                channel="commentary",
                recipient=recipient,
                content_type=CONSTRAIN_JSON,
            ),
            _tool_output(recipient, shown, channel="commentary"),
            _analysis(f"The die shows {shown}."),
            _final(f"You rolled a {shown} on the {sides}-sided die."),
        ],
    }


def dice_server_unused(rng: random.Random) -> Conversation:
    """The demo MCP server is offered, but the question is for python or the docs."""
    conversation = python_turn(rng) if rng.random() < 0.5 else docs_turn(rng)
    conversation["mcp_servers"] = [mcp_server_entry(_mcp_label(rng))]
    return conversation
