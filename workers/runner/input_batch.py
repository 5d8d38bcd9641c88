"""The model runner's own copy of each running request, kept in step with SchedulerOutput deltas.

The scheduler sends a request in full once (and again after preemption) and afterwards
only its new block ids and computed-token count; the runner appends the tokens it samples
itself, so decode steps need nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oss_serve.workers.engine.sampling_params import SamplingParams
from oss_serve.workers.engine.scheduler_output import NewRequestData, SchedulerOutput
from oss_serve.workers.runner.logits_processors import RequestLogitsProcessor, as_processors


@dataclass
class CachedRequestState:
    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    sampling_params: SamplingParams
    seed: int
    eos_token_ids: frozenset[int]
    block_ids: list[list[int]]  # per KV group
    num_computed_tokens: int
    processors: list[RequestLogitsProcessor] = field(default_factory=list)
    lora_slot: int = -1  # device slot of its LoRA adapter; -1 = the base model

    @classmethod
    def from_new(cls, data: NewRequestData) -> CachedRequestState:
        return cls(
            request_id=data.request_id,
            token_ids=list(data.token_ids),
            num_prompt_tokens=data.num_prompt_tokens,
            sampling_params=data.sampling_params,
            seed=data.seed,
            eos_token_ids=data.eos_token_ids,
            block_ids=[list(ids) for ids in data.block_ids],
            num_computed_tokens=data.num_computed_tokens,
            processors=as_processors(data.sampling_params.logits_processors),
            lora_slot=data.lora_slot,
        )


class RequestStates:
    """request id -> CachedRequestState, updated from each step's SchedulerOutput."""

    def __init__(self) -> None:
        self.states: dict[str, CachedRequestState] = {}

    def update(self, scheduled: SchedulerOutput) -> None:
        for request_id in scheduled.freed_request_ids:
            self.states.pop(request_id, None)
        for data in scheduled.new_requests:
            self.states[data.request_id] = CachedRequestState.from_new(data)
        for delta in scheduled.cached_requests:
            state = self.states[delta.request_id]
            state.num_computed_tokens = delta.num_computed_tokens
            for group_ids, new_ids in zip(state.block_ids, delta.new_block_ids, strict=True):
                group_ids.extend(new_ids)

    def __getitem__(self, request_id: str) -> CachedRequestState:
        return self.states[request_id]

    def __len__(self) -> int:
        return len(self.states)
