"""The engine serving LoRA adapters: one batch mixing adapters and the base model gives each
request what the merged model (finetune's merge) gives it; at most max_loras adapters per
step; KV blocks keyed by adapter; bad adapters refused while the engine keeps serving."""

from __future__ import annotations

import json

import pytest
import torch

from oss_serve.workers.engine.engine_core import EngineCore
from oss_serve.workers.engine.llm import LLM
from oss_serve.workers.engine.sampling_params import InvalidRequestError, SamplingParams
from oss_serve.workers.lora.peft_format import ADAPTER_CONFIG, AdapterError, write_adapter
from oss_serve.workers.lora.request import LoRARequest
from oss_serve.workers.model.checkpoint import save_checkpoint
from tests.workers.lora.lora_helpers import SMALL, base_model, trained_adapter

pytestmark = pytest.mark.unit
TOLERANCE = 1e-4
ENGINE = {"dtype": "float32", "device": "cpu", "skip_tokenizer_init": True, "num_kv_blocks": 256}
ADAPTERS = {  # name -> (rank, alpha, targets)
    "alpha": (4, 8.0, ("attention", "experts")),
    "beta": (2, 4.0, ("attention",)),
    "gamma": (8, 8.0, ("experts",)),
}


def _save_model(model, folder):
    state = {name: t.detach() for name, t in model.state_dict().items()}
    save_checkpoint(state, SMALL, folder, format="hf-dense")
    return str(folder)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(base folder, {name: adapter folder}, {name: merged checkpoint folder})."""
    root = tmp_path_factory.mktemp("lora-engine")
    base = base_model()
    adapters, merged = {}, {}
    for seed, (name, (rank, alpha, targets)) in enumerate(ADAPTERS.items(), start=1):
        adapter, merged_model = trained_adapter(
            base, rank=rank, alpha=alpha, targets=targets, seed=seed
        )
        write_adapter(root / name, adapter)
        adapters[name] = str(root / name)
        merged[name] = _save_model(merged_model, root / f"{name}-merged")
    return _save_model(base, root / "base"), adapters, merged


def _prompts(count: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(5)
    return [torch.randint(3, 300, (9 + 5 * i,), generator=generator).tolist() for i in range(count)]


def _scored(output) -> list[float]:
    """The prompt tokens' and the generated tokens' log-probabilities."""
    prompt = [
        entry[token].logprob
        for entry, token in zip(
            output.prompt_logprobs[1:], output.prompt_token_ids[1:], strict=True
        )
    ]
    completion = output.outputs[0]
    generated = [
        entry[t].logprob for entry, t in zip(completion.logprobs, completion.token_ids, strict=True)
    ]
    return prompt + generated


PARAMS = SamplingParams(temperature=0, max_tokens=6, logprobs=0, prompt_logprobs=0, ignore_eos=True)


def test_a_batch_mixing_adapters_and_the_base_model_matches_each_merged_model(checkpoints):
    base, adapters, merged = checkpoints
    who = ["alpha", None, "beta", "gamma", "alpha", None, "gamma"]
    prompts = _prompts(len(who))
    llm = LLM(base, enable_lora=True, max_loras=2, max_lora_rank=8, **ENGINE)
    requests = {
        name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(adapters.items())
    }
    steps = _record_steps(llm.llm_engine)
    mixed = llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        PARAMS,
        lora_request=[requests.get(w) for w in who],
    )
    assert max(len(slots) for slots in steps) == 2  # three adapters, never more than two a step
    assert any(len(slots) == 2 for slots in steps)
    references = {None: LLM(base, **ENGINE), **{n: LLM(f, **ENGINE) for n, f in merged.items()}}
    for name, prompt, output in zip(who, prompts, mixed, strict=True):
        (expected,) = references[name].generate([{"prompt_token_ids": prompt}], PARAMS)
        assert output.outputs[0].token_ids == expected.outputs[0].token_ids, name
        diff = max(abs(a - b) for a, b in zip(_scored(output), _scored(expected), strict=True))
        assert diff <= TOLERANCE, f"{name}: max |logprob diff| {diff}"


def _record_steps(core: EngineCore) -> list[set[int]]:
    """The distinct adapter slots of every step the executor runs."""
    steps: list[set[int]] = []
    execute = core.executor.execute_model

    def recording(scheduled):
        states = core.executor.runner.states.states
        result = execute(scheduled)
        slots = {states[r].lora_slot for r in scheduled.num_scheduled_tokens if r in states}
        steps.append({s for s in slots if s >= 0})
        return result

    core.executor.execute_model = recording
    return steps


def test_the_prefix_cache_never_shares_blocks_between_adapters(checkpoints):
    base, adapters, _ = checkpoints
    llm = LLM(base, enable_lora=True, max_loras=2, max_lora_rank=8, **ENGINE)
    prompt = {"prompt_token_ids": _prompts(1)[0] * 4}
    params = SamplingParams(temperature=0, max_tokens=1)
    alpha = LoRARequest("alpha", 1, adapters["alpha"])
    first, again = (llm.generate([prompt], params, lora_request=alpha)[0] for _ in range(2))
    assert first.num_cached_tokens == 0 and again.num_cached_tokens > 0
    other = llm.generate([prompt], params, lora_request=LoRARequest("beta", 2, adapters["beta"]))[0]
    plain = llm.generate([prompt], params)[0]
    assert other.num_cached_tokens == 0 and plain.num_cached_tokens == 0


def test_a_corrupt_or_oversized_adapter_is_refused_and_the_engine_keeps_serving(
    checkpoints, tmp_path
):
    base, adapters, _ = checkpoints
    core = EngineCore.from_config(
        LLM(base, enable_lora=True, max_loras=1, max_lora_rank=4, **ENGINE).config
    )
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / ADAPTER_CONFIG).write_text(json.dumps({"r": 2, "lora_alpha": 2}))
    (tmp_path / "corrupt" / "adapter_model.safetensors").write_bytes(b"\x13" * 64)
    with pytest.raises(AdapterError, match="not a readable safetensors"):
        core.add_lora("broken", str(tmp_path / "corrupt"))
    with pytest.raises(AdapterError, match="rank 8, above max_lora_rank=4"):
        core.add_lora("big", adapters["gamma"])
    with pytest.raises(InvalidRequestError, match="max_lora_rank"):
        core.add_request(
            "r0", [5, 6, 7], PARAMS, lora_request=LoRARequest("big", 9, adapters["gamma"])
        )
    assert core.list_loras() == []
    served = core.add_lora("beta", adapters["beta"])
    assert core.list_loras() == ["beta"] and core.lora_request("beta") == served
    core.add_request("r1", [5, 6, 7], SamplingParams(max_tokens=3), lora_request=served)
    while core.has_unfinished_requests():
        core.step()
    assert core.held_loras() == ["beta"]
    assert core.remove_lora("beta") and core.held_loras() == [] and not core.remove_lora("beta")
    with pytest.raises(AdapterError, match="under a new name"):  # its cached KV is keyed by name
        core.add_lora("beta", adapters["alpha"])
    assert core.add_lora("beta", adapters["beta"]).lora_int_id != served.lora_int_id
