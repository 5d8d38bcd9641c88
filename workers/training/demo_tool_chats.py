"""The demo corpus's turns with gpt-oss's built-in tools declared in the system message.

Arithmetic goes to `python` (the code prints the expression; the answer repeats what it
printed); a question about oss-serve goes to `browser.search` over the bundled docs
(`oss_serve/tools/demo_docs`), and the answer states the fact and cites the lines of the
search display it came from, `【0†L4-L5】`. Calls go on the analysis channel with the `code`
content type, as gpt-oss writes them; each tool message is the tool's real output.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from oss_serve.harmony.builtin_tools import BROWSER, PYTHON
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


def _tool_output(author: str, text: str) -> dict[str, Any]:
    return harmony(author, text, channel=CALL_CHANNEL, recipient="assistant")


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
