"""Which completions end with a call the server runs: the parsed chunk names the built-in
call whose message ended the completion with `<|call|>`, and nothing else."""

from __future__ import annotations

import pytest

from oss_serve.common.vocab import o200k_harmony
from oss_serve.harmony import HarmonyStreamParser
from oss_serve.router.chat import _chunk_of

pytestmark = pytest.mark.unit


def _chunk(completion: str):
    parser = HarmonyStreamParser()
    tokens = o200k_harmony().encode(completion, allowed_special="all")
    events = parser.feed(tokens) + parser.finish()
    return _chunk_of("r", events)


@pytest.mark.parametrize(
    ("completion", "recipient", "arguments"),
    [
        ("<|channel|>analysis<|message|>Compute.<|end|><|start|>assistant to=python"
         "<|channel|>analysis code<|message|>print(6 * 7)<|call|>", "python", "print(6 * 7)"),
        (" to=browser.search<|channel|>analysis <|constrain|>json<|message|>"
         '{"query": "port"}<|call|>', "browser.search", '{"query": "port"}'),
        ("<|channel|>commentary to=calc.add <|constrain|>json<|message|>{\"a\":1}<|call|>",
         "calc.add", '{"a":1}'),
    ],
)  # fmt: skip
def test_a_completion_ending_with_a_builtin_call_names_it(completion, recipient, arguments):
    chunk = _chunk(completion)
    assert chunk.server_call is not None
    assert (chunk.server_call.recipient, chunk.server_call.arguments) == (recipient, arguments)
    assert not chunk.tool_calls


@pytest.mark.parametrize(
    "completion",
    [
        "<|channel|>final<|message|>42<|return|>",
        " to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{}<|call|>",
        " to=python<|channel|>analysis code<|message|>print(1)<|end|>"
        "<|start|>assistant<|channel|>final<|message|>1<|return|>",
        " to=python<|channel|>analysis code<|message|>print(1",  # cut off by max_tokens
    ],
)
def test_other_endings_name_no_server_call(completion):
    assert _chunk(completion).server_call is None
