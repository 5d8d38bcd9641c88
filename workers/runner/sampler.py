"""Batched sampling with per-request parameters (vLLM's names and order of operations).

Order: raw logprobs (what `logprobs` reports, as vLLM's default) -> logits processors ->
min_tokens (stop tokens masked) -> logit_bias -> penalties (repetition over prompt + output,
presence/frequency over output) -> greedy argmax, or temperature -> min_p -> top_k -> top_p
-> inverse-CDF draw. The draw's uniform number is a hash of (seed, output index) and
nothing else, so a request samples the same tokens whatever shares its batch, after
preemption, or when resumed elsewhere from prompt + emitted tokens.

Everything runs where the logits are (the Triton top-k/top-p kernel on CUDA): only the
sampled ids and the requested logprobs cross to the host, in one transfer per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from oss_serve.kernels.sampling import sum_fp64, top_k_top_p
from oss_serve.workers.engine.sampling_params import SamplingParams
from oss_serve.workers.engine.scheduler_output import TokenLogprobs
from oss_serve.workers.runner.logits_processors import RequestLogitsProcessor, apply_processors
from oss_serve.workers.runner.workspace import Workspace

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

    @property
    def needs_only_argmax(self) -> bool:
        """Greedy with nothing that reads or edits the logits: the token is their argmax."""
        p = self.params
        return (
            p.is_greedy
            and p.logprobs is None
            and not p.logit_bias
            and not self.processors
            and not self.needs_penalties
            and not self.masks_stop_tokens
        )


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


class Sampler:
    def __init__(self, workspace: Workspace | None = None) -> None:
        self.workspace = workspace or Workspace()

    def __call__(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> SamplerOutput:
        """logits: [len(rows), vocab] fp32 on any device, modified in place."""
        want_logprobs = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        raw_logprobs = self._raw_logprobs(logits, want_logprobs) if want_logprobs else None
        self._process(logits, rows)
        chosen = self._sample(logits, rows)
        logprobs: list[TokenLogprobs | None] = [None] * len(rows)
        if raw_logprobs is None:
            return SamplerOutput(token_ids=to_host(chosen)[0].tolist(), logprobs=logprobs)
        top_k = max(rows[i].params.logprobs or 0 for i in want_logprobs)
        index = torch.tensor(want_logprobs, device=chosen.device)
        found = logprob_tensors(raw_logprobs, chosen.index_select(0, index), top_k)
        token_ids, *host = to_host(chosen, *found)
        entries = logprob_entries(token_ids[want_logprobs], *host)
        for i, entry in zip(want_logprobs, entries, strict=True):
            logprobs[i] = _trim(entry, rows[i].params.logprobs or 0)
        return SamplerOutput(token_ids=token_ids.tolist(), logprobs=logprobs)

    def _rows(self, logits: torch.Tensor, indices: list[int], name: str) -> torch.Tensor:
        """logits[indices]: the tensor itself when that is every row, else a workspace copy."""
        if len(indices) == logits.shape[0]:  # increasing and unique: every row, in order
            return logits
        out = self.workspace.take(name, len(indices), logits.shape[1], logits.dtype, logits.device)
        index = torch.tensor(indices, device=logits.device)
        return torch.index_select(logits, 0, index, out=out)

    def _raw_logprobs(self, logits: torch.Tensor, indices: list[int]) -> torch.Tensor:
        rows = self._rows(logits, indices, "logprob_rows")
        out = self.workspace.like("logprobs", rows)
        return torch.ops.aten._log_softmax.out(rows, -1, False, out=out)  # = torch.log_softmax

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
                logits[i, ids] += torch.tensor(bias, dtype=logits.dtype, device=logits.device)
            if row.needs_penalties:
                apply_penalties(logits[i], row)

    # --- token choice -------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        """The chosen token ids [len(rows)] int64, on the logits' device."""
        chosen = torch.argmax(logits, dim=-1)
        random_rows = [i for i, r in enumerate(rows) if not r.params.is_greedy]
        if random_rows:
            sub = [rows[i] for i in random_rows]
            scaled = self._rows(logits, random_rows, "random_rows")  # argmax taken: reuse
            probs = filtered_probs(scaled, [r.params for r in sub], self.workspace)
            uniforms = [uniform_for(r.seed, r.num_output_tokens) for r in sub]
            drawn = inverse_cdf_sample(probs, uniforms)
            if len(random_rows) == len(rows):
                return drawn
            chosen[torch.tensor(random_rows, device=chosen.device)] = drawn
        return chosen


