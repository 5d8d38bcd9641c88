"""The output projection (hidden -> vocabulary logits) in vocabulary chunks, and greedy
argmax without the full logits.

Over gpt-oss's 201,088-token vocabulary the projection is most of a small model's decode
step on a CPU. Two things make it cheaper there: the weight's chunks are packed once
into oneDNN's blocked layout (the form its GEMM reads fastest, as vLLM's CPU path does),
and a greedy row needs only its best token, so each chunk's logits, small enough to stay
in cache, are reduced to a running (max, argmax) and never written out whole. Ties go to
the lower token id, as torch.argmax does (on the CPU the running argmax is the C kernel of
kernels.cpu_argmax). On other devices (or without oneDNN) the chunks are plain slices of the
weight and the same code runs with torch.mm.
"""

from __future__ import annotations

import torch

from . import cpu_argmax, vocab_screen

CHUNK_ROWS = 16384  # vocabulary rows per chunk: [batch, chunk] fp32 logits stay in L2/L3
PACK_BATCH_HINT = 64  # the batch size oneDNN tunes its packed layout for (any batch works)
SCREEN_ROWS = 16384  # vocabulary rows per int8 screening chunk


def onednn_packing_available(weight: torch.Tensor) -> bool:
    """Whether this torch build can pack `weight` for oneDNN's CPU GEMM."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class VocabProjection:
    """hidden [M, H] @ weight[:vocab_size].T in chunks; `weight` [>= vocab_size, H].

    The packed chunks are a copy: call `refresh()` after the weight changes in place
    (`is_stale()` tells, from the tensor's version counter)."""

    def __init__(self, weight: torch.Tensor, vocab_size: int, chunk_rows: int = CHUNK_ROWS):
        self.weight, self.vocab_size, self.chunk_rows = weight, vocab_size, chunk_rows
        self.packed = onednn_packing_available(weight)
        self.chunks: list[torch.Tensor] = []
        self.screen: vocab_screen.Int8VocabScreen | None = None
        self._version = -1
        self.refresh()

    def refresh(self) -> None:
        """(Re)build the chunks from the weight's current values."""
        starts = range(0, self.vocab_size, self.chunk_rows)
        slices = [self.weight[s : min(s + self.chunk_rows, self.vocab_size)] for s in starts]
        if self.packed:
            reorder = torch.ops.mkldnn._reorder_linear_weight
            self.chunks = [reorder(part.detach().contiguous(), PACK_BATCH_HINT) for part in slices]
        else:
            self.chunks = [part.detach() for part in slices]
        if vocab_screen.available(self.weight):
            self.screen = vocab_screen.Int8VocabScreen(self.weight, self.vocab_size, SCREEN_ROWS)
        self._version = self.weight._version

    def is_stale(self) -> bool:
        return self.weight._version != self._version

    def _chunk_logits(self, hidden: torch.Tensor, index: int) -> torch.Tensor:
        chunk = self.chunks[index]
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(hidden, chunk, None, "none", [], "")
        return torch.mm(hidden, chunk.t())

    def logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 logits [M, vocab_size], written chunk by chunk into `out` when given."""
        hidden = hidden.to(self.weight.dtype).contiguous()
        if out is None:
            out = hidden.new_empty(hidden.shape[0], self.vocab_size, dtype=torch.float32)
        for index in range(len(self.chunks)):
            start = index * self.chunk_rows
            part = self._chunk_logits(hidden, index)
            out[:, start : start + part.shape[1]].copy_(part)
        return out

    def argmax(self, hidden: torch.Tensor) -> torch.Tensor:
        """Each row's greedy token id [M] int64 (= logits(hidden).argmax(-1))."""
        hidden = hidden.to(self.weight.dtype).contiguous()
        if self.screen is not None and hidden.device.type == "cpu":
            screened = self.screen.argmax(hidden)
            if screened is not None:
                unresolved = (screened < 0).nonzero().flatten()
                if unresolved.numel():
                    screened[unresolved] = self._exact_argmax(hidden[unresolved])
                return screened
        return self._exact_argmax(hidden)

    def _exact_argmax(self, hidden: torch.Tensor) -> torch.Tensor:
        """argmax over the fp32 logits, chunk by chunk (one row: straight from the weight)."""
        if hidden.device.type == "cpu":
            direct = cpu_argmax.vocab_argmax(hidden, self.weight, self.vocab_size)
            if direct is not None:
                return direct
        rows = hidden.shape[0]
        best = torch.full((rows,), float("-inf"), dtype=torch.float32, device=hidden.device)
        best_ids = torch.zeros(rows, dtype=torch.int64, device=hidden.device)
        native = hidden.device.type == "cpu" and cpu_argmax.available()
        for index in range(len(self.chunks)):
            logits = self._chunk_logits(hidden, index)
            if native and logits.dtype == torch.float32 and logits.stride(-1) == 1:
                cpu_argmax.update(logits, index * self.chunk_rows, best, best_ids)
                continue
            values, ids = logits.max(dim=-1)
            better = values.float() > best  # strictly: an equal later logit keeps the lower id
            best = torch.where(better, values.float(), best)
            best_ids = torch.where(better, ids + index * self.chunk_rows, best_ids)
        return best_ids
