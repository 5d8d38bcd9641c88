"""gpt-oss, top to bottom in the order data flows.

The forward takes a flat batch of tokens (no padding) with their positions and an
AttentionMetadata that says where each sequence starts and where its keys live in the
paged KV cache. Every rank of a replica runs this same code on its slice (ParallelContext):
its attention heads, its experts, its vocabulary rows. Kernels sit behind one function each
(oss_serve.kernels.*). Weights are loaded by workers.weights, written by workers.checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from oss_serve.kernels.attention import paged_attention, store_kv, varlen_attention
from oss_serve.kernels.fused import add_rms_norm, rope_qk_
from oss_serve.kernels.lora import MoELoRA
from oss_serve.kernels.moe import moe_experts, route
from oss_serve.kernels.norm import rms_norm
from oss_serve.workers.model.attention_metadata import SLIDING_ATTENTION, AttentionMetadata
from oss_serve.workers.model.config import ModelConfig
from oss_serve.workers.model.parallel import SINGLE_PROCESS, ParallelContext

ExpertsFormat = Literal["mxfp4", "dense"]


class LinearAdapter(Protocol):
    """Adds each token's adapter delta (LoRA) to a projection's output, in place."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


class ExpertsAdapter(Protocol):
    """The experts' adapters for the batch being run, or None when no token uses one."""

    def __call__(self) -> MoELoRA | None: ...


class Linear(nn.Linear):
    """nn.Linear plus an optional adapter: the serving engine attaches one to serve many
    LoRAs on one model (workers/lora); without one this is exactly nn.Linear."""

    adapter: LinearAdapter | None = None

    def forward(self, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias if bias else None)
        return y if self.adapter is None else self.adapter(x, y)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def yarn_inv_freq(config: ModelConfig) -> torch.Tensor:
    """YaRN "NTK by parts": high frequencies kept, low ones divided by the factor, ramp between.

    As in transformers: the ramp bounds are clamped to [0, head_dim - 1] and only rounded
    when `rope_truncate` (gpt-oss: not rounded).
    """
    dim, base, factor = config.head_dim, config.rope_theta, config.rope_scaling_factor
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    if factor <= 1.0:
        return 1.0 / pos_freqs

    def correction_dim(num_rotations: float) -> float:
        wavelength_ratio = config.original_max_position_embeddings / (num_rotations * 2 * math.pi)
        return dim * math.log(wavelength_ratio) / (2 * math.log(base))

    low, high = correction_dim(config.beta_fast), correction_dim(config.beta_slow)
    if config.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    return (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation


class RotaryEmbedding(nn.Module):
    """cos/sin of position * inv_freq, times YaRN's concentration, computed per batch."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.concentration = config.rope_concentration
        self.inv_freq = nn.Buffer(yarn_inv_freq(config), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions[:, None].float() * self.inv_freq[None, :]
        return angles.cos() * self.concentration, angles.sin() * self.concentration


class Attention(nn.Module):
    """GQA with q/k/v/o biases and per-head sinks; this rank's heads only."""

    def __init__(self, config: ModelConfig, layer_idx: int, parallel: ParallelContext) -> None:
        super().__init__()
        self.parallel = parallel
        self.head_dim = config.head_dim
        self.layer_type = config.layer_types[layer_idx]
        self.sliding_window = (
            config.sliding_window if self.layer_type == SLIDING_ATTENTION else None
        )
        self.sm_scale = config.head_dim**-0.5
        self.num_heads = parallel.q_heads(config.num_attention_heads).size
        self.num_kv_heads = parallel.kv_heads(config.num_key_value_heads).size
        hidden = config.hidden_size
        self.q_proj = Linear(hidden, self.num_heads * self.head_dim)
        self.k_proj = Linear(hidden, self.num_kv_heads * self.head_dim)
        self.v_proj = Linear(hidden, self.num_kv_heads * self.head_dim)
        # row-parallel: each rank multiplies its heads' columns; the bias is added once
        self.o_proj = Linear(self.num_heads * self.head_dim, hidden)
        self.sinks = nn.Parameter(torch.empty(self.num_heads))

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: torch.Tensor | None,
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        q, k = rope_qk_(  # the projections' outputs are fresh tensors: rotated in place
            self.q_proj(x).view(num_tokens, self.num_heads, self.head_dim),
            self.k_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim),
            cos,
            sin,
        )
        v = self.v_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim)
        window = {"sm_scale": self.sm_scale, "sliding_window": self.sliding_window}
        if kv_cache is None:
            out = varlen_attention(q, k, v, meta.query_start_loc, self.sinks, **window)
        else:
            group = meta.groups[self.layer_type]
            store_kv(kv_cache, k, v, group.slot_mapping)
            out = paged_attention(
                q,
                kv_cache,
                group.block_table,
                meta.seq_lens,
                meta.query_start_loc,
                self.sinks,
                max_query_len=meta.max_query_len,
                **window,
            )
        out = self.o_proj(out.reshape(num_tokens, -1), bias=False)
        return self.parallel.all_reduce(out) + self.o_proj.bias