def apply_penalties(logits: torch.Tensor, row: SamplingRow) -> None:
    """In place on one row's logits [vocab]: repetition (prompt + output tokens), frequency
    and presence (output tokens), vLLM's definitions. Only the tokens that occur change."""
    vocab = logits.shape[-1]
    seen = torch.tensor([*row.prompt_token_ids, *row.output_token_ids], dtype=torch.long)
    seen = torch.unique(seen[(seen >= 0) & (seen < vocab)])
    counts = torch.zeros(seen.shape[0], dtype=logits.dtype)
    output = torch.tensor(list(row.output_token_ids), dtype=torch.long)
    output = output[(output >= 0) & (output < vocab)]
    if output.numel():
        output_ids, output_counts = torch.unique(output, return_counts=True)
        counts[torch.searchsorted(seen, output_ids)] = output_counts.to(counts.dtype)
    # the token bookkeeping above is host data; one copy each brings it to the logits
    seen, counts = seen.to(logits.device), counts.to(logits.device)
    params = row.params
    dtype, device = logits.dtype, logits.device
    repetition = torch.tensor(params.repetition_penalty, dtype=dtype, device=device)
    frequency = torch.tensor(params.frequency_penalty, dtype=dtype, device=device)
    presence = torch.tensor(params.presence_penalty, dtype=dtype, device=device)
    values = logits[seen]
    values = torch.where(values > 0, values / repetition, values * repetition)
    logits[seen] = values - frequency * counts - presence * (counts > 0).to(logits.dtype)


def filtered_probs(
    logits: torch.Tensor, params: Sequence[SamplingParams], workspace: Workspace | None = None
) -> torch.Tensor:
    """Temperature, then min_p, top_k, top_p (each renormalising), as probabilities.
    `logits` are divided by the temperature in place."""
    device = logits.device
    temperature = torch.tensor([p.temperature for p in params], dtype=logits.dtype, device=device)
    logits.div_(temperature.unsqueeze(1))
    if workspace is None:
        probs = torch.softmax(logits, dim=-1)
    else:
        out = workspace.like("probs", logits)
        probs = torch.ops.aten._softmax.out(logits, -1, False, out=out)  # = torch.softmax
    if any(p.min_p > 0 for p in params):  # decided on the host: no device sync
        min_p = torch.tensor([p.min_p for p in params], dtype=probs.dtype, device=device)
        threshold = min_p.unsqueeze(1) * probs.amax(dim=-1, keepdim=True)
        probs.masked_fill_(probs < threshold, 0.0)
    top_k = [p.top_k if p.top_k > 0 else probs.shape[-1] for p in params]
    top_p = [p.top_p for p in params]
    if min(top_k) < probs.shape[-1] or min(top_p) < 1.0:
        probs = top_k_top_p(
            probs,
            torch.tensor(top_k, device=device),
            torch.tensor(top_p, dtype=torch.float64, device=device),
        )
    return probs


CDF_CHUNK = 1024  # tokens per chunk of the inverse-CDF search


