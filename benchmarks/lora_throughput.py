"""Serving many LoRA adapters on one engine: output tokens/s with k distinct adapters per batch
(k = 1, 4, 16 by default) against the base model alone, same engine, same run.

A gpt-oss-shaped model with random weights (a small one by default, so that it runs on a
CPU; `--model` takes a preset or a checkpoint folder) and 16 random PEFT adapters of one
rank. Each load point is a wave of `--requests` requests with the same prompts and output
length (EOS masked); request i uses adapter i mod k, so every step mixes k adapters
(max_loras = the largest k). After one warm-up wave, the points run in interleaved rounds
(`--repeats`) and each reports its median wave, so a busy moment of a shared machine does
not land on one point only.

    .venv/bin/python -m oss_serve.benchmarks.lora_throughput --adapters 1 4 16 \\
        --output benchmarks/results/lora/cpu-small
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from oss_serve.workers.engine.llm import LLM
from oss_serve.workers.engine.sampling_params import SamplingParams
from oss_serve.workers.lora.peft_format import write_adapter
from oss_serve.workers.lora.request import LoRARequest
from oss_serve.workers.lora.synthetic import random_adapter
from oss_serve.workers.model.checkpoint import save_checkpoint
from oss_serve.workers.model.config import PRESETS, ModelConfig, alternating_layer_types
from oss_serve.workers.model.model import GptOss
from oss_serve.workers.model.weights import init_random_weights

SMALL = ModelConfig(
    vocab_size=4096,  # small, so that the unembedding does not hide the layers' cost
    hidden_size=256,
    intermediate_size=256,
    num_hidden_layers=4,
    layer_types=alternating_layer_types(4),
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=32,
    num_local_experts=8,
    num_experts_per_tok=4,
    max_position_embeddings=4096,
)
TARGETS = ("attention", "all")


@dataclass
class LoadPoint:
    adapters: int  # distinct adapters in the wave (0 = the base model only)
    requests: int
    output_tokens: int
    seconds: float

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


def _model_folder(model: str | None, folder: Path) -> tuple[str, ModelConfig]:
    if model is not None and model not in PRESETS:
        from oss_serve.workers.model.config import load_config

        return model, load_config(model)
    config = PRESETS[model] if model else SMALL
    base = GptOss(config, experts_format="dense", dtype=torch.float32)
    init_random_weights(base, seed=0)
    save_checkpoint(base, config, folder, format="hf-dense")
    return str(folder), config


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, config = _model_folder(args.model, Path(tmp) / "base")
        largest = max(args.adapters)
        loras = []
        for index in range(largest):
            folder = Path(tmp) / f"adapter-{index}"
            adapter = random_adapter(
                config, rank=args.rank, alpha=float(args.rank), seed=index,
                experts=args.targets == "all", std=0.02,
            )  # fmt: skip
            write_adapter(folder, adapter)
            loras.append(LoRARequest(f"adapter-{index}", index + 1, str(folder)))
        llm = LLM(
            model, dtype=args.dtype, device=args.device, skip_tokenizer_init=True,
            enable_lora=True, max_loras=largest, max_lora_rank=args.rank,
            max_num_seqs=args.requests, max_model_len=args.prompt_len + args.output_len + 16,
            enable_prefix_caching=False,
        )  # fmt: skip
        generator = torch.Generator().manual_seed(1)
        prompts = [
            {"prompt_token_ids": torch.randint(0, config.vocab_size, (args.prompt_len,), generator=generator).tolist()}
            for _ in range(args.requests)
        ]  # fmt: skip
        params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
        _wave(llm, prompts, params, loras, largest)  # warm-up, not reported
        waves: dict[int, list[LoadPoint]] = {k: [] for k in [0, *args.adapters]}
        for _ in range(args.repeats):  # interleaved, so that a busy moment hits every k alike
            for adapters, runs in waves.items():
                runs.append(_wave(llm, prompts, params, loras, adapters))
    median = [sorted(runs, key=lambda p: p.seconds)[len(runs) // 2] for runs in waves.values()]
    return _report(args, config, median)


def _wave(
    llm: LLM,
    prompts: list[dict[str, list[int]]],
    params: SamplingParams,
    loras: list[LoRARequest],
    adapters: int,
) -> LoadPoint:
    """One wave of every prompt, request i with adapter i mod `adapters` (0: base model)."""
    who = [loras[i % adapters] if adapters else None for i in range(len(prompts))]
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, lora_request=who)
    seconds = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return LoadPoint(adapters, len(prompts), tokens, seconds)


def _report(
    args: argparse.Namespace, config: ModelConfig, points: list[LoadPoint]
) -> dict[str, Any]:
    base = points[0].output_tokens_per_s
    return {
        "benchmark": "lora_throughput",
        "command": "python -m oss_serve.benchmarks.lora_throughput " + " ".join(args.argv),
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
        "model": args.model or "small (benchmarks/lora_throughput.py SMALL)",
        "config": asdict(config),
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "argv"
        },
        "points": [
            {
                **asdict(p),
                "output_tokens_per_s": round(p.output_tokens_per_s, 1),
                "vs_base": round(p.output_tokens_per_s / base, 3),
            }
            for p in points
        ],
    }


def markdown(result: dict[str, Any]) -> str:
    settings = result["settings"]
    lines = [
        f"# LoRA throughput: {result['model']}",
        "",
        f"`{result['command']}`",
        "",
        f"{settings['requests']} requests per wave, {settings['prompt_len']} prompt tokens, "
        f"{settings['output_len']} output tokens each; adapters of rank {settings['rank']} on "
        f"{settings['targets']}; {settings['device']}, {settings['dtype']}, "
        f"{result['machine']['threads']} thread(s); the median of {settings['repeats']} "
        "interleaved waves per point.",
        "",
        "| distinct adapters | output tok/s | vs base only | seconds |",
        "| --- | ---: | ---: | ---: |",
    ]
    for point in result["points"]:
        label = "base only" if point["adapters"] == 0 else str(point["adapters"])
        lines.append(
            f"| {label} | {point['output_tokens_per_s']:,.1f} | {point['vs_base']:.2f}x "
            f"| {point['seconds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="preset or checkpoint (default: small)")
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", choices=TARGETS, default="all")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="waves per point (median)")
    parser.add_argument("--output", type=Path, default=None, help="writes OUTPUT.json and .md")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    result = run(args)
    text = markdown(result)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.output.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