class Experts(nn.Module):
    """This rank's experts: [E_local, out, in] weights, dense or packed MXFP4."""

    adapter: ExpertsAdapter | None = None

    def __init__(self, config: ModelConfig, parallel: ParallelContext, fmt: ExpertsFormat) -> None:
        super().__init__()
        shard = parallel.experts(config.num_local_experts)
        self.expert_start, self.format = shard.start, fmt
        self.swiglu_alpha, self.swiglu_limit = config.swiglu_alpha, config.swiglu_limit
        hidden, inter = config.hidden_size, config.intermediate_size
        for name, out_features, in_features in (
            ("gate_up_proj", 2 * inter, hidden),
            ("down_proj", hidden, inter),
        ):
            setattr(self, f"{name}_bias", nn.Parameter(torch.empty(shard.size, out_features)))
            if fmt == "dense":
                weight = torch.empty(shard.size, out_features, in_features)
                setattr(self, name, nn.Parameter(weight))
                continue
            if in_features % 32:
                raise ValueError(f"MXFP4 experts need {name} in_features % 32 == 0")
            shape = (shard.size, out_features, in_features // 32)
            self.register_buffer(f"{name}_blocks", torch.empty(*shape, 16, dtype=torch.uint8))
            self.register_buffer(f"{name}_scales", torch.empty(*shape, dtype=torch.uint8))

    def weights(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(dense weight, None) or (MXFP4 blocks, scales) of one projection."""
        if self.format == "dense":
            return self._tensor(name), None
        return self._tensor(f"{name}_blocks"), self._tensor(f"{name}_scales")

    def _tensor(self, name: str) -> torch.Tensor:
        tensor = getattr(self, name)
        assert isinstance(tensor, torch.Tensor)
        return tensor

    def forward(
        self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
    ) -> torch.Tensor:
        w1, w1_scales = self.weights("gate_up_proj")
        w2, w2_scales = self.weights("down_proj")
        return moe_experts(
            x,
            topk_weights,
            topk_ids,
            w1,
            w1_scales,
            self._tensor("gate_up_proj_bias"),
            w2,
            w2_scales,
            self._tensor("down_proj_bias"),
            swiglu_alpha=self.swiglu_alpha,
            swiglu_limit=self.swiglu_limit,
            expert_start=self.expert_start,
            lora=None if self.adapter is None else self.adapter(),
        )


class MLPBlock(nn.Module):
    """Router (replicated) + experts (split over EP ranks, partial sums all-reduced)."""

    def __init__(self, config: ModelConfig, parallel: ParallelContext, fmt: ExpertsFormat) -> None:
        super().__init__()
        self.parallel = parallel
        self.top_k = config.num_experts_per_tok
        self.router = nn.Linear(config.hidden_size, config.num_local_experts)
        self.experts = Experts(config, parallel, fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        topk_weights, topk_ids = route(self.router(x), self.top_k)
        return self.parallel.expert_all_reduce(self.experts(x, topk_weights, topk_ids))


class DecoderLayer(nn.Module):
    def __init__(
        self, config: ModelConfig, layer_idx: int, parallel: ParallelContext, fmt: ExpertsFormat
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx, parallel)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLPBlock(config, parallel, fmt)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: torch.Tensor | None,
    ) -> torch.Tensor:
        attn_out = self.self_attn(self.input_layernorm(x), cos, sin, meta, kv_cache)
        norm = self.post_attention_layernorm
        normed, x = add_rms_norm(attn_out, x, norm.weight, norm.eps)  # x = x + attention
        return x + self.mlp(normed)


class VocabParallelEmbedding(nn.Module):
    """Embedding rows split over TP ranks: each looks up its own ids, the sum joins them."""

    def __init__(self, config: ModelConfig, parallel: ParallelContext) -> None:
        super().__init__()
        self.parallel = parallel
        self.shard = parallel.vocab(config.vocab_size)
        self.weight = nn.Parameter(torch.empty(self.shard.capacity, config.hidden_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.parallel.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.shard.start
        mine = (local >= 0) & (local < self.shard.size)
        out = F.embedding(local.clamp(0, self.shard.capacity - 1), self.weight)
        return self.parallel.all_reduce(out * mine[:, None].to(out.dtype))


class GptOss(nn.Module):
    """The gpt-oss decoder. Parameters are uninitialised: fill them with
    workers.weights.load_model / init_random_weights."""

    def __init__(
        self,
        config: ModelConfig,
        parallel: ParallelContext | None = None,
        *,
        experts_format: ExpertsFormat = "mxfp4",
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.config = config
        self.parallel = parallel or SINGLE_PROCESS
        self.experts_format: ExpertsFormat = experts_format
        with torch.device("meta"):
            self.embed_tokens = VocabParallelEmbedding(config, self.parallel)
            self.layers = nn.ModuleList(
                DecoderLayer(config, i, self.parallel, experts_format)
                for i in range(config.num_hidden_layers)
            )
            self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.lm_head = nn.Linear(
                config.hidden_size, self.embed_tokens.shard.capacity, bias=False
            )
        for module in self.modules():  # norms stay fp32; MXFP4 blocks/scales stay uint8
            if not isinstance(module, RMSNorm):
                for param in module.parameters(recurse=False):
                    param.data = param.data.to(dtype)
        self.to_empty(device=device)
        self.rotary = RotaryEmbedding(config).to(device)

    @property
    def num_kv_heads_local(self) -> int:
        return self.parallel.kv_heads(self.config.num_key_value_heads).size

    def kv_cache_shape(self, num_blocks: int, block_size: int) -> tuple[int, int, int, int, int]:
        """One layer's paged KV cache on this rank: [2, blocks, block_size, kv heads, head_dim]."""
        return (2, num_blocks, block_size, self.num_kv_heads_local, self.config.head_dim)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Hidden states [N, hidden] after the final norm for a flat batch of N tokens."""
        if kv_caches is not None and len(kv_caches) != len(self.layers):
            raise ValueError(f"kv_caches has {len(kv_caches)} layers, model has {len(self.layers)}")
        cos, sin = self.rotary(positions)
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, meta, None if kv_caches is None else kv_caches[i])
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 logits [M, vocab_size] over the full vocabulary (gathered across TP ranks).

        `out`: an fp32 [M, vocab_size] buffer to write into (used by a single rank with fp32
        weights; on CPU a fresh M x 201088 result costs more to allocate than to fill)."""
        weight = self.lm_head.weight
        if out is not None and self.parallel.tp_size == 1 and weight.dtype == torch.float32:
            return torch.mm(hidden, weight[: self.config.vocab_size].t(), out=out)
        logits = F.linear(hidden, weight).float()
        return self.parallel.all_gather(logits, dim=-1)[:, : self.config.vocab_size]
