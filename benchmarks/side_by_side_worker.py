"""One engine's side of the vLLM side-by-side benchmark, run in its own process.

Run by file path (`python -P`: this folder must not shadow packages named like its modules) with the engine's own interpreter (vLLM lives in its own virtualenv, where
oss_serve is not installed), so this file imports only the standard library at the top and
the engine inside `load_engine`. It loads the checkpoint, answers a 2-request warm-up (the
first token of which marks the start-up time, counted from when the parent launched this
process), then runs each wave of requests through the engine's step loop, as `LLM.generate`
does, noting when each request's first token arrives. Writes one JSON file.

    python benchmarks/side_by_side_worker.py --engine oss-serve --checkpoint DIR \
        --workload workload.json --launched-at $(date +%s.%N) --output side.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WARMUP_TOKENS = 4
ENGINES = ("oss-serve", "vllm")


@dataclass
class Engine:
    """What the benchmark needs from an engine: add a request, step, tell when it is done."""

    name: str
    version: str
    add: Callable[[str, list[int], int], None]  # request id, prompt token ids, output tokens
    step: Callable[[], list[tuple[str, list[int], bool]]]  # (id, token ids so far, finished)
    busy: Callable[[], bool]
    owner: Any  # the LLM object: dropping it would shut its engine down


@dataclass
class Wave:
    concurrency: int
    output_len: int
    seconds: float
    output_tokens: int
    ttft_s: list[float]
    token_ids: list[list[int]]
    cpu_s: float  # this process's user + system CPU seconds during the wave (not its
    # children's: vLLM's engine core runs in a child process and is not counted here)
    loadavg_before: list[float]
    loadavg_after: list[float]
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "output_len": self.output_len,
            "seconds": self.seconds,
            "output_tokens": self.output_tokens,
            "tokens_per_s": self.output_tokens / self.seconds,
            "ttft_median_s": statistics.median(self.ttft_s),
            "ttft_max_s": max(self.ttft_s),
            "cpu_s": self.cpu_s,
            "loadavg_before": self.loadavg_before,
            "loadavg_after": self.loadavg_after,
            "steps": self.steps,
            "token_ids": self.token_ids,
        }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_engine(name: str, checkpoint: str, temperature: float = 0.0) -> Engine:
    """The engine, answering every request greedily or sampled at `temperature`."""
    if name == "vllm":
        return _load_vllm(checkpoint, temperature)
    if name == "oss-serve":
        return _load_oss_serve(checkpoint, temperature)
    raise ValueError(f"--engine must be one of {', '.join(ENGINES)}; got {name!r}")


def _load_vllm(checkpoint: str, temperature: float) -> Engine:
    import vllm
    from vllm import LLM, SamplingParams

    llm = LLM(model=checkpoint, dtype="float32", skip_tokenizer_init=True, seed=0)
    engine = llm.llm_engine

    def add(request_id: str, prompt: list[int], output_len: int) -> None:
        params = SamplingParams(
            temperature=temperature, max_tokens=output_len, ignore_eos=True, detokenize=False
        )
        engine.add_request(request_id, {"prompt_token_ids": prompt}, params)

    def step() -> list[tuple[str, list[int], bool]]:
        return [
            (out.request_id, list(out.outputs[0].token_ids), out.finished) for out in engine.step()
        ]

    return Engine("vllm", vllm.__version__, add, step, engine.has_unfinished_requests, llm)


def _load_oss_serve(checkpoint: str, temperature: float) -> Engine:
    from importlib.metadata import version

    from oss_serve import LLM, SamplingParams

    llm = LLM(checkpoint, dtype="float32", device="cpu", skip_tokenizer_init=True, seed=0)
    engine = llm.llm_engine

    def add(request_id: str, prompt: list[int], output_len: int) -> None:
        params = SamplingParams(
            temperature=temperature, max_tokens=output_len, ignore_eos=True, detokenize=False
        )
        engine.add_request(request_id, prompt, params)

    def step() -> list[tuple[str, list[int], bool]]:
        return [
            (out.request_id, list(out.outputs[0].token_ids), out.finished) for out in engine.step()
        ]

    return Engine("oss-serve", version("oss-serve"), add, step, engine.has_unfinished_requests, llm)


def run_wave(engine: Engine, prompts: list[list[int]], output_len: int, tag: str) -> Wave:
    """Submit every prompt at once and step until all are done."""
    load_before = list(os.getloadavg())
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    ids = [f"{tag}-{i}" for i in range(len(prompts))]
    for request_id, prompt in zip(ids, prompts, strict=True):
        engine.add(request_id, prompt, output_len)
    first_token: dict[str, float] = {}
    tokens: dict[str, list[int]] = {}
    steps = 0
    while engine.busy():
        outputs = engine.step()
        steps += 1
        now = time.perf_counter()
        for request_id, token_ids, _finished in outputs:
            if token_ids and request_id not in first_token:
                first_token[request_id] = now - started
            tokens[request_id] = token_ids
    seconds = time.perf_counter() - started
    return Wave(
        concurrency=len(prompts),
        output_len=output_len,
        seconds=seconds,
        output_tokens=sum(len(tokens.get(r, [])) for r in ids),
        ttft_s=[first_token.get(r, seconds) for r in ids],
        token_ids=[tokens.get(r, []) for r in ids],
        cpu_s=cpu_seconds() - cpu_before,
        loadavg_before=load_before,
        loadavg_after=list(os.getloadavg()),
        steps=steps,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    workload = json.loads(Path(args.workload).read_text())
    engine = load_engine(args.engine, args.checkpoint, workload.get("temperature", 0.0))
    loaded_at = time.time()
    warmup_started = time.perf_counter()
    warmup_prompts = workload["warmup_prompts"]
    engine.add("warmup-0", warmup_prompts[0], WARMUP_TOKENS)
    first_token_at: float | None = None
    while engine.busy():  # the first warm-up request alone: its first token ends start-up
        if any(tokens for _, tokens, _ in engine.step()) and first_token_at is None:
            first_token_at = time.time()
    warmup = run_wave(engine, warmup_prompts, WARMUP_TOKENS, "warmup")
    warmup_s = time.perf_counter() - warmup_started
    waves = [
        run_wave(engine, level["prompts"], level["output_len"], f"c{level['concurrency']}")
        for level in workload["levels"]
    ]
    return {
        "engine": engine.name,
        "version": engine.version,
        "pid": os.getpid(),
        "load_s": loaded_at - args.launched_at,
        "startup_to_first_token_s": (first_token_at or time.time()) - args.launched_at,
        "warmup_s": warmup_s,
        "warmup_tokens": warmup.token_ids,
        "waves": [wave.summary() for wave in waves],
        "process_cpu_s": cpu_seconds(),
        "environment": {
            key: os.environ[key]
            for key in sorted(os.environ)
            if key.startswith(("VLLM_", "OMP_", "LD_PRELOAD", "OSS_SERVE_"))
            and key != "OSS_SERVE_VOCAB_DIR"
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=ENGINES, required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--workload", required=True, help="JSON written by vllm_side_by_side")
    parser.add_argument("--launched-at", type=float, required=True, help="time.time() at launch")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    Path(args.output).write_text(json.dumps(run(args)))


if __name__ == "__main__":
    main()
