"""Plain data crossing the engine's inner boundaries (no tensors, picklable for Ray).

scheduler -> SchedulerOutput -> model runner -> ModelRunnerOutput -> scheduler ->
EngineCoreOutput -> output processor. New requests travel in full once; running ones as
deltas (new block ids, computed tokens): the runner keeps the rest, including the tokens
it sampled itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oss_serve.workers.engine.sampling_params import SamplingParams
from oss_serve.workers.lora.request import LoRARequest


@dataclass
class NewRequestData:
    """A request the runner has not seen (or must forget and re-learn after preemption)."""

    request_id: str
    token_ids: list[int]  # prompt + every token emitted so far
    num_prompt_tokens: int
    sampling_params: SamplingParams
    seed: int
    eos_token_ids: frozenset[int]
    block_ids: list[list[int]]  # per KV group
    num_computed_tokens: int  # prefix-cache hit
    lora_slot: int = -1  # the device slot of its LoRA adapter; -1 = the base model


@dataclass
class CachedRequestData:
    """A running request's delta since its last step."""

    request_id: str
    new_block_ids: list[list[int]]  # per KV group, appended to its block table
    num_computed_tokens: int


@dataclass
class SchedulerOutput:
    new_requests: list[NewRequestData] = field(default_factory=list)
    cached_requests: list[CachedRequestData] = field(default_factory=list)
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)  # in batch order
    # finished, aborted or preempted since the last step: the runner drops their state
    freed_request_ids: set[str] = field(default_factory=set)
    # adapters to put in device slots before this step runs: slot -> adapter
    lora_loads: dict[int, LoRARequest] = field(default_factory=dict)

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())

    @property
    def is_empty(self) -> bool:
        return not self.num_scheduled_tokens


@dataclass
class TokenLogprobs:
    """One position's logprobs: the chosen (or actual prompt) token first, then the top-k."""

    token_ids: list[int]
    logprobs: list[float]
    ranks: list[int]


@dataclass
class PromptLogprobsChunk:
    start_position: int  # prompt position of the token the first entry scores (>= 1)
    entries: list[TokenLogprobs]


@dataclass
class ModelRunnerOutput:
    request_ids: list[str] = field(default_factory=list)  # batch order
    sampled_token_ids: list[list[int]] = field(default_factory=list)  # [] = partial prefill
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    prompt_logprobs: dict[str, PromptLogprobsChunk] = field(default_factory=dict)


@dataclass
class EngineCoreOutput:
    """What one step produced for one request (child, when n > 1)."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_logprobs: PromptLogprobsChunk | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
