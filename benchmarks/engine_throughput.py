"""Engine vs transformers: output tokens/s at several concurrencies, same checkpoint, same run.

A small gpt-oss config (the real 201088-token vocabulary, ~56M parameters) with random
weights is written by transformers' save_pretrained; both sides load that folder. Each
concurrency level is one wave of requests with mixed prompt lengths and a fixed number of
output tokens (EOS masked on both sides). Baselines: transformers `generate` on static
left-padded batches of the whole wave, and its continuous-batching `generate_batch` when
it runs on this machine. Reports tokens/s, the ratio to transformers' best, and the
engine's CPU time per step outside the model (scheduling, input preparation, sampling).

    .venv/bin/python -m oss_serve.benchmarks.engine_throughput --concurrency 1 16 64
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

SMALL_CONFIG: dict[str, Any] = {
    "vocab_size": 201088,
    "hidden_size": 128,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "num_local_experts": 8,
    "num_experts_per_tok": 4,
    "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"] * 2,
    "max_position_embeddings": 4096,
    "rope_parameters": {
        "rope_type": "yarn",
        "rope_theta": 150000.0,
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": 4096,
    },
    "pad_token_id": 199999,
    "eos_token_id": 200002,
}


@dataclass
class Result:
    system: str
    concurrency: int
    output_tokens: int
    seconds: float
    step_overhead_ms: float | None = None  # engine only: CPU time per step outside the model

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


def write_checkpoint(folder: Path, seed: int, config: dict[str, Any] | None = None) -> Any:
    """A gpt-oss checkpoint with random fp32 weights, written by transformers (the model)."""
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(seed)
    model = GptOssForCausalLM(GptOssConfig(**(config or SMALL_CONFIG))).float().eval()
    model.save_pretrained(folder)
    return model


def make_prompts(
    count: int, seed: int, min_len: int, max_len: int, max_token_id: int = 199998
) -> list[list[int]]:
    rng = random.Random(seed)
    return [
        [rng.randrange(0, max_token_id) for _ in range(rng.randint(min_len, max_len))]
        for _ in range(count)
    ]


def run_engine(folder: Path, prompts: list[list[int]], output_len: int) -> Result:
    from oss_serve.workers.engine.llm import LLM
    from oss_serve.workers.engine.sampling_params import SamplingParams

    llm = LLM(str(folder), dtype="float32", device="cpu", max_model_len=1024,
              kv_cache_memory=512 << 20, max_num_batched_tokens=4096,
              skip_tokenizer_init=True)  # fmt: skip
    params = SamplingParams(temperature=0, max_tokens=output_len, min_tokens=output_len,
                            detokenize=False)  # fmt: skip
    llm.generate({"prompt_token_ids": prompts[0][:8]}, params.clone(max_tokens=2, min_tokens=2))
    core = llm.llm_engine
    runner = core.executor.runner  # type: ignore[attr-defined]
    before_stats, before_timings = core.stats(), asdict(runner.timings)
    started = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    seconds = time.perf_counter() - started
    stats, timings = core.stats(), asdict(runner.timings)
    steps = stats.num_steps - before_stats.num_steps
    overhead_s = (stats.scheduler_time_s - before_stats.scheduler_time_s) + (
        timings["prepare_s"] - before_timings["prepare_s"]
    )
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return Result("oss-serve engine", len(prompts), tokens, seconds, 1000 * overhead_s / steps)


def run_hf_static(model: Any, prompts: list[list[int]], output_len: int) -> Result:
    longest = max(len(p) for p in prompts)
    pad = SMALL_CONFIG["pad_token_id"]
    ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    started = time.perf_counter()
    with torch.no_grad():
        generated = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=output_len,
            min_new_tokens=output_len, do_sample=False, pad_token_id=pad,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    return Result("transformers generate (static batch)", len(prompts),
                  (generated.shape[1] - longest) * len(prompts), seconds)  # fmt: skip


def run_hf_continuous(model: Any, prompts: list[list[int]], output_len: int) -> Result:
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=output_len, min_new_tokens=output_len,
                              do_sample=False, eos_token_id=-1,
                              pad_token_id=SMALL_CONFIG["pad_token_id"])  # fmt: skip
    started = time.perf_counter()
    with torch.no_grad():
        outputs = model.generate_batch(prompts, generation_config=config, warmup=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(o.generated_tokens) for o in outputs.values())
    return Result("transformers generate_batch (continuous)", len(prompts), tokens, seconds)


def measure(runner: Callable[[], Result], failures: dict[str, str], name: str) -> Result | None:
    try:
        return runner()
    except Exception as exc:  # a baseline that does not run on this machine is reported, not fatal
        failures[name] = f"{type(exc).__name__}: {exc}"[:300]
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, nargs=2, default=[32, 160])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: list[Result] = []
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = write_checkpoint(folder, args.seed)
        params = sum(p.numel() for p in model.parameters())
        print(f"checkpoint: {params / 1e6:.1f}M params, vocab {SMALL_CONFIG['vocab_size']}")
        for concurrency in args.concurrency:
            prompts = make_prompts(concurrency, args.seed + concurrency, *args.prompt_len)
            for name, run in (
                ("engine", partial(run_engine, folder)),
                ("hf-static", partial(run_hf_static, model)),
                ("hf-continuous", partial(run_hf_continuous, model)),
            ):
                result = measure(
                    partial(run, prompts, args.output_len), failures, f"{name}@{concurrency}"
                )
                if result is not None:
                    results.append(result)
                    print(
                        f"  c={concurrency:<3} {result.system:<42} {result.tokens_per_s:9.1f} tok/s"
                    )
    report(results, failures, args.json)


def report(results: list[Result], failures: dict[str, str], json_path: Path | None) -> None:
    print("\n| concurrency | system | output tok/s | vs transformers' best | engine CPU ms/step |")
    print("| --- | --- | --- | --- | --- |")
    rows = []
    for concurrency in sorted({r.concurrency for r in results}):
        level = [r for r in results if r.concurrency == concurrency]
        baseline = max((r.tokens_per_s for r in level if r.step_overhead_ms is None), default=None)
        for r in level:
            ratio = f"{r.tokens_per_s / baseline:.2f}x" if baseline else "-"
            overhead = f"{r.step_overhead_ms:.2f}" if r.step_overhead_ms is not None else ""
            print(f"| {concurrency} | {r.system} | {r.tokens_per_s:.1f} | {ratio} | {overhead} |")
            rows.append({**asdict(r), "tokens_per_s": r.tokens_per_s, "ratio": ratio})
    for name, error in failures.items():
        print(f"not measured: {name}: {error}")
    if json_path is not None:
        json_path.write_text(json.dumps({"results": rows, "failures": failures}, indent=2))


if __name__ == "__main__":
    main()
