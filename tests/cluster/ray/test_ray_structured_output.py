"""Structured outputs on Ray TP/EP replicas: a json_schema answer and a tool call (the
replica host's xgrammar processors) give the very tokens the single-process engine gives
with the same spec, the grammar is applied on the ranks (openai-harmony parses the turn,
jsonschema validates it), a resumed grammar request continues exactly, and a request whose
processor cannot reach the ranks fails alone while the replica keeps serving.

One local Ray runtime for the module; gpt-oss-tiny with the real vocabulary (grammars
use harmony token ids) and weights large enough for clear greedy argmaxes.
"""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
import pytest_asyncio
from openai_harmony import HarmonyEncodingName, Role, load_harmony_encoding

from oss_serve import LLM
from oss_serve.cluster.ray.engine import RayEngine
from oss_serve.cluster.replica.sampling import engine_sampling_args
from oss_serve.common.vocab import o200k_harmony, use_vocab_dir
from oss_serve.protos import inference_pb2
from oss_serve.workers.engine.sampling_params import InvalidRequestError, SamplingParams
from oss_serve.workers.model.config import PRESETS
from oss_serve.workers.runner.structured_output import sampling_params_from_args
from tests.cluster.ray.ray_engines import RayEnginePool, write_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = PRESETS["gpt-oss-tiny"]  # the real o200k_harmony vocabulary
ENGINE_ARGS = {
    "dtype": "float32",
    "device": "cpu",
    "experts_format": "dense",
    "block_size": 16,
    "kv_cache_memory": 4 << 20,
    "max_model_len": 256,
    "skip_tokenizer_init": True,
}
REPLICAS = {"ep2": (1, 2, False), "tp2": (2, 1, False)}  # name -> RayEnginePool layout
ANSWER = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green"]}},
    "required": ["ok", "color"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "object",
    "properties": {"unit": {"enum": ["c", "f"]}},
    "required": ["unit"],
    "additionalProperties": False,
}
RESUME_AFTER = 9  # tokens of the json answer emitted before its "replica died"
use_vocab_dir()
HARMONY = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


def _spec(**fields) -> inference_pb2.StructuredOutput:
    functions = fields.pop("functions", {})
    spec = inference_pb2.StructuredOutput(**fields)
    for name, schema in functions.items():
        spec.functions.add(name=name, parameters_json_schema=json.dumps(schema))
    return spec


JSON_SPEC = _spec(final_json_schema=json.dumps(ANSWER), reasoning_token_budget=3)
TOOL_SPEC = _spec(functions={"get_weather": WEATHER}, require_function_call=True)


def _params(
    spec: inference_pb2.StructuredOutput | None, resume: list[int] | None = None
) -> SamplingParams:
    """As the replica host builds them from a queued request (the plain spec, then the
    grammar processor)."""
    sampling = inference_pb2.SamplingParams(temperature=0, max_tokens=60, structured_output=spec)
    return sampling_params_from_args(engine_sampling_args(sampling, resume or []))


def _prompt(question: str) -> list[int]:
    text = f"<|start|>user<|message|>{question}<|end|><|start|>assistant"
    return o200k_harmony().encode(text, allowed_special="all")


REQUESTS = {  # name -> (prompt, spec)
    "json": (_prompt("Is the sky red or green?"), JSON_SPEC),
    "tool": (_prompt("What is the weather in Paris?"), TOOL_SPEC),
    "plain": (_prompt("Hello"), None),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(CONFIG, tmp_path_factory.mktemp("tiny-real-vocab"), seed=3)


@pytest.fixture(scope="module")
def reference(checkpoint) -> dict[str, list[int]]:
    """The single-process engine's tokens for each request (one batch)."""
    with LLM(str(checkpoint), **ENGINE_ARGS) as llm:
        outputs = llm.generate(
            [{"prompt_token_ids": prompt} for prompt, _ in REQUESTS.values()],
            [_params(spec) for _, spec in REQUESTS.values()],
        )
    return {name: list(o.outputs[0].token_ids) for name, o in zip(REQUESTS, outputs, strict=True)}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def replicas(ray_runtime, checkpoint):
    pool = RayEnginePool(checkpoint, ENGINE_ARGS, REPLICAS)
    yield pool.get
    await pool.shutdown()


async def _generate(
    replica: RayEngine,
    request_id: str,
    prompt: list[int],
    params: SamplingParams,
    resume: list[int] | None = None,
) -> list[int]:
    tokens: list[int] = []
    async for delta in replica.generate(
        request_id, prompt, params, resume_output_token_ids=resume or []
    ):
        tokens += delta.outputs[0].token_ids
    return tokens


def _assert_grammar_was_followed(name: str, tokens: list[int]) -> None:
    """What a random model never writes unconstrained: a schema-valid answer or call."""
    last = HARMONY.parse_messages_from_completion_tokens(tokens, Role.ASSISTANT)[-1]
    if name == "json":
        assert last.channel == "final"
        jsonschema.validate(json.loads(last.content[0].text), ANSWER)
    else:
        assert last.recipient == "functions.get_weather"
        jsonschema.validate(json.loads(last.content[0].text), WEATHER)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("name", list(REPLICAS))
async def test_grammar_requests_on_a_ray_replica_give_the_single_process_tokens(
    replicas, reference, name
):
    replica = await replicas(name)
    emitted = reference["json"][:RESUME_AFTER]
    got, resumed = await asyncio.gather(
        asyncio.gather(
            *(
                _generate(replica, f"{name}-{kind}", prompt, _params(spec))
                for kind, (prompt, spec) in REQUESTS.items()
            )
        ),
        _generate(
            replica,
            f"{name}-resumed",
            REQUESTS["json"][0],
            _params(JSON_SPEC, resume=emitted),
            resume=emitted,
        ),
    )
    assert dict(zip(REQUESTS, got, strict=True)) == reference
    assert emitted + resumed == reference["json"]  # the ranks replayed the emitted tokens
    for kind in ("json", "tool"):
        _assert_grammar_was_followed(kind, reference[kind])
    health = await replica.health()
    assert all(h.divergent_tokens == 0 for h in health)  # every rank's grammar agreed
    # and the replica keeps serving
    assert await _generate(replica, f"{name}-after", *_plain()) == reference["plain"]


def _plain() -> tuple[list[int], SamplingParams]:
    return REQUESTS["plain"][0], _params(None)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_request_whose_processor_cannot_reach_the_ranks_fails_alone(replicas, reference):
    replica = await replicas("ep2")
    bad = SamplingParams(temperature=0, max_tokens=4, logits_processors=[lambda ids, row: row])
    running = asyncio.create_task(_generate(replica, "neighbour", *_plain()))
    with pytest.raises(InvalidRequestError, match="recipe") as refused:
        await _generate(replica, "unportable", [1, 2, 3], bad)
    assert refused.value.field == "logits_processors"
    assert await running == reference["plain"]
    assert replica.is_running
    assert (
        await _generate(replica, "json-after", REQUESTS["json"][0], _params(JSON_SPEC))
        == (reference["json"])
    )
