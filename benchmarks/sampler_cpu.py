"""CPU time of one sampler call per kind of request: 64 rows of 201088-token logits.

    python -m oss_serve.benchmarks.sampler_cpu [--rows 64] [--repeats 5]

Runs in a worker thread, as the engine loop does (a thread's large allocations behave
differently from the main thread's). The logits are random with a moderate spread, so
top-p keeps thousands of tokens (the hard case for a candidate-based top-p); the first
drawn token ids are printed to compare two versions of the sampler.
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from oss_serve.workers.engine.sampling_params import SamplingParams
from oss_serve.workers.runner.sampler import Sampler, SamplingRow

KINDS = {
    "greedy": SamplingParams(temperature=0),
    "temperature": SamplingParams(temperature=1.0),
    "top_p 0.9": SamplingParams(temperature=0.8, top_p=0.9),
    "top_k 50": SamplingParams(temperature=0.8, top_k=50),
    "penalties": SamplingParams(temperature=1.0, presence_penalty=0.5, repetition_penalty=1.1),
    "logprobs 1": SamplingParams(temperature=0, logprobs=1),
}


def measure(rows: int, repeats: int) -> None:
    torch.set_num_threads(1)
    logits = torch.randn(rows, 201088, generator=torch.Generator().manual_seed(0)) * 3
    for name, params in KINDS.items():
        batch = [
            SamplingRow(params, seed=i, token_ids=list(range(1000 + i)), num_prompt_tokens=900,
                        eos_token_ids=frozenset({200002}))
            for i in range(rows)
        ]  # fmt: skip
        sampler, scratch = Sampler(), logits.clone()
        for _ in range(2):  # warm-up
            scratch.copy_(logits)
            sampler(scratch, batch)
        elapsed = 0.0
        for _ in range(repeats):
            scratch.copy_(logits)
            started = time.perf_counter()
            tokens = sampler(scratch, batch).token_ids
            elapsed += time.perf_counter() - started
        print(f"{name:<12} {elapsed / repeats * 1e3:8.1f} ms   first tokens {tokens[:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    worker = threading.Thread(target=measure, args=(args.rows, args.repeats))
    worker.start()
    worker.join()


if __name__ == "__main__":
    main()
