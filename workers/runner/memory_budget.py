"""How much GPU memory a worker gives its KV cache, as plain arithmetic (no torch).

The executor measures the device and calls these; the capacity planner
(`oss-serve plan --engine oss-serve`) calls the same functions with the figures it
predicts, so the plan and a real worker cannot size the cache differently.
"""

from __future__ import annotations

# Live copies of a step's widest activation per token (residual, normed input, the
# gate/up output and its activation, partial sums) and of its logits rows (fp32 logits,
# softmax and the sampler's sorted copy).
ACTIVATION_COPIES_PER_TOKEN = 8
LOGITS_COPIES = 3
LOGITS_BYTES = 4


def step_activation_bytes(
    *,
    hidden_size: int,
    intermediate_size: int,
    vocab_size: int,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    dtype_bytes: int,
) -> int:
    """A bound on one full step's activations: hidden states of every scheduled token plus
    the logits rows of the sequences that sample in it."""
    width = max(hidden_size, intermediate_size * 2)
    per_token = width * ACTIVATION_COPIES_PER_TOKEN * dtype_bytes
    logit_rows = min(max_num_batched_tokens, max_num_seqs)
    logits = logit_rows * vocab_size * LOGITS_BYTES * LOGITS_COPIES
    return max_num_batched_tokens * per_token + logits


def kv_cache_budget_bytes(
    *,
    total_bytes: int,
    used_bytes: int,
    gpu_memory_utilization: float,
    activation_bytes: int,
) -> int:
    """The KV cache gets the utilization share of the device minus what is already in use
    (CUDA context, weights, buffers) and the step's activations; never below zero."""
    return max(0, int(total_bytes * gpu_memory_utilization) - used_bytes - activation_bytes)
