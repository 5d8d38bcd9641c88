"""xgrammar structured outputs: the harmony turn as a grammar (reasoning free, the final
message and tool arguments constrained), the batched processor, and the engine's hook.

Outputs are checked with independent references: openai-harmony parses the tokens, and
jsonschema validates the JSON."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from openai_harmony import HarmonyEncodingName, Role, load_harmony_encoding

from oss_serve import LLM
from oss_serve.common.vocab import (
    CALL,
    CHANNEL,
    END,
    MESSAGE,
    RETURN,
    SPECIAL_TOKENS,
    START,
    VOCAB_SIZE,
    o200k_harmony,
    use_vocab_dir,
)
from oss_serve.workers.engine.sampling_params import InvalidRequestError
from oss_serve.workers.engine.structured_output_spec import (
    RESUME_ARG,
    SPEC_ARG,
    FunctionGrammar,
    StructuredOutputSpec,
)
from oss_serve.workers.runner.structured_output import (
    StructuredOutputProcessor,
    compile_spec,
    make_processor,
    sampling_params_from_args,
)

pytestmark = pytest.mark.unit
SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["ok", "color", "n"],
    "additionalProperties": False,
}
ARGS = {
    "type": "object",
    "properties": {"unit": {"enum": ["c", "f"]}},
    "required": ["unit"],
    "additionalProperties": False,
}
use_vocab_dir()  # openai-harmony reads the local vocabulary, never downloads
HARMONY = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


def _spec(functions: dict | None = None, **fields) -> StructuredOutputSpec:
    grammars = tuple(FunctionGrammar(n, json.dumps(s)) for n, s in (functions or {}).items())
    return StructuredOutputSpec(functions=grammars, **fields)


def _allowed(processor: StructuredOutputProcessor) -> set[int]:
    logits = torch.zeros(1, VOCAB_SIZE)
    StructuredOutputProcessor.apply_batch([processor], [0], [[]], logits)
    return set(torch.nonzero(logits[0] > -1e30).flatten().tolist())


def _random_run(spec: StructuredOutputSpec, seed: int, max_tokens: int = 300) -> list[int]:
    """Sample from random logits through the processor, as a random-weight model would."""
    generator = torch.Generator().manual_seed(seed)
    processor = make_processor(spec)
    out: list[int] = []
    for _ in range(max_tokens):
        logits = torch.randn(1, VOCAB_SIZE, generator=generator) * 3
        StructuredOutputProcessor.apply_batch([processor], [0], [out], logits)
        token = int(torch.multinomial(torch.softmax(logits[0], -1), 1, generator=generator))
        out.append(token)
        processor.accept_token(token)
        if token in (RETURN, CALL):
            break
    return out


def _messages(tokens: list[int]):
    return HARMONY.parse_messages_from_completion_tokens(tokens, Role.ASSISTANT)


@pytest.mark.parametrize("seed", range(6))
def test_random_logits_give_well_formed_harmony_with_a_schema_valid_final_answer(seed):
    tokens = _random_run(
        _spec(final_json_schema=json.dumps(SCHEMA), reasoning_token_budget=5), seed
    )
    assert tokens[-1] == RETURN
    messages = _messages(tokens)
    assert [m.channel for m in messages][-1] == "final"
    assert all(m.channel == "analysis" for m in messages[:-1])
    jsonschema.validate(json.loads(messages[-1].content[0].text), SCHEMA)


@pytest.mark.parametrize("seed", range(4))
def test_forced_function_call_is_a_parsable_call_of_that_function(seed):
    spec = _spec(
        functions={"get_weather": ARGS}, require_function_call=True, reasoning_token_budget=3
    )
    tokens = _random_run(spec, seed)
    assert tokens[-1] == CALL
    call = _messages(tokens)[-1]
    assert call.recipient == "functions.get_weather" and call.channel == "commentary"
    jsonschema.validate(json.loads(call.content[0].text), ARGS)


def test_reasoning_is_free_text_and_the_header_cannot_be_skipped():
    processor = make_processor(_spec(final_json_schema=json.dumps(SCHEMA)))
    assert _allowed(processor) == {CHANNEL}  # a header first, never JSON straight away
    for token in [CHANNEL, *o200k_harmony().encode_ordinary("analysis"), MESSAGE]:
        processor.accept_token(token)
    free = _allowed(processor)
    specials = set(SPECIAL_TOKENS.values())
    assert len(free - specials) == len(set(range(VOCAB_SIZE)) - specials)  # every text token
    assert free & specials == {END}  # ... and only <|end|> of the special ones
    processor.accept_token(END)
    assert _allowed(processor) == {START}  # sglang#31019: no JSON right after <|end|>


def test_json_strings_never_admit_special_tokens():
    processor = make_processor(_spec(final_json_schema=json.dumps({"type": "object"})))
    prefix = [CHANNEL, *o200k_harmony().encode_ordinary("final"), MESSAGE]
    for token in prefix + o200k_harmony().encode_ordinary('{"a": "text'):
        processor.accept_token(token)
    allowed = _allowed(processor)
    assert len(allowed) > 100_000 and not allowed & set(SPECIAL_TOKENS.values())


def test_resumed_processor_matches_one_fed_the_same_tokens():
    spec = _spec(final_json_schema=json.dumps(SCHEMA), reasoning_token_budget=5)
    emitted = _random_run(spec, seed=3)[:12]
    fed = make_processor(spec)
    for token in emitted:
        fed.accept_token(token)
    resumed = make_processor(spec, emitted)
    assert _allowed(resumed) == _allowed(fed) and not resumed.broken


def test_batch_masks_only_the_constrained_rows_and_forks_independently():
    spec = _spec(final_json_schema=json.dumps(SCHEMA))
    first = make_processor(spec)
    second = first.fork()
    second.accept_token(CHANNEL)
    logits = torch.zeros(3, VOCAB_SIZE)
    StructuredOutputProcessor.apply_batch([first, second], [0, 2], [[], [CHANNEL]], logits)
    assert torch.count_nonzero(logits[1]) == 0  # the unconstrained request in between
    assert set(torch.nonzero(logits[0] > -1e30).flatten().tolist()) == {CHANNEL}
    assert CHANNEL not in set(torch.nonzero(logits[2] > -1e30).flatten().tolist())


def test_grammars_differing_only_in_names_do_not_share_a_cache_entry():
    a = compile_spec(_spec(functions={"a": ARGS}, require_function_call=True))
    b = compile_spec(_spec(functions={"b": ARGS}, require_function_call=True))
    assert a is not b


def test_bad_schemas_and_contradictory_specs_are_invalid_requests():
    with pytest.raises(InvalidRequestError):
        compile_spec(_spec(final_json_schema="{not json"))
    with pytest.raises(InvalidRequestError):
        compile_spec(_spec(require_function_call=True))  # a call required, no function given
    with pytest.raises(InvalidRequestError):
        compile_spec(_spec(final_json_schema=json.dumps({"type": "string", "pattern": "(("})))


def test_the_engine_applies_the_grammar_through_its_logits_processor_hook():
    llm = LLM(
        "gpt-oss-tiny", dtype="float32", device="cpu", max_model_len=512, kv_cache_memory=4 << 20
    )
    spec = _spec(final_json_schema=json.dumps(SCHEMA), reasoning_token_budget=2)
    constrained = [
        sampling_params_from_args(
            {
                "temperature": 1.0,
                "seed": seed,
                "max_tokens": 120,
                "stop_token_ids": [RETURN, CALL],
                SPEC_ARG: spec,
                RESUME_ARG: [],
            }
        )
        for seed in range(2)
    ]
    free = sampling_params_from_args({"temperature": 1.0, "seed": 9, "max_tokens": 8})
    prompt = {"prompt_token_ids": list(range(1000, 1030))}
    outputs = llm.generate([prompt] * 3, [*constrained, free])  # one batch, mixed
    for output in outputs[:2]:
        tokens = list(output.outputs[0].token_ids)
        final = _messages(tokens)[-1]
        assert final.channel == "final"
        jsonschema.validate(json.loads(final.content[0].text), SCHEMA)
    assert len(outputs[2].outputs[0].token_ids) == 8
