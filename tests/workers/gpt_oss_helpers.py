"""Tiny gpt-oss models for the model tests: random configs, transformers twins, a paged-KV driver."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from oss_serve.workers.model.attention_metadata import (
    FULL_ATTENTION,
    SLIDING_ATTENTION,
    AttentionMetadata,
    KVGroupMetadata,
)
from oss_serve.workers.model.model import GptOss


def tiny_hf_config(seed: int, vocab_size: int | None = None, **overrides):
    """A random small GptOssConfig whose window and original context are short enough to bite."""
    from transformers import GptOssConfig

    rng = random.Random(seed)
    kv_heads = rng.choice([1, 2])
    layers = rng.choice([2, 3])
    original = rng.choice([16, 24, 32])
    factor = rng.choice([4.0, 32.0])
    kwargs = {
        "vocab_size": vocab_size or rng.choice([97, 300]),
        "hidden_size": rng.choice([32, 64]),
        "intermediate_size": rng.choice([32, 64]),
        "num_hidden_layers": layers,
        "num_attention_heads": kv_heads * rng.choice([1, 2, 4]),
        "num_key_value_heads": kv_heads,
        "head_dim": rng.choice([8, 16]),
        "num_local_experts": rng.choice([4, 8]),
        "num_experts_per_tok": rng.choice([2, 4]),
        "sliding_window": rng.choice([4, 8, 16]),
        "layer_types": [rng.choice([SLIDING_ATTENTION, FULL_ATTENTION]) for _ in range(layers)],
        "max_position_embeddings": int(original * factor),
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": rng.choice([100.0, 500.0]),
            "factor": factor,
            "beta_fast": rng.choice([2.0, 4.0]),
            "beta_slow": rng.choice([0.25, 0.5]),
            "truncate": False,
            "original_max_position_embeddings": original,
        },
        "swiglu_limit": rng.choice([0.5, 7.0]),
        "pad_token_id": 0,
        "eos_token_id": 1,
    }
    kwargs.update(overrides)
    return GptOssConfig(**kwargs)


def random_hf_model(hf_config, seed: int, std: float = 0.2):
    """A transformers GptOssForCausalLM in fp32 with weights large enough that clamps,
    sinks and routing all matter."""
    from transformers import GptOssForCausalLM

    torch.manual_seed(seed)
    model = GptOssForCausalLM(hf_config).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, std)
    return model


def hf_logprobs(hf_model, token_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(hf_model(token_ids[None]).logits[0].float(), dim=-1)


def full_sequence_logprobs(model: GptOss, sequences: list[torch.Tensor]) -> list[torch.Tensor]:
    """One flat batch of whole sequences, no KV cache."""
    meta = AttentionMetadata.for_full_sequences([len(s) for s in sequences])
    positions = torch.cat([torch.arange(len(s)) for s in sequences])
    with torch.no_grad():
        logits = model.compute_logits(model(torch.cat(sequences), positions, meta))
    return list(torch.log_softmax(logits, dim=-1).split([len(s) for s in sequences]))


@dataclass
class PagedRun:
    logprobs: list[torch.Tensor]
    decode_only_steps: int  # steps where every sequence had one query (the batched decode path)


def paged_logprobs(
    model: GptOss,
    sequences: list[torch.Tensor],
    prompt_lens: list[int],
    *,
    block_size: int,
    chunk: int,
    seed: int = 0,
) -> PagedRun:
    """Drive the model the way an engine does: chunked prefill of each prompt (chunk tokens per
    step), then one token per step, every step one flat batch over all unfinished sequences.

    Each layer group has its own random (non-contiguous) block tables; the cache starts as
    NaN, and sliding-group table entries that fell out of the window are pointed at a trash
    block, so reading outside the visible keys would poison the output.
    """
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-len(s) // block_size) for s in sequences]
    num_blocks = sum(blocks_per_seq) + 1  # block 0 = trash
    tables = {}
    for group in (FULL_ATTENTION, SLIDING_ATTENTION):
        physical = (torch.randperm(num_blocks - 1, generator=generator) + 1).tolist()
        table = torch.zeros(len(sequences), max(blocks_per_seq), dtype=torch.int32)
        for seq, count in enumerate(blocks_per_seq):
            table[seq, :count] = torch.tensor([physical.pop() for _ in range(count)])
        tables[group] = table
    caches = [
        torch.full(
            model.kv_cache_shape(num_blocks, block_size),
            float("nan"),
            dtype=model.lm_head.weight.dtype,
        )
        for _ in range(config.num_hidden_layers)
    ]
    done = [0] * len(sequences)
    outputs: list[list[torch.Tensor]] = [[] for _ in sequences]
    decode_only_steps = 0
    while any(done[b] < len(s) for b, s in enumerate(sequences)):
        active = [b for b, s in enumerate(sequences) if done[b] < len(s)]
        counts = [
            min(chunk, prompt_lens[b] - done[b]) if done[b] < prompt_lens[b] else 1 for b in active
        ]
        decode_only_steps += all(c == 1 for c in counts)
        ids, positions, meta = _step_batch(
            sequences, active, counts, done, tables, block_size, config.sliding_window
        )
        with torch.no_grad():
            logits = model.compute_logits(model(ids, positions, meta, caches))
        for b, piece in zip(active, logits.split(counts), strict=True):
            outputs[b].append(torch.log_softmax(piece, dim=-1))
            done[b] += len(piece)
    return PagedRun([torch.cat(o) for o in outputs], decode_only_steps)


def _step_batch(sequences, active, counts, done, tables, block_size, window):
    ids, positions, slots = [], [], {g: [] for g in tables}
    for b, count in zip(active, counts, strict=True):
        pos = torch.arange(done[b], done[b] + count)
        ids.append(sequences[b][pos])
        positions.append(pos)
        for group, table in tables.items():
            slots[group].append(table[b, pos // block_size].long() * block_size + pos % block_size)
    seq_lens = torch.tensor([done[b] + c for b, c in zip(active, counts, strict=True)])
    query_start_loc = torch.zeros(len(active) + 1, dtype=torch.int32)
    query_start_loc[1:] = torch.cumsum(torch.tensor(counts), 0)
    groups = {}
    for group, table in tables.items():
        table = table[active].clone()
        if group == SLIDING_ATTENTION:  # blocks no query of this step can see -> trash
            for row, b in enumerate(active):
                first_visible = max(0, done[b] - window + 1)
                table[row, : first_visible // block_size] = 0
        groups[group] = KVGroupMetadata(block_table=table, slot_mapping=torch.cat(slots[group]))
    meta = AttentionMetadata(
        query_start_loc=query_start_loc,
        seq_lens=seq_lens.to(torch.int32),
        max_query_len=max(counts),
        max_seq_len=int(seq_lens.max()),
        block_size=block_size,
        groups=groups,
    )
    return torch.cat(ids), torch.cat(positions), meta
