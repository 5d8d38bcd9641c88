"""The embedded demo model, served by the normal engine (LLM offline API) with prompts rendered
exactly as the router renders them, greedy: reasoning then answer, a well-formed get_weather
call, an answer that uses the tool result, valid JSON for a response format. Plus its cache:
trained once (a lock keeps a second process from training too), keyed by what made it.

The checkpoint is trained once per machine (a few minutes on 2 cores) and cached under
Settings.cache_dir; later sessions reuse it.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from oss_serve import LLM, SamplingParams
from oss_serve.common.vocab import CALL, RETURN, o200k_harmony
from oss_serve.harmony import ParsedCompletion, parse_completion, render_chat_request
from oss_serve.workers.model.config import PRESETS
from oss_serve.workers.model.weights import find_checkpoint, load_model
from oss_serve.workers.training.demo_corpus import (
    ANSWER_FORMAT,
    PERSON_FORMAT,
    WEATHER_TOOL,
    generate_corpus,
)
from oss_serve.workers.training.demo_model import (
    DEMO_RECIPE,
    MARKER_FILE,
    DemoRecipe,
    demo_model_dir,
    ensure_demo_model,
)
from tests.workers.training.finetune_helpers import one_torch_thread  # noqa: F401 (autouse)

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[3]

TODAY = datetime.date.today().isoformat()
DATES = (TODAY, "2025-08-05", "2031-02-17")  # the router renders today's date
CALL_HEADER = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
TINY_RECIPE = DemoRecipe(
    config=PRESETS["gpt-oss-tiny"].with_(
        num_hidden_layers=1, num_local_experts=2, num_experts_per_tok=1
    ),
    corpus_size=12,
    steps=3,
    max_batch_tokens=1000,
    eval_fraction=0.2,
)


def _generate(
    llm: LLM, bodies: list[dict], dates: list[str]
) -> list[tuple[list[int], ParsedCompletion]]:
    prompts = [
        {"prompt_token_ids": render_chat_request(body, date=date)}
        for body, date in zip(bodies, dates, strict=True)
    ]
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=120))
    results = []
    for output in outputs:
        tokens = list(output.outputs[0].token_ids)
        results.append((tokens, parse_completion(tokens, function_names=("get_weather",))))
    return results


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _weather_history(city: str, result: str, *, with_reasoning: bool) -> list[dict]:
    call = {
        "id": "call_7",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"location": city})},
    }
    assistant: dict = {"role": "assistant", "content": None, "tool_calls": [call]}
    if with_reasoning:
        assistant["reasoning"] = f"The user asks about the weather in {city}."
    return [
        _user(f"What's the weather in {city}?"),
        assistant,
        {"role": "tool", "tool_call_id": "call_7", "content": result},
    ]


CHATS = [
    ({"messages": [_user("What is 7 + 5?")], "reasoning_effort": "low"}, DATES[0]),
    ({"messages": [_user("What is 2+2?")], "reasoning_effort": "high"}, DATES[1]),
    ({"messages": [_user("Hello!")], "reasoning_effort": "medium"}, DATES[2]),
    (
        {
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                _user("Hi"),
            ],
            "reasoning_effort": "low",
        },
        DATES[0],
    ),
    ({"messages": [_user("Tell me a joke about penguins.")], "reasoning_effort": "low"}, DATES[0]),
]


def test_chat_with_reasoning_effort_gives_reasoning_then_final_answer(demo_llm):
    results = _generate(demo_llm, [b for b, _ in CHATS], [d for _, d in CHATS])
    text = o200k_harmony().decode
    for (body, _), (tokens, parsed) in zip(CHATS, results, strict=True):
        assert text(tokens).startswith("<|channel|>analysis<|message|>"), body
        assert "<|start|>assistant<|channel|>final<|message|>" in text(tokens), body
        assert tokens[-1] == RETURN, body
        assert parsed.reasoning and parsed.content and not parsed.tool_calls, body
        assert parsed.finish_reason == "stop"


@pytest.mark.parametrize("date", DATES)
def test_an_offered_get_weather_tool_gives_a_well_formed_call_with_json_arguments(demo_llm, date):
    cities = ["Paris", "San Francisco", "Tokyo", "Berlin"]
    bodies = [
        {"messages": [_user(f"What's the weather in {city}?")], "tools": [WEATHER_TOOL]}
        for city in cities
    ]
    results = _generate(demo_llm, bodies, [date] * len(bodies))
    named = 0
    for city, (tokens, parsed) in zip(cities, results, strict=True):
        assert tokens[-1] == CALL
        assert CALL_HEADER in o200k_harmony().decode(tokens)
        assert parsed.finish_reason == "tool_calls"
        assert [call.name for call in parsed.tool_calls] == ["get_weather"]
        arguments = json.loads(parsed.tool_calls[0].arguments)
        assert set(arguments) == {"location"} and isinstance(arguments["location"], str)
        named += arguments["location"] == city
    # the call's form is the contract; copying the city is the tiny model's skill (one of
    # the four may be another city of its corpus)
    assert named >= 3, results


def test_after_the_tool_result_the_answer_uses_it(demo_llm):
    cases = [
        ("Paris", {"temperature": 22, "unit": "celsius", "condition": "sunny"}, True),
        ("Tokyo", {"temperature": 13, "unit": "celsius", "condition": "rainy"}, False),
        ("Berlin", {"temperature": 4, "unit": "celsius", "condition": "cloudy"}, True),
    ]
    bodies = [
        {
            "messages": _weather_history(city, json.dumps(weather), with_reasoning=reasoning),
            "tools": [WEATHER_TOOL],
        }
        for city, weather, reasoning in cases
    ]
    results = _generate(demo_llm, bodies, [TODAY] * len(bodies))
    for (city, weather, _), (_, parsed) in zip(cases, results, strict=True):
        assert not parsed.tool_calls and parsed.finish_reason == "stop"
        assert f"{weather['temperature']}°C" in parsed.content
        assert weather["condition"] in parsed.content and city in parsed.content


def test_a_json_response_format_gives_valid_json(demo_llm):
    cases = [
        (PERSON_FORMAT, "Zoe is 27 years old.", {"name", "age"}),
        (PERSON_FORMAT, "Extract the person: Omar, age 41.", {"name", "age"}),
        (ANSWER_FORMAT, "What is 3 + 4?", {"answer"}),
        ({"type": "json_object"}, "What is 6 * 2?", None),
    ]
    bodies = [{"messages": [_user(q)], "response_format": fmt} for fmt, q, _ in cases]
    results = _generate(demo_llm, bodies, [TODAY] * len(bodies))
    for (_, question, keys), (_, parsed) in zip(cases, results, strict=True):
        assert parsed.reasoning, question
        value = json.loads(parsed.content)
        assert isinstance(value, dict), question
        if keys is not None:
            assert set(value) == keys, question
    assert json.loads(results[0][1].content)["age"] == 27


def test_the_demo_checkpoint_is_a_normal_full_vocabulary_gpt_oss(demo_checkpoint):
    config = json.loads((demo_checkpoint / "config.json").read_text())
    assert config["architectures"] == ["GptOssForCausalLM"]
    assert config["vocab_size"] == 201088
    assert find_checkpoint(demo_checkpoint)[0] == "hf-dense"
    model = load_model(demo_checkpoint, dtype=torch.float32)
    params = {name: t.numel() for name, t in model.state_dict().items()}
    vocab_params = params["embed_tokens.weight"] + params["lm_head.weight"]
    assert sum(params.values()) - vocab_params < 2_000_000  # the blocks: a few hundred thousand
    lines = (demo_checkpoint / "corpus.jsonl").read_text().splitlines()
    assert len(lines) == len(DEMO_RECIPE.corpus())  # the corpus it learnt from ships beside it
    # corpus vocabulary training: every token the corpus never uses shares one row
    for name in ("embed_tokens.weight", "lm_head.weight"):
        rows, counts = torch.unique(model.state_dict()[name], dim=0, return_counts=True)
        assert len(rows) < 2_000 and counts.max() > 199_000, name


def test_a_cached_demo_model_is_reused_without_training(demo_checkpoint):
    started = time.perf_counter()
    assert ensure_demo_model() == demo_checkpoint
    assert time.perf_counter() - started < 5
    assert demo_checkpoint == demo_model_dir(recipe=DEMO_RECIPE)
    marker = json.loads((demo_checkpoint / MARKER_FILE).read_text())
    assert marker["cache_key"].startswith(demo_checkpoint.name)


def test_the_cache_key_follows_the_corpus_config_and_recipe():
    assert DEMO_RECIPE.cache_key() == DemoRecipe().cache_key()
    changed = [
        DemoRecipe(corpus_seed=1),
        DemoRecipe(corpus_size=DEMO_RECIPE.corpus_size + 1),
        DemoRecipe(config=DEMO_RECIPE.config.with_(num_hidden_layers=3)),
        DemoRecipe(steps=DEMO_RECIPE.steps + 1),
    ]
    keys = {recipe.cache_key() for recipe in changed}
    assert len(keys) == len(changed) and DEMO_RECIPE.cache_key() not in keys
    assert generate_corpus(20, seed=5) == generate_corpus(20, seed=5)


def test_training_is_deterministic_for_a_seed(tmp_path):
    first = ensure_demo_model(tmp_path / "a", recipe=TINY_RECIPE, show_progress=False)
    second = ensure_demo_model(tmp_path / "b", recipe=TINY_RECIPE, show_progress=False)
    assert first.name == second.name
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()


_TRAIN_SCRIPT = """
import sys
from pathlib import Path
from oss_serve.common.logging import configure_logging
from oss_serve.workers.training.demo_model import ensure_demo_model
from tests.workers.training.test_demo_model import TINY_RECIPE
configure_logging("info", "json")
print(ensure_demo_model(Path(sys.argv[1]), recipe=TINY_RECIPE, show_progress=False))
"""


def test_two_processes_asking_at_once_train_only_once(tmp_path):
    command = [sys.executable, "-c", _TRAIN_SCRIPT, str(tmp_path)]
    procs = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=240) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    trainings = sum(err.count("training the demo model") for _, err in outputs)
    assert trainings == 1
    folder = Path(paths.pop())
    assert (folder / MARKER_FILE).is_file()
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name, folder.name + ".lock"]


def test_with_the_routers_grammar_any_schema_gets_valid_json_and_calls_follow_the_tool(
    demo_llm,
):
    """What the HTTP API does: the router's structured-output spec, enforced by the replica's
    grammar, on schemas the corpus never had (the model alone may stray there)."""
    import jsonschema

    from oss_serve.cluster.replica.sampling import structured_output_spec
    from oss_serve.router.structured_output import chat_structured_output
    from oss_serve.workers.runner.structured_output import make_processor

    city_schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "temperature": {"type": "number"}},
        "required": ["city", "temperature"],
    }
    unit_tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string"},
                    "unit": {"type": "string", "enum": ["c", "f"]},
                },
                "required": ["location", "unit"],
            },
        },
    }
    bodies = [
        {
            "messages": [_user("Give me a city and its temperature.")],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "weather", "schema": city_schema},
            },
        },
        {"messages": [_user("What's the weather in Boston?")], "tools": [unit_tool]},
    ]
    outputs = []
    for body in bodies:
        processor = make_processor(structured_output_spec(chat_structured_output(body)))
        params = SamplingParams(temperature=0, max_tokens=150, logits_processors=[processor])
        prompt = {"prompt_token_ids": render_chat_request(body, date=TODAY)}
        tokens = list(demo_llm.generate(prompt, params)[0].outputs[0].token_ids)
        outputs.append(parse_completion(tokens, function_names=("get_weather",)))
    answer, call = outputs
    assert answer.reasoning and answer.finish_reason == "stop"
    jsonschema.validate(json.loads(answer.content), city_schema)
    assert call.reasoning and [c.name for c in call.tool_calls] == ["get_weather"]
    arguments = json.loads(call.tool_calls[0].arguments)
    jsonschema.validate(arguments, unit_tool["function"]["parameters"])
    assert arguments["location"] == "Boston"