def inverse_cdf_sample(probs: torch.Tensor, uniforms: Sequence[float]) -> torch.Tensor:
    """Token i with probability probs[i] / sum(probs), chosen by the given uniform numbers:
    the first token whose running mass (fp64) exceeds u * total. The running mass is found
    chunk by chunk (the sums of CDF_CHUNK tokens, then one chunk's prefix), not by a
    cumulative sum over the whole vocabulary."""
    vocab = probs.shape[-1]
    chunk = min(CDF_CHUNK, vocab)
    num_full = vocab // chunk
    parts = [sum_fp64(probs[:, : num_full * chunk].unflatten(1, (num_full, chunk)))]
    if vocab % chunk:
        parts.append(sum_fp64(probs[:, num_full * chunk :]).unsqueeze(1))
    chunk_cdf = torch.cumsum(torch.cat(parts, dim=1), dim=1)
    device = probs.device
    target = torch.tensor(uniforms, dtype=torch.float64, device=device).unsqueeze(1)
    target = target * chunk_cdf[:, -1:]
    which = torch.searchsorted(chunk_cdf, target, right=True).clamp_max(chunk_cdf.shape[1] - 1)
    mass_before = torch.where(
        which > 0, chunk_cdf.gather(1, (which - 1).clamp(min=0)), torch.zeros_like(target)
    )
    columns = which * chunk + torch.arange(chunk, device=device)
    inside = columns < vocab  # the last chunk may be shorter
    local = torch.where(inside, probs.gather(1, columns.clamp_max(vocab - 1)).double(), 0.0)
    local_cdf = mass_before + torch.cumsum(local, dim=1)
    offset = torch.searchsorted(local_cdf, target, right=True)
    offset = torch.minimum(offset, inside.sum(dim=1, keepdim=True) - 1)  # rounding at the end
    return (which * chunk + offset).squeeze(1)


def gather_logprobs(
    logprobs: torch.Tensor, token_ids: torch.Tensor, top_k: int
) -> list[TokenLogprobs]:
    """For each row: the given token's logprob and rank, then the top_k tokens'."""
    found = logprob_tensors(logprobs, token_ids.to(logprobs.device), top_k)
    return logprob_entries(token_ids.cpu(), *to_host(*found))


def logprob_tensors(
    logprobs: torch.Tensor, token_ids: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the tokens' logprobs [R], their ranks [R], top_k values [R, k], top_k ids [R, k]),
    computed where `logprobs` [R, vocab] are, without a host sync."""
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))
    # counted a few rows at a time: summing a whole [rows, vocab] bool mask copies it to int64
    rows_per_block = max(1, (1 << 18) // max(1, logprobs.shape[-1]))
    blocks = zip(logprobs.split(rows_per_block), chosen.split(rows_per_block), strict=True)
    ranks = torch.cat([(block > value).sum(dim=-1) for block, value in blocks]) + 1
    top_values, top_ids = torch.topk(logprobs, top_k, dim=-1)
    return chosen.squeeze(1), ranks, top_values, top_ids


def logprob_entries(
    token_ids: torch.Tensor,
    chosen: torch.Tensor,
    ranks: torch.Tensor,
    top_values: torch.Tensor,
    top_ids: torch.Tensor,
) -> list[TokenLogprobs]:
    """TokenLogprobs from host tensors (what logprob_tensors computed, brought over)."""
    chosen_list, rank_list = chosen.tolist(), ranks.tolist()
    top_value_list, top_id_list = top_values.tolist(), top_ids.tolist()
    top_k = top_ids.shape[-1]
    return [
        TokenLogprobs(
            token_ids=[token, *top_id_list[row]],
            logprobs=[chosen_list[row], *top_value_list[row]],
            ranks=[rank_list[row], *range(1, top_k + 1)],
        )
        for row, token in enumerate(token_ids.tolist())
    ]


def to_host(*tensors: torch.Tensor, pack: bool | None = None) -> list[torch.Tensor]:
    """The tensors on the CPU, moved in one device-to-host copy (one sync) however many.

    Off the CPU they travel packed in one fp64 vector: token ids, ranks (< 2**53) and fp32
    logprobs are exact in fp64. CPU tensors are returned as they are unless `pack` is True
    (tests of the packing).
    """
    if not tensors:
        return []
    if pack is None:
        pack = tensors[0].device.type != "cpu"
    if not pack:
        return list(tensors)
    packed = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors]).cpu()
    pieces = packed.split([t.numel() for t in tensors])
    return [p.view(t.shape).to(t.dtype) for p, t in zip(pieces, tensors, strict=True)]


def _trim(entry: TokenLogprobs, top_k: int) -> TokenLogprobs:
    keep = top_k + 1
    return TokenLogprobs(entry.token_ids[:keep], entry.logprobs[:keep], entry.ranks[:keep])
