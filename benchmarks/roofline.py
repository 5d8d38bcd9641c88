"""Speed from a roofline: how long one forward step takes on a TP group of one GPU type.

A step costs the larger of its memory time (weights it touches + KV it reads, over HBM
bandwidth) and its compute time (matmul + attention FLOPs over the tensor-core peak of
the weights path), plus tensor-parallel all-reduces over the GPU link and a fixed
per-layer cost for kernel launches and synchronisation.

Decode reads the dense weights (attention, unembedding) once per step and only the
experts the batch's tokens route to: with uniform routing a layer with E experts and
top-k touches E x (1 - (1 - k/E)^batch) of them. Sliding-window layers read at most the
window of KV, full layers the whole context.

The per-layer cost and link latencies are calibrated against published batch-1 decode
numbers (SGLang: gpt-oss-120b 416 tok/s on 4 x B200, 319 tok/s on 8 x H100; llama.cpp:
gpt-oss-20b ~300 tok/s on an RTX 5090, ~150 tok/s on an RTX 3090), the matmul efficiency
against GPUStack's vLLM throughput of gpt-oss-20b on one H100 with 4000-token prompts
(33.8k total tok/s). They are assumptions, printed with every plan; `oss-serve bench
--plan-check` shows how far off they are for a real deployment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from oss_serve.benchmarks.gpu_catalog import GPUSpec, WeightsPath

HBM_EFFICIENCY = 0.8  # achievable share of peak memory bandwidth
MATMUL_EFFICIENCY = 0.3  # achievable share of peak FLOPs in MoE-dominated steps
LAYER_OVERHEAD_S = 40e-6  # launches, norms, routing, synchronisation per layer and step
SEQUENCE_OVERHEAD_S = 10e-6  # scheduling, sampling, detokenising per sequence and step
ACTIVATION_BYTES = 2  # bf16 activations on the wire


@dataclass(frozen=True)
class StepTime:
    """One forward step on each GPU of the group, split by what it waits for."""

    memory_s: float
    compute_s: float
    comm_s: float
    overhead_s: float

    @property
    def total_s(self) -> float:
        return max(self.memory_s, self.compute_s) + self.comm_s + self.overhead_s

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s >= self.compute_s else "compute"


class Roofline:
    """Step times of one model on `num_gpus` x `gpu` (tensor parallel) for one weights path."""

    def __init__(
        self,
        shape: Any,  # planner.ModelShape
        gpu: GPUSpec,
        num_gpus: int,
        path: WeightsPath,
        kv_bytes_per_token_per_layer: int,  # one rank
    ) -> None:
        config = shape.config
        self.config = config
        self.gpu = gpu
        self.num_gpus = num_gpus
        self.path = path
        self.kv_bytes_per_token_per_layer = kv_bytes_per_token_per_layer
        params, nbytes = shape.component_params, shape.component_bytes
        n = num_gpus
        self.dense_bytes = (nbytes["attention"] + nbytes["unembedding"]) / n + (
            nbytes["router"] + nbytes["norms"]
        )
        self.layer_params = params["attention"] / n + params["router"]  # run for every token
        self.unembedding_params = params["unembedding"] / n  # only where logits are needed
        layers, experts = config.num_hidden_layers, config.num_local_experts
        self.expert_bytes = nbytes["experts"] / (layers * experts) / n
        self.active_expert_params = params["experts"] * config.num_experts_per_tok / experts / n
        from oss_serve.workers.model.attention_metadata import FULL_ATTENTION

        self.full_layers = sum(1 for t in config.layer_types if t == FULL_ATTENTION)
        self.sliding_layers = layers - self.full_layers

    def experts_touched(self, tokens: int) -> float:
        """Expected distinct experts per layer that `tokens` tokens route to."""
        experts, top_k = self.config.num_local_experts, self.config.num_experts_per_tok
        return experts * (1.0 - (1.0 - top_k / experts) ** tokens)

    def _attended(self, context: float) -> float:
        """Keys one query reads across all layers."""
        window = self.config.sliding_window
        return self.full_layers * context + self.sliding_layers * min(context, window)

    def _comm_s(self, tokens: int, logit_rows: int) -> float:
        """Two all-reduces per layer of the activations, and one gather of the logits."""
        n = self.num_gpus
        if n == 1:
            return 0.0
        link_bytes_per_s, pair_latency_s = self.gpu.link
        latency_s = pair_latency_s * math.log2(n)  # tree-like small-message collectives
        message = tokens * self.config.hidden_size * ACTIVATION_BYTES
        all_reduce = latency_s + 2 * (n - 1) / n * message / link_bytes_per_s
        logits = logit_rows * self.config.vocab_size / n * 4  # fp32 shards to rank 0
        gather = latency_s + (n - 1) * logits / link_bytes_per_s
        return 2 * self.config.num_hidden_layers * all_reduce + gather

    def _step(
        self, tokens: int, logit_rows: int, attended_keys: float, kv_read_bytes: float
    ) -> StepTime:
        config = self.config
        layers = config.num_hidden_layers
        weight_bytes = self.dense_bytes + layers * self.experts_touched(tokens) * self.expert_bytes
        memory_s = (weight_bytes + kv_read_bytes) / (
            self.gpu.bandwidth_bytes_per_s * HBM_EFFICIENCY
        )
        heads = config.num_attention_heads / self.num_gpus
        dense_flops = 2 * (tokens * self.layer_params + logit_rows * self.unembedding_params)
        dense_flops += 4 * heads * config.head_dim * attended_keys
        moe_flops = tokens * 2 * self.active_expert_params
        compute_s = (
            dense_flops / self.path.dense_flops + moe_flops / self.path.moe_flops
        ) / MATMUL_EFFICIENCY
        comm_s = self._comm_s(tokens, logit_rows)
        return StepTime(memory_s, compute_s, comm_s, layers * LAYER_OVERHEAD_S)

    def decode_step(self, batch: int, context: float) -> StepTime:
        """One decode step of `batch` sequences whose context is `context` tokens each."""
        attended = batch * self._attended(context)
        step = self._step(batch, batch, attended, attended * self.kv_bytes_per_token_per_layer)
        overhead_s = step.overhead_s + batch * SEQUENCE_OVERHEAD_S
        return StepTime(step.memory_s, step.compute_s, step.comm_s, overhead_s)

    def prefill(self, tokens: int, context_before: int = 0) -> StepTime:
        """One step that prefills `tokens` new tokens after `context_before` cached ones."""
        mean_context = context_before + (tokens + 1) / 2  # causal: token i sees i keys
        attended = tokens * self._attended(mean_context)
        cached = context_before * (self.full_layers + self.sliding_layers)
        kv_bytes = (
            cached + tokens * len(self.config.layer_types)
        ) * self.kv_bytes_per_token_per_layer
        return self._step(tokens, 1, attended, kv_bytes)

    def prefill_s(self, tokens: int, chunk: int) -> float:
        """Time to prefill a prompt of `tokens` in chunks of at most `chunk` tokens."""
        total_s, done = 0.0, 0
        for _ in range(math.ceil(tokens / chunk)):
            step = min(chunk, tokens - done)
            total_s += self.prefill(step, done).total_s
            done += step
        return total_s
