"""oss-serve's `LLM` against vLLM's on this machine: same checkpoint, prompts and settings.

A gpt-oss checkpoint (4 layers, hidden 256, 8 experts top-2, the real 201,088-token
vocabulary, random fp32 weights) is written once by transformers. Each engine then runs in
its own process (benchmarks/side_by_side_worker.py, vLLM with its own virtualenv's Python),
in pairs whose order alternates: a 2-request warm-up, then one wave of requests per
concurrency level (mixed prompt lengths, `ignore_eos`; greedy, or sampled at `--temperature`,
where tokens are not compared). Before each process the benchmark waits, up to a bound, for the machine's 1-minute load to drop below `--max-load`,
and records the load and CPU time of every wave, since the machine is shared.

    .venv/bin/python -m oss_serve.benchmarks.vllm_side_by_side \
        --vllm-python .venv-vllm/bin/python --output-dir benchmarks/results/vllm-side-by-side
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from oss_serve.benchmarks.engine_throughput import SMALL_CONFIG, make_prompts, write_checkpoint

WORKER = Path(__file__).with_name("side_by_side_worker.py")
CHECKPOINT_CONFIG: dict[str, Any] = {
    **SMALL_CONFIG,
    "hidden_size": 256,
    "intermediate_size": 256,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
}
TCMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
)


def build_workload(args: argparse.Namespace, vocab_size: int) -> dict[str, Any]:
    """The warm-up prompts and one wave of `concurrency` prompts per level (seeded), of
    ordinary token ids (below the vocabulary's special tokens)."""
    top = min(199998, vocab_size - 2)
    min_len, max_len = args.prompt_len
    levels = [
        {
            "concurrency": c,
            "output_len": args.batch1_output_len if c == 1 else args.output_len,
            "prompts": make_prompts(c, args.seed + c, min_len, max_len, max_token_id=top),
        }
        for c in args.concurrency
    ]
    warmup = make_prompts(2, args.seed - 1, 16, 32, max_token_id=top)
    return {"warmup_prompts": warmup, "levels": levels, "temperature": args.temperature}


def vllm_environment(vllm_python: str, threads_bind: str) -> dict[str, str]:
    """vLLM's CPU settings: both cores for the model, a 4 GiB KV cache, tcmalloc and the
    libiomp5 that its torch build ships preloaded (as vLLM's CPU install guide says)."""
    env = {"VLLM_CPU_OMP_THREADS_BIND": threads_bind, "VLLM_CPU_KVCACHE_SPACE": "4"}
    preload = [p for p in TCMALLOC_PATHS if Path(p).exists()][:1]
    venv = Path(vllm_python).absolute().parent.parent
    iomp = [*venv.glob("lib/libiomp5.so"), *venv.glob("lib/python3*/site-packages/**/libiomp5.so")]
    preload += [str(p) for p in iomp][:1]  # intel-openmp installs it into the venv's lib/
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    return env


def wait_for_quiet(max_load: float, max_wait_s: float) -> list[float]:
    """Wait until the 1-minute load average is at most max_load (or max_wait_s passes)."""
    deadline = time.monotonic() + max_wait_s
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(10)
    return list(os.getloadavg())


def run_side(
    engine: str,
    python: str,
    checkpoint: Path,
    workload: Path,
    env: dict[str, str],
    timeout_s: float,
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as output:
        launched_at = time.time()
        command = [
            python, "-P", str(WORKER), "--engine", engine, "--checkpoint", str(checkpoint),
            "--workload", str(workload), "--launched-at", repr(launched_at),
            "--output", output.name,
        ]  # fmt: skip
        completed = subprocess.run(
            command, env={**os.environ, **env}, timeout=timeout_s, capture_output=True, text=True
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"{engine} exited {completed.returncode}: {completed.stderr[-3000:]}"
            )
        result: dict[str, Any] = json.loads(Path(output.name).read_text())
    result["wall_s"] = time.time() - launched_at
    return result


def compare_tokens(first: dict[str, Any], second: dict[str, Any]) -> list[dict[str, Any]]:
    """Per level: how many requests' greedy tokens are identical, and the first divergence."""
    levels = []
    for a, b in zip(first["waves"], second["waves"], strict=True):
        same = 0
        first_divergence: int | None = None
        for tokens_a, tokens_b in zip(a["token_ids"], b["token_ids"], strict=True):
            if tokens_a == tokens_b:
                same += 1
                continue
            index = next(
                (i for i, (x, y) in enumerate(zip(tokens_a, tokens_b, strict=False)) if x != y),
                min(len(tokens_a), len(tokens_b)),
            )
            first_divergence = index if first_divergence is None else min(first_divergence, index)
        levels.append(
            {
                "concurrency": a["concurrency"],
                "requests": len(a["token_ids"]),
                "identical": same,
                "first_divergence": first_divergence,
            }
        )
    return levels


def drop_tokens(side: dict[str, Any]) -> dict[str, Any]:
    """The side's result without the generated token ids (kept only for the comparison)."""
    waves = [{k: v for k, v in wave.items() if k != "token_ids"} for wave in side["waves"]]
    return {**{k: v for k, v in side.items() if k != "warmup_tokens"}, "waves": waves}


def write_results(
    args: argparse.Namespace,
    config: dict[str, Any],
    environments: dict[str, dict[str, str]],
    pairs: list[dict[str, Any]],
) -> None:
    results = {
        "checkpoint_config": config,
        "settings": {k: v for k, v in vars(args).items() if k != "output_dir"},
        "environments": environments,
        "machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
        "pairs": pairs,
    }
    (args.output_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm-python", default=".venv-vllm/bin/python")
    parser.add_argument("--oss-serve-python", default=sys.executable)
    parser.add_argument("--engines", nargs="+", default=["vllm", "oss-serve"])
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 128])
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--batch1-output-len", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, nargs=2, default=[16, 256])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0: greedy (tokens compared); >0: sampled"
    )
    parser.add_argument("--threads-bind", default="0-1", help="VLLM_CPU_OMP_THREADS_BIND")
    parser.add_argument("--max-load", type=float, default=3.0)
    parser.add_argument("--max-wait-s", type=float, default=120.0)
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per engine process")
    parser.add_argument("--checkpoint-config", type=json.loads, default={})
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    pythons = {"vllm": args.vllm_python, "oss-serve": args.oss_serve_python}
    environments = {"vllm": vllm_environment(args.vllm_python, args.threads_bind), "oss-serve": {}}
    config = {**CHECKPOINT_CONFIG, **args.checkpoint_config}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "checkpoint"
        write_checkpoint(checkpoint, args.seed, config)
        workload = Path(tmp) / "workload.json"
        workload.write_text(json.dumps(build_workload(args, config["vocab_size"])))
        pairs = []
        for pair in range(args.pairs):
            order = args.engines if pair % 2 == 0 else list(reversed(args.engines))
            sides: dict[str, dict[str, Any]] = {}
            for engine in order:
                load = wait_for_quiet(args.max_load, args.max_wait_s)
                print(f"pair {pair}: {engine} (load {load[0]:.2f})", flush=True)
                sides[engine] = run_side(
                    engine, pythons[engine], checkpoint, workload, environments[engine],
                    args.timeout_s,
                )  # fmt: skip
                sides[engine]["loadavg_at_launch"] = load
                for wave in sides[engine]["waves"]:
                    print(f"  c={wave['concurrency']:<4} {wave['tokens_per_s']:8.1f} tok/s")
            compared = len(sides) == 2 and args.temperature == 0
            agreement = compare_tokens(sides["oss-serve"], sides["vllm"]) if compared else []
            pairs.append(
                {
                    "order": order,
                    "sides": {name: drop_tokens(side) for name, side in sides.items()},
                    "greedy_agreement": agreement,
                }
            )
            write_results(args, config, environments, pairs)  # each pair kept as it ends
    print(f"wrote {args.output_dir / 'results.json'}")


if __name__ == "__main__":
    main()
