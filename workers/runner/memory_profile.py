"""How much GPU memory the KV cache may take, measured the way vLLM measures it.

A profiling step runs the largest batch the scheduler can form (max_num_batched_tokens
tokens over up to max_num_seqs sequences, no KV cache) and samples max_num_seqs rows of
logits; the peak that torch's allocator saw above the weights is the activation peak.
Then: KV budget = total memory x gpu_memory_utilization - weights - activation peak -
memory used outside torch (CUDA context, NCCL, workspaces). The step also runs on the CPU
(tests), where only its forward and sampling are exercised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from oss_serve.workers.engine.sampling_params import SamplingParams
from oss_serve.workers.model.attention_metadata import AttentionMetadata
from oss_serve.workers.runner.memory_budget import kv_cache_budget_bytes
from oss_serve.workers.runner.sampler import Sampler, SamplingRow

GIB = 1 << 30


@dataclass(frozen=True)
class MemoryProfile:
    """Bytes on one GPU: what is there, what the step needed, what is left for the KV cache."""

    total_bytes: int
    weights_bytes: int
    activation_peak_bytes: int
    non_torch_bytes: int
    utilization: float  # gpu_memory_utilization

    @property
    def requested_bytes(self) -> int:
        return int(self.total_bytes * self.utilization)

    @property
    def kv_cache_bytes(self) -> int:
        return kv_cache_budget_bytes(
            total_bytes=self.total_bytes,
            used_bytes=self.weights_bytes + self.non_torch_bytes,
            gpu_memory_utilization=self.utilization,
            activation_bytes=self.activation_peak_bytes,
        )

    def log_line(self) -> str:
        """vLLM's start-up line, with the parts it is made of."""
        return (
            f"Available KV cache memory: {self.kv_cache_bytes / GIB:.2f} GiB "
            f"(of {self.requested_bytes / GIB:.2f} GiB requested: weights "
            f"{self.weights_bytes / GIB:.2f} GiB, activation peak "
            f"{self.activation_peak_bytes / GIB:.2f} GiB, non-torch {self.non_torch_bytes / GIB:.2f} GiB)"
        )


def profile_step(model: Any, num_tokens: int, num_seqs: int, device: torch.device) -> None:
    """The largest step: `num_tokens` tokens in `num_seqs` sequences through the model (no
    KV cache) and the sampler over one row of logits per sequence (top-p: its buffers)."""
    num_seqs = max(1, min(num_seqs, num_tokens))
    lengths = [num_tokens // num_seqs + (i < num_tokens % num_seqs) for i in range(num_seqs)]
    meta = AttentionMetadata.for_full_sequences(lengths, device)
    input_ids = torch.zeros(num_tokens, dtype=torch.long, device=device)
    positions = torch.cat([torch.arange(n, device=device) for n in lengths])
    with torch.inference_mode():
        hidden = model(input_ids, positions, meta)
        last_rows = meta.query_start_loc[1:].long() - 1
        logits = model.compute_logits(hidden[last_rows]).float()
        rows = [
            SamplingRow(SamplingParams(top_p=0.9), seed=i, token_ids=[0], num_prompt_tokens=1,
                        eos_token_ids=frozenset())
            for i in range(num_seqs)
        ]  # fmt: skip
        Sampler()(logits, rows)


def profile_cuda_memory(
    model: Any, num_tokens: int, num_seqs: int, device: torch.device, utilization: float
) -> MemoryProfile:
    """Run `profile_step` on a CUDA device and account for its memory."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    weights = torch.cuda.memory_allocated(device)
    profile_step(model, num_tokens, num_seqs, device)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - weights
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    non_torch = max(0, (total - free) - torch.cuda.memory_reserved(device))
    return MemoryProfile(
        total_bytes=total,
        weights_bytes=weights,
        activation_peak_bytes=peak,
        non_torch_bytes=non_torch,
        utilization=utilization,
    )
