"""Where an engine step's time goes on the CPU: phases and torch ops of one decode-heavy wave.

Runs oss-serve's `LLM` in this process on the side-by-side benchmark's checkpoint
(benchmarks/vllm_side_by_side.py), warms up, then runs one wave under torch's profiler.
Reports the engine's own phase timers (scheduling, input preparation, forward, logits and
sampling) and the torch ops by self CPU time, as JSON and Markdown.

    .venv/bin/python -m oss_serve.benchmarks.engine_profile --concurrency 64 \
        --output-dir benchmarks/results/engine-profile
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from oss_serve.benchmarks.engine_throughput import make_prompts, write_checkpoint
from oss_serve.benchmarks.vllm_side_by_side import CHECKPOINT_CONFIG


def profile_wave(checkpoint: Path, concurrency: int, output_len: int, top: int) -> dict[str, Any]:
    from oss_serve import LLM, SamplingParams

    llm = LLM(str(checkpoint), dtype="float32", device="cpu", skip_tokenizer_init=True)
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True,
                            detokenize=False)  # fmt: skip
    prompts = [{"prompt_token_ids": p} for p in make_prompts(concurrency, concurrency, 16, 256)]
    llm.generate(prompts[:2], params.clone(max_tokens=4))
    core = llm.llm_engine
    runner = core.executor.runner
    stats_before, timings_before = core.stats(), asdict(runner.timings)
    load_before = os.getloadavg()
    cpu_before = time.process_time()
    started = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        outputs = llm.generate(prompts, params)
    seconds = time.perf_counter() - started
    stats, timings = core.stats(), asdict(runner.timings)
    phases = {name: timings[name] - timings_before[name] for name in timings}
    phases["schedule_s"] = stats.scheduler_time_s - stats_before.scheduler_time_s
    phases["other_s"] = seconds - sum(phases.values())
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events)
    ops = [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_ms": e.self_cpu_time_total / 1000,
            "share": e.self_cpu_time_total / total_self,
        }
        for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    ]
    llm.shutdown()
    return {
        "concurrency": concurrency,
        "output_len": output_len,
        "seconds": seconds,
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
        "steps": stats.num_steps - stats_before.num_steps,
        "process_cpu_s": time.process_time() - cpu_before,
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "threads": torch.get_num_threads(),
        "phases_s": phases,
        "ops": ops,
    }


def markdown(result: dict[str, Any]) -> str:
    steps = result["steps"]
    lines = [
        f"One wave: {result['concurrency']} requests x {result['output_len']} tokens, "
        f"{result['seconds']:.2f} s, {result['output_tokens'] / result['seconds']:.1f} tok/s, "
        f"{steps} steps, {result['threads']} torch threads, load "
        f"{result['loadavg_before'][0]:.2f} before (profiler on: slower than unprofiled).",
        "",
        "| phase | s | ms/step | share |",
        "| --- | --- | --- | --- |",
    ]
    for name, value in result["phases_s"].items():
        lines.append(
            f"| {name} | {value:.3f} | {1000 * value / steps:.2f} "
            f"| {value / result['seconds']:.0%} |"
        )
    lines += ["", "| torch op | calls | self CPU ms | share |", "| --- | --- | --- | --- |"]
    for op in result["ops"]:
        lines.append(
            f"| `{op['op']}` | {op['calls']} | {op['self_cpu_ms']:.1f} | {op['share']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--name", default="profile")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "checkpoint"
        write_checkpoint(checkpoint, 0, CHECKPOINT_CONFIG)
        result = profile_wave(checkpoint, args.concurrency, args.output_len, args.top)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (args.output_dir / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
