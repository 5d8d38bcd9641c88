"""CUDA graphs for decode steps: captured once per batch size, replayed with new inputs.

A decode step (one new token per sequence) launches hundreds of small kernels; replaying a
captured graph launches them at once. vLLM's idea: capture a list of batch sizes
(`capture_sizes`), pad each decode batch up to the next captured size, replay, keep the
real rows. Padding rows compute token 0 at position 0 with a KV length of 1, write no KV
(slot -1) and read only the null block 0 (never handed out), so they change nothing that
the real rows see: `pad_decode_inputs` is the one place that builds them, used by the graphs
and, on the CPU, by the eager runner in tests that prove exactly that. Block tables are
padded to the width of `max_model_len`, so every replay sees the same shapes.
`--enforce-eager` (EngineConfig.enforce_eager) turns graphs off.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from oss_serve.common.logging import get_logger
from oss_serve.workers.model.attention_metadata import AttentionMetadata, KVGroupMetadata
from oss_serve.workers.runner.input_preparation import ModelInputs

log = get_logger(__name__)

MAX_DEFAULT_CAPTURE_SIZE = 512


def capture_sizes(max_num_seqs: int, sizes: Sequence[int] | None = None) -> list[int]:
    """The batch sizes to capture: the given ones, else vLLM's default (1, 2, 4, then every
    multiple of 8 up to 512), in both cases capped at max_num_seqs (which is included)."""
    if sizes is None:
        limit = min(max_num_seqs, MAX_DEFAULT_CAPTURE_SIZE)
        sizes = [1, 2, 4, *range(8, limit + 1, 8), limit]
    chosen = sorted({int(s) for s in sizes if 0 < int(s) <= max_num_seqs})
    if not chosen:
        raise ValueError(f"cuda_graph_sizes {list(sizes)} has no size in 1..{max_num_seqs}")
    return chosen


def padded_size(num_seqs: int, sizes: Sequence[int]) -> int | None:
    """The smallest captured size holding num_seqs sequences (None: larger than all)."""
    index = bisect.bisect_left(sizes, num_seqs)
    return sizes[index] if index < len(sizes) else None


def is_decode_batch(inputs: ModelInputs) -> bool:
    """One token per sequence and nothing else to score: what a graph can run."""
    return (
        inputs.meta.max_query_len == 1
        and not inputs.prompt_logprob_spans
        and len(inputs.sample_rows) == len(inputs.request_ids)
    )


def pad_decode_inputs(inputs: ModelInputs, size: int, max_blocks: int) -> ModelInputs:
    """A decode batch of B sequences as `size` >= B, block tables `max_blocks` wide; the
    real rows keep their places (0..B-1), so hidden[:B] are theirs."""
    num_seqs = len(inputs.request_ids)
    extra = size - num_seqs
    if extra < 0:
        raise ValueError(f"cannot pad a batch of {num_seqs} sequences to {size}")
    meta = inputs.meta

    def grow(tensor: torch.Tensor, fill: int) -> torch.Tensor:
        padding = tensor.new_full((extra, *tensor.shape[1:]), fill)
        return torch.cat([tensor, padding])

    groups = {
        name: KVGroupMetadata(
            block_table=_widen(grow(group.block_table, 0), max_blocks),
            slot_mapping=grow(group.slot_mapping, -1),
        )
        for name, group in meta.groups.items()
    }
    query_start = torch.arange(size + 1, dtype=meta.query_start_loc.dtype)
    return ModelInputs(
        input_ids=grow(inputs.input_ids, 0),
        positions=grow(inputs.positions, 0),
        meta=AttentionMetadata(
            query_start_loc=query_start.to(meta.query_start_loc.device),
            seq_lens=grow(meta.seq_lens, 1),
            max_query_len=1,
            max_seq_len=meta.max_seq_len,
            block_size=meta.block_size,
            groups=groups,
        ),
        request_ids=inputs.request_ids,
        sample_rows=inputs.sample_rows,
        sample_request_ids=inputs.sample_request_ids,
    )


def idle_decode_inputs(
    size: int, group_names: Sequence[str], block_size: int, max_blocks: int, device: torch.device
) -> ModelInputs:
    """A decode batch of `size` padding rows only (what a graph is captured on)."""
    zeros = torch.zeros(size, dtype=torch.int64, device=device)
    groups = {
        name: KVGroupMetadata(
            block_table=torch.zeros(size, max_blocks, dtype=torch.int32, device=device),
            slot_mapping=torch.full((size,), -1, dtype=torch.int64, device=device),
        )
        for name in group_names
    }
    meta = AttentionMetadata(
        query_start_loc=torch.arange(size + 1, dtype=torch.int32, device=device),
        seq_lens=torch.ones(size, dtype=torch.int32, device=device),
        max_query_len=1,
        max_seq_len=max_blocks * block_size,
        block_size=block_size,
        groups=groups,
    )
    return ModelInputs(input_ids=zeros, positions=zeros.clone(), meta=meta, request_ids=[])


def _widen(table: torch.Tensor, width: int) -> torch.Tensor:
    if table.shape[1] > width:
        raise ValueError(f"a block table of {table.shape[1]} blocks exceeds max_blocks={width}")
    out = table.new_zeros((table.shape[0], width))
    out[:, : table.shape[1]] = table
    return out


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    output: torch.Tensor  # hidden states [size, hidden], written by each replay


class DecodeGraphs:
    """Captured decode graphs over static input buffers (CUDA only); `run` pads and replays."""

    def __init__(
        self, model: Any, kv_caches: list[torch.Tensor], sizes: Sequence[int], max_blocks: int
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.sizes = list(sizes)
        self.max_blocks = max_blocks
        self._graphs: dict[int, _Graph] = {}
        self._static: ModelInputs | None = None
        self.replays = 0

    def capture(self, group_names: Sequence[str], block_size: int, device: torch.device) -> None:
        """Capture every size, largest first (smaller graphs reuse its memory pool)."""
        self._static = idle_decode_inputs(
            self.sizes[-1], group_names, block_size, self.max_blocks, device
        )
        pool = None
        for size in reversed(self.sizes):
            inputs = self._view(size)
            self._forward(inputs)  # compile and warm every kernel before capturing
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                output = self._forward(inputs)
            pool = graph.pool()
            self._graphs[size] = _Graph(graph, output)
        log.info("cuda graphs captured", sizes=self.sizes, max_blocks=self.max_blocks)

    def can_run(self, inputs: ModelInputs) -> bool:
        return (
            self._static is not None
            and is_decode_batch(inputs)
            and padded_size(len(inputs.request_ids), self.sizes) is not None
        )

    def run(self, inputs: ModelInputs) -> torch.Tensor:
        """Hidden states [B, hidden] of a decode batch, by replaying the padded size's graph."""
        num_seqs = len(inputs.request_ids)
        size = padded_size(num_seqs, self.sizes)
        assert size is not None and self._static is not None
        padded = pad_decode_inputs(inputs, size, self.max_blocks)
        static = self._view(size)
        static.input_ids.copy_(padded.input_ids)
        static.positions.copy_(padded.positions)
        static.meta.seq_lens.copy_(padded.meta.seq_lens)
        for name, group in static.meta.groups.items():
            group.block_table.copy_(padded.meta.groups[name].block_table)
            group.slot_mapping.copy_(padded.meta.groups[name].slot_mapping)
        captured = self._graphs[size]
        captured.graph.replay()
        self.replays += 1
        return captured.output[:num_seqs]

    def _view(self, size: int) -> ModelInputs:
        """The first `size` rows of the static buffers (every graph reads the same memory)."""
        assert self._static is not None
        meta = self._static.meta
        return ModelInputs(
            input_ids=self._static.input_ids[:size],
            positions=self._static.positions[:size],
            meta=AttentionMetadata(
                query_start_loc=meta.query_start_loc[: size + 1],
                seq_lens=meta.seq_lens[:size],
                max_query_len=1,
                max_seq_len=self.max_blocks * meta.block_size,
                block_size=meta.block_size,
                groups={
                    name: KVGroupMetadata(g.block_table[:size], g.slot_mapping[:size])
                    for name, g in meta.groups.items()
                },
            ),
            request_ids=[],
        )

    def _forward(self, inputs: ModelInputs) -> torch.Tensor:
        return self.model(inputs.input_ids, inputs.positions, inputs.meta, self.kv_caches)
