"""The engine's record of one sequence: its tokens, how far its KV is computed, its state.

With n > 1 a user request becomes n of these ("children") that share the prompt's blocks.
`num_computed_tokens` catching up to `num_tokens` is the only notion of progress: prefill,
chunked prefill, prefix-cache hits and recompute after preemption are all the same path.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass

from oss_serve.common.kv_hash import hash_block
from oss_serve.workers.engine.outputs import RequestMetrics
from oss_serve.workers.engine.sampling_params import SamplingParams
from oss_serve.workers.lora.request import LoRARequest


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH_CAPPED = 4
    FINISHED_ABORTED = 5

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


@dataclass
class SiblingGroup:
    """The n children of one user request; the first computes the shared prompt."""

    leader_id: str
    size: int


class Request:
    """One sequence in the engine (a child of a user request when n > 1)."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        *,
        seed: int,
        eos_token_ids: frozenset[int],
        block_size: int,
        max_tokens: int,
        priority: int = 0,
        arrival_time: float | None = None,
        kv_extra_key: str | None = None,
        parent_id: str | None = None,
        index: int = 0,
        siblings: SiblingGroup | None = None,
        resumed_output_token_ids: Sequence[int] = (),
        lora_request: LoRARequest | None = None,
    ) -> None:
        self.request_id = request_id
        self.lora_request = lora_request
        self.parent_id = parent_id or request_id
        self.index = index
        self.siblings = siblings
        self.prompt_token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(self.prompt_token_ids)
        # a request resumed elsewhere continues after the tokens it already emitted there
        self.output_token_ids: list[int] = list(resumed_output_token_ids)
        self.all_token_ids: list[int] = [*self.prompt_token_ids, *self.output_token_ids]
        self.sampling_params = sampling_params
        self.seed = seed
        self.eos_token_ids = eos_token_ids
        self.max_tokens = max_tokens
        self.priority = priority
        self.arrival_time = time.time() if arrival_time is None else arrival_time
        self.status = RequestStatus.WAITING
        self.stop_reason: int | str | None = None
        self.num_computed_tokens = 0
        # async scheduling: tokens that steps in flight will sample (not known yet), and
        # those steps; num_computed_tokens already counts what they compute
        self.num_output_placeholders = 0
        self.num_inflight_steps = 0
        self.num_cached_tokens = -1  # prefix-cache hit on first schedule; -1 = not scheduled yet
        self.num_preemptions = 0
        self.metrics = RequestMetrics(arrival_time=self.arrival_time)
        self.block_size = block_size
        self.kv_extra_key = kv_extra_key
        self.block_hashes: list[int] = []
        self._extend_block_hashes()

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def needs_prompt_logprobs(self) -> bool:
        return self.sampling_params.prompt_logprobs is not None

    def append_output_tokens(self, token_ids: list[int]) -> None:
        self.output_token_ids.extend(token_ids)
        self.all_token_ids.extend(token_ids)
        self._extend_block_hashes()

    def _extend_block_hashes(self) -> None:
        """Hash every newly full block (chained); prefix caching and KV events key on these."""
        size = self.block_size
        parent = self.block_hashes[-1] if self.block_hashes else None
        for start in range(len(self.block_hashes) * size, self.num_tokens - size + 1, size):
            parent = hash_block(parent, self.all_token_ids[start : start + size], self.kv_extra_key)
            self.block_hashes.append(parent)

    def sort_key(self) -> tuple[int, float, str]:
        """Scheduling order: lower priority value first, then arrival (FCFS)."""
        return (self.priority, self.arrival_time, self.request_id)

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, status={self.status.name}, "
            f"tokens={self.num_tokens}, computed={self.num_computed_tokens})"
        )
