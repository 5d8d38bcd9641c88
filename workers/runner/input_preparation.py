"""SchedulerOutput + request states -> the flat tensors and AttentionMetadata of one forward pass.

Also says which rows of the hidden states need logits: the last token of each request
whose chunk reaches its end (it samples), and the prompt positions whose next token's
logprob a request asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from oss_serve.workers.engine.kv_cache_spec import KVCacheSpec
from oss_serve.workers.engine.scheduler_output import SchedulerOutput
from oss_serve.workers.model.attention_metadata import AttentionMetadata, KVGroupMetadata
from oss_serve.workers.runner.input_batch import CachedRequestState


@dataclass
class PromptLogprobSpan:
    """Rows [first_row, first_row + count) score prompt tokens start_position, ... ."""

    request_id: str
    first_row: int
    count: int
    start_position: int


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # [N] int64
    positions: torch.Tensor  # [N] int64
    meta: AttentionMetadata
    request_ids: list[str]  # batch order
    sample_rows: list[int] = field(default_factory=list)  # flat row per sampling request
    sample_request_ids: list[str] = field(default_factory=list)
    prompt_logprob_spans: list[PromptLogprobSpan] = field(default_factory=list)
    token_lora_slots: torch.Tensor | None = None  # [N] adapter slot per token; None: none used
    lora_slots_used: set[int] = field(default_factory=set)


def prepare_inputs(
    scheduled: SchedulerOutput,
    states: dict[str, CachedRequestState],
    spec: KVCacheSpec,
    device: torch.device,
) -> ModelInputs:
    request_ids = list(scheduled.num_scheduled_tokens)
    counts = np.array([scheduled.num_scheduled_tokens[r] for r in request_ids], dtype=np.int64)
    starts = np.array([states[r].num_computed_tokens for r in request_ids], dtype=np.int64)
    query_start = np.zeros(len(request_ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=query_start[1:])
    positions = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts, strict=True)])
    input_ids = np.concatenate(
        [
            np.asarray(states[r].token_ids[s : s + c])
            for r, s, c in zip(request_ids, starts, counts, strict=True)
        ]
    )
    seq_lens = starts + counts
    inputs = ModelInputs(
        input_ids=torch.from_numpy(input_ids.astype(np.int64)).to(device),
        positions=torch.from_numpy(positions).to(device),
        meta=AttentionMetadata(
            query_start_loc=torch.from_numpy(query_start.astype(np.int32)).to(device),
            seq_lens=torch.from_numpy(seq_lens.astype(np.int32)).to(device),
            max_query_len=int(counts.max()),
            max_seq_len=int(seq_lens.max()),
            block_size=spec.block_size,
            groups=_group_metadata(
                request_ids, states, starts, positions, query_start, spec, device
            ),
        ),
        request_ids=request_ids,
    )
    _mark_logit_rows(inputs, states, starts, counts, query_start)
    slots = [states[r].lora_slot for r in request_ids]
    inputs.lora_slots_used = {s for s in slots if s >= 0}
    if inputs.lora_slots_used:
        per_token = np.repeat(np.asarray(slots, dtype=np.int32), counts)
        inputs.token_lora_slots = torch.from_numpy(per_token).to(device)
    return inputs


def _group_metadata(
    request_ids: list[str],
    states: dict[str, CachedRequestState],
    starts: np.ndarray,
    positions: np.ndarray,
    query_start: np.ndarray,
    spec: KVCacheSpec,
    device: torch.device,
) -> dict[str, KVGroupMetadata]:
    """Block tables and slots per group; sliding tables point only at blocks still visible."""
    size = spec.block_size
    groups = {}
    for index, group in enumerate(spec.groups):
        tables = [states[r].block_ids[index] for r in request_ids]
        width = max(len(t) for t in tables)
        table = np.zeros((len(tables), width), dtype=np.int64)
        for row, ids in enumerate(tables):
            table[row, : len(ids)] = ids
            if group.sliding_window:  # blocks freed after sliding out may belong to others now
                table[row, : max(0, int(starts[row]) - group.sliding_window + 1) // size] = 0
        rows = np.repeat(np.arange(len(request_ids)), np.diff(query_start))
        slots = table[rows, positions // size] * size + positions % size
        groups[group.name] = KVGroupMetadata(
            block_table=torch.from_numpy(table.astype(np.int32)).to(device),
            slot_mapping=torch.from_numpy(slots).to(device),
        )
    return groups


def _mark_logit_rows(
    inputs: ModelInputs,
    states: dict[str, CachedRequestState],
    starts: np.ndarray,
    counts: np.ndarray,
    query_start: np.ndarray,
) -> None:
    for b, request_id in enumerate(inputs.request_ids):
        state = states[request_id]
        start, count = int(starts[b]), int(counts[b])
        if start + count == len(state.token_ids):
            inputs.sample_rows.append(int(query_start[b]) + count - 1)
            inputs.sample_request_ids.append(request_id)
        if state.sampling_params.prompt_logprobs is None:
            continue
        last_scored = min(start + count, state.num_prompt_tokens - 1)  # logits at p score p + 1
        if last_scored > start:
            inputs.prompt_logprob_spans.append(
                PromptLogprobSpan(request_id, int(query_start[b]), last_scored - start, start + 1)
            )
