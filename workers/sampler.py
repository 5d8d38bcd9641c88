"""Batched sampling with per-request parameters (vLLM's names and order of operations).

Order: raw logprobs (what `logprobs` reports, as vLLM's default) -> logits processors ->
min_tokens (stop tokens masked) -> logit_bias -> penalties (repetition over prompt + output,
presence/frequency over output) -> greedy argmax, or temperature -> min_p -> top_k -> top_p
-> inverse-CDF draw. The draw's uniform number is a hash of (seed, output index) and
nothing else, so a request samples the same tokens whatever shares its batch, after
preemption, or when resumed elsewhere from prompt + emitted tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from oss_serve.kernels.sampling import top_k_top_p
from oss_serve.workers.logits_processors import RequestLogitsProcessor, apply_processors
from oss_serve.workers.sampling_params import SamplingParams
from oss_serve.workers.scheduler_output import TokenLogprobs

_MASK64 = (1 << 64) - 1


def uniform_for(seed: int, output_index: int) -> float:
    """A uniform number in [0, 1) that depends only on (seed, output_index) (splitmix64)."""
    x = (seed * 0x9E3779B97F4A7C15 + (output_index + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        x = ((x ^ (x >> shift)) * mult) & _MASK64
    x ^= x >> 31
    return (x >> 11) * (1.0 / (1 << 53))


@dataclass
class SamplingRow:
    """What the sampler needs to know about one request in this step."""

    params: SamplingParams
    seed: int
    token_ids: Sequence[int]  # prompt + output so far
    num_prompt_tokens: int
    eos_token_ids: frozenset[int]
    processors: Sequence[RequestLogitsProcessor] = field(default_factory=tuple)

    @property
    def prompt_token_ids(self) -> Sequence[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> Sequence[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def needs_penalties(self) -> bool:
        p = self.params
        return p.repetition_penalty != 1.0 or p.presence_penalty != 0 or p.frequency_penalty != 0

    @property
    def masks_stop_tokens(self) -> bool:
        return self.num_output_tokens < self.params.min_tokens


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


class Sampler:
    def __call__(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> SamplerOutput:
        """logits: [len(rows), vocab] fp32, modified in place."""
        want_logprobs = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        raw_logprobs = torch.log_softmax(logits[want_logprobs], dim=-1) if want_logprobs else None
        self._process(logits, rows)
        token_ids = self._sample(logits, rows)
        logprobs: list[TokenLogprobs | None] = [None] * len(rows)
        if raw_logprobs is not None:
            chosen = torch.tensor([token_ids[i] for i in want_logprobs], dtype=torch.long)
            top_k = max(rows[i].params.logprobs or 0 for i in want_logprobs)
            entries = gather_logprobs(raw_logprobs, chosen, top_k)
            for i, entry in zip(want_logprobs, entries, strict=True):
                logprobs[i] = _trim(entry, rows[i].params.logprobs or 0)
        return SamplerOutput(token_ids=token_ids, logprobs=logprobs)

    # --- logits processing --------------------------------------------------------------------
    def _process(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
        if any(r.processors for r in rows):
            apply_processors(
                [r.processors for r in rows], [r.output_token_ids for r in rows], logits
            )
        vocab = logits.shape[-1]
        for i, row in enumerate(rows):
            if row.masks_stop_tokens:
                stops = {*(row.params.stop_token_ids or ()), *row.eos_token_ids}
                if row.params.ignore_eos:
                    stops -= row.eos_token_ids - set(row.params.stop_token_ids or ())
                ids = [t for t in stops if t < vocab]
                logits[i, ids] = float("-inf")
            if row.params.logit_bias:
                ids = [t for t in row.params.logit_bias if 0 <= t < vocab]
                bias = [row.params.logit_bias[t] for t in ids]
                logits[i, ids] += torch.tensor(bias, dtype=logits.dtype)
        penalised = [i for i, r in enumerate(rows) if r.needs_penalties]
        if penalised:
            logits[penalised] = apply_penalties(logits[penalised], [rows[i] for i in penalised])

    # --- token choice -------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[int]:
        chosen = torch.argmax(logits, dim=-1)
        random_rows = [i for i, r in enumerate(rows) if not r.params.is_greedy]
        if random_rows:
            sub = [rows[i] for i in random_rows]
            probs = filtered_probs(logits[random_rows], [r.params for r in sub])
            uniforms = [uniform_for(r.seed, r.num_output_tokens) for r in sub]
            chosen[random_rows] = inverse_cdf_sample(probs, uniforms)
        return [int(t) for t in chosen.tolist()]


def apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Repetition (prompt + output tokens), frequency and presence (output tokens) penalties."""
    vocab = logits.shape[-1]
    counts = _token_counts([r.output_token_ids for r in rows], vocab)
    in_prompt = _token_counts([r.prompt_token_ids for r in rows], vocab) > 0
    repetition = torch.tensor([r.params.repetition_penalty for r in rows]).unsqueeze(1)
    frequency = torch.tensor([r.params.frequency_penalty for r in rows]).unsqueeze(1)
    presence = torch.tensor([r.params.presence_penalty for r in rows]).unsqueeze(1)
    seen = in_prompt | (counts > 0)
    penalised = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = torch.where(seen, penalised, logits)
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def _token_counts(token_lists: Sequence[Sequence[int]], vocab: int) -> torch.Tensor:
    longest = max((len(t) for t in token_lists), default=0)
    ids = torch.full((len(token_lists), longest), vocab, dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        if tokens:
            ids[row, : len(tokens)] = torch.tensor(list(tokens), dtype=torch.long)
    counts = torch.zeros(len(token_lists), vocab + 1)
    counts.scatter_add_(1, ids.clamp_max(vocab), torch.ones_like(ids, dtype=counts.dtype))
    return counts[:, :vocab]


def filtered_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Temperature, then min_p, top_k, top_p (each renormalising), as probabilities."""
    temperature = torch.tensor([p.temperature for p in params], dtype=logits.dtype).unsqueeze(1)
    probs = torch.softmax(logits / temperature, dim=-1)
    min_p = torch.tensor([p.min_p for p in params], dtype=probs.dtype).unsqueeze(1)
    if bool((min_p > 0).any()):
        threshold = min_p * probs.amax(dim=-1, keepdim=True)
        probs = torch.where(probs < threshold, torch.zeros_like(probs), probs)
    top_k = [p.top_k if p.top_k > 0 else probs.shape[-1] for p in params]
    top_p = [p.top_p for p in params]
    if min(top_k) < probs.shape[-1] or min(top_p) < 1.0:
        probs = top_k_top_p(probs, torch.tensor(top_k), torch.tensor(top_p, dtype=torch.float64))
    return probs


def inverse_cdf_sample(probs: torch.Tensor, uniforms: Sequence[float]) -> torch.Tensor:
    """Token i with probability probs[i] / sum(probs), chosen by the given uniform numbers."""
    cdf = torch.cumsum(probs.double(), dim=-1)
    target = torch.tensor(uniforms, dtype=torch.float64).unsqueeze(1) * cdf[:, -1:]
    index = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return index.clamp_max(probs.shape[-1] - 1)


def gather_logprobs(
    logprobs: torch.Tensor, token_ids: torch.Tensor, top_k: int
) -> list[TokenLogprobs]:
    """For each row: the given token's logprob and rank, then the top_k tokens'."""
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))
    ranks = (logprobs > chosen).sum(dim=-1) + 1
    top_values, top_ids = torch.topk(logprobs, top_k, dim=-1)
    chosen_list, rank_list = chosen.squeeze(1).tolist(), ranks.tolist()
    top_value_list, top_id_list = top_values.tolist(), top_ids.tolist()
    return [
        TokenLogprobs(
            token_ids=[token, *top_id_list[row]],
            logprobs=[chosen_list[row], *top_value_list[row]],
            ranks=[rank_list[row], *range(1, top_k + 1)],
        )
        for row, token in enumerate(token_ids.tolist())
    ]


def _trim(entry: TokenLogprobs, top_k: int) -> TokenLogprobs:
    keep = top_k + 1
    return TokenLogprobs(entry.token_ids[:keep], entry.logprobs[:keep], entry.ranks[:keep])
