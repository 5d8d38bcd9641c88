"""Continuous batching: which requests run this step and how many tokens each.

No prefill or decode phases: every scheduled request's `num_computed_tokens` catches up
with its `num_tokens` under a per-step token budget, so chunked prefill, decode, prefix-cache
hits and recompute after preemption are one path. Running requests go first (in priority
order), then waiting ones while the budget, the batch size and the KV pool allow. When the
pool runs out, the lowest-priority running request is preempted: its blocks are freed and
it is recomputed later from prompt + emitted tokens (identical results: sampling depends
only on the seed and the output index). A waiting request that finds no slot or KV room
preempts running requests of lower priority the same way, before the step is scheduled.

With `async_scheduling` the next step is scheduled while the previous one still runs:
scheduling advances `num_computed_tokens` at once and counts the token each sampling step
will produce as a placeholder, so a decode is scheduled for a token the runner has sampled
but the scheduler has not seen yet (the runner feeds it). A request is not scheduled past
its max_tokens or max_model_len on placeholders; a preempted request waits until its steps
in flight are back (their tokens are dropped: it recomputes and samples them again, the
same tokens, since a draw depends only on the seed and the output index).

LoRA: a waiting request starts only if the running requests then use at most `max_loras`
distinct adapters (so no step mixes more); once one waits for that, later adapter requests
wait behind it (base-model ones still start), so busy adapters cannot starve a new one.
"""

from __future__ import annotations

import bisect
import heapq
import time
from dataclasses import dataclass

from oss_serve.workers.engine.kv_cache_manager import ComputedBlocks, KVCacheManager
from oss_serve.workers.engine.request import Request, RequestStatus
from oss_serve.workers.engine.scheduler_output import (
    CachedRequestData,
    EngineCoreOutput,
    ModelRunnerOutput,
    NewRequestData,
    SchedulerOutput,
)
from oss_serve.workers.lora.slot_table import AdapterSlotTable
from oss_serve.workers.runner.logits_processors import processors_ready


@dataclass
class SchedulerConfig:
    max_num_batched_tokens: int = 2048  # token budget per step
    max_num_seqs: int = 256  # running requests at most
    max_model_len: int = 4096
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0  # >0 caps one request's chunk per step
    async_scheduling: bool = False  # schedule step N+1 before step N's tokens are back


@dataclass
class SchedulerStats:
    num_preemptions: int = 0
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        kv_cache: KVCacheManager,
        lora_slots: AdapterSlotTable | None = None,
    ) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.lora_slots = lora_slots
        self.requests: dict[str, Request] = {}
        self.running: list[Request] = []  # kept in sort_key order
        self._waiting: list[tuple[tuple[int, float, str], Request]] = []  # heap; lazy removal
        self._waiting_ids: set[str] = set()
        self._freed_ids: set[str] = set()
        self.stats = SchedulerStats()

    # --- queue management ---------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        return len(self._waiting_ids)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished_requests(self) -> bool:
        return bool(self.running or self._waiting_ids)

    @property
    def num_free_slots(self) -> int:
        return max(0, self.config.max_num_seqs - self.num_running - self.num_waiting)

    def committed_blocks(self) -> int:
        """KV blocks the requests already here will still claim: the rest of each running
        one's tokens plus a decode block; all of each waiting one's (no cache hit assumed)."""
        need = self.kv_cache.num_blocks_needed
        running = sum(
            need(r.num_tokens + r.num_output_placeholders) - need(r.num_computed_tokens) + 1
            for r in self.running
        )
        waiting = [self.requests.get(request_id) for request_id in self._waiting_ids]
        return running + sum(need(r.num_tokens) + 1 for r in waiting if r is not None)

    def add_request(self, request: Request) -> None:
        self.requests[request.request_id] = request
        self._push_waiting(request)

    def _push_waiting(self, request: Request) -> None:
        heapq.heappush(self._waiting, (request.sort_key(), request))
        self._waiting_ids.add(request.request_id)

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> list[Request]:
        """End requests from outside the step (abort, stop string); returns those that ended."""
        ended = []
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None or request.is_finished:
                continue
            was_running = request.status == RequestStatus.RUNNING
            if was_running:
                self.running.remove(request)
            self._waiting_ids.discard(request_id)
            request.status = status
            self._release(request, was_running)
            ended.append(request)
        return ended

    def _release(self, request: Request, was_running: bool = True) -> None:
        if was_running:
            self._release_adapter(request)
        self.kv_cache.free(request)
        self._freed_ids.add(request.request_id)
        self.requests.pop(request.request_id, None)

    # --- scheduling ---------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        self._preempt_for_priority()  # before anything is scheduled: victims hold no new blocks
        output = SchedulerOutput(freed_request_ids=self._freed_ids)
        self._freed_ids = set()
        budget = self.config.max_num_batched_tokens
        budget, preempted = self._schedule_running(output, budget)
        if not preempted:
            self._schedule_waiting(output, budget)
        if self.config.async_scheduling:
            self._advance_scheduled(output)
        return output

    def _advance_scheduled(self, output: SchedulerOutput) -> None:
        """Count the step as computed now; a step that reaches the end samples a placeholder."""
        for request_id, num_tokens in output.num_scheduled_tokens.items():
            request = self.requests[request_id]
            self._advance(request, num_tokens)
            request.num_inflight_steps += 1
            if request.num_computed_tokens == request.num_tokens + request.num_output_placeholders:
                request.num_output_placeholders += 1

    def _advance(self, request: Request, num_tokens: int) -> None:
        if request.num_computed_tokens < request.num_prompt_tokens:
            self.stats.num_prompt_tokens += num_tokens
        request.num_computed_tokens += num_tokens

    def _chunk(self, request: Request, num_computed: int, budget: int) -> int:
        num_new = request.num_tokens + request.num_output_placeholders - num_computed
        if self.config.long_prefill_token_threshold > 0:
            num_new = min(num_new, self.config.long_prefill_token_threshold)
        return min(num_new, budget)

    def _schedule_running(self, output: SchedulerOutput, budget: int) -> tuple[int, bool]:
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            if self._ends_on_placeholders(request):
                index += 1  # its last token is in flight: it finishes when that comes back
                continue
            num_new = self._chunk(request, request.num_computed_tokens, budget)
            new_block_ids = None
            while num_new > 0:
                new_block_ids = self.kv_cache.allocate_slots(request, num_new)
                if new_block_ids is not None:
                    break
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
            if new_block_ids is None:
                if request.status == RequestStatus.RUNNING:
                    index += 1  # nothing to compute (should not happen) or preempted itself
                continue
            output.cached_requests.append(
                CachedRequestData(request.request_id, new_block_ids, request.num_computed_tokens)
            )
            output.num_scheduled_tokens[request.request_id] = num_new
            budget -= num_new
            index += 1
        return budget, preempted

    def _ends_on_placeholders(self, request: Request) -> bool:
        """The tokens in flight reach max_tokens or max_model_len: schedule nothing more."""
        pending = request.num_output_placeholders
        return pending > 0 and (
            request.num_output_tokens + pending >= request.max_tokens
            or request.num_tokens + pending >= self.config.max_model_len
        )

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self._release_adapter(request)
        self.kv_cache.free(request)
        self._freed_ids.add(request.request_id)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_output_placeholders = 0
        request.num_preemptions += 1
        request.metrics.num_preemptions += 1
        self.stats.num_preemptions += 1
        self._push_waiting(request)

    def _preempt_for_priority(self) -> None:
        """The first waiting request, when no batch slot or KV room is left for its first
        chunk, preempts running requests of strictly lower priority (higher value), lowest
        first, and only as many as make room (none if even all of them would not)."""
        head = self._first_waiting()
        if head is None or self._must_wait(head):
            return
        victims = [r for r in reversed(self.running) if r.priority > head.priority]
        if not victims:
            return
        needed = self.kv_cache.num_blocks_needed(
            self._chunk(head, 0, self.config.max_num_batched_tokens)
        )
        reclaimed = 0
        for count in range(len(victims) + 1):
            if count:
                reclaimed += self.kv_cache.num_reclaimable_blocks(victims[count - 1].request_id)
            running = len(self.running) - count
            free_blocks = self.kv_cache.num_free_blocks + reclaimed
            if running < self.config.max_num_seqs and needed + running <= free_blocks:
                for victim in victims[:count]:
                    self._preempt(victim)
                return

    def _first_waiting(self) -> Request | None:
        while self._waiting:
            request = self._waiting[0][1]
            if request.request_id in self._waiting_ids and not request.is_finished:
                return request
            heapq.heappop(self._waiting)  # aborted while waiting
        return None

    def _schedule_waiting(self, output: SchedulerOutput, budget: int) -> None:
        skipped: list[Request] = []
        adapter_blocked = False  # a request waits for an adapter slot: others queue behind it
        while self._waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            _, request = heapq.heappop(self._waiting)
            if request.request_id not in self._waiting_ids or request.is_finished:
                continue  # aborted while waiting
            if self._must_wait(request):
                skipped.append(request)
                continue
            if request.lora_request is not None and not self._adapter_fits(
                request, adapter_blocked
            ):
                adapter_blocked = True
                skipped.append(request)
                continue
            if not self._admit(request, output, budget):
                heapq.heappush(self._waiting, (request.sort_key(), request))
                break
            budget -= output.num_scheduled_tokens[request.request_id]
        for request in skipped:
            heapq.heappush(self._waiting, (request.sort_key(), request))

    def _admit(self, request: Request, output: SchedulerOutput, budget: int) -> bool:
        computed = self.kv_cache.get_computed_blocks(request)
        num_new = self._chunk(request, computed.num_tokens, budget)
        remaining = request.num_tokens - computed.num_tokens
        if num_new < remaining and not self.config.enable_chunked_prefill:
            return False
        if self.kv_cache.allocate_slots(request, num_new, computed) is None:
            return False
        self._start_running(request, computed, num_new, output)
        return True

    def _adapter_fits(self, request: Request, behind_a_waiting_adapter: bool) -> bool:
        """Can `request` start without a step mixing more than max_loras adapters?"""
        if self.lora_slots is None:
            return False  # the engine refuses adapter requests without LoRA; never reached
        if behind_a_waiting_adapter:  # let the running adapters drain for the one waiting
            return False
        return self.lora_slots.can_start(request.lora_request)

    def _acquire_adapter(self, request: Request, output: SchedulerOutput) -> int:
        """The device slot of the request's adapter (-1: base model), loaded this step if new."""
        if request.lora_request is None or self.lora_slots is None:
            return -1
        slot, load = self.lora_slots.acquire(request.lora_request)
        if load:
            output.lora_loads[slot] = request.lora_request
        return slot

    def _release_adapter(self, request: Request) -> None:
        if request.lora_request is not None and self.lora_slots is not None:
            self.lora_slots.release(request.lora_request)

    def _start_running(
        self, request: Request, computed: ComputedBlocks, num_new: int, output: SchedulerOutput
    ) -> None:
        self._waiting_ids.discard(request.request_id)
        request.status = RequestStatus.RUNNING
        request.num_computed_tokens = computed.num_tokens
        if request.num_cached_tokens < 0:
            request.num_cached_tokens = computed.num_tokens
            request.metrics.first_scheduled_time = time.time()
        bisect.insort(self.running, request, key=Request.sort_key)
        output.new_requests.append(
            NewRequestData(
                request_id=request.request_id,
                token_ids=list(request.all_token_ids),
                num_prompt_tokens=request.num_prompt_tokens,
                sampling_params=request.sampling_params,
                seed=request.seed,
                eos_token_ids=request.eos_token_ids,
                block_ids=self.kv_cache.block_ids(request.request_id),
                num_computed_tokens=computed.num_tokens,
                lora_slot=self._acquire_adapter(request, output),
            )
        )
        output.num_scheduled_tokens[request.request_id] = num_new

    def _must_wait(self, request: Request) -> bool:
        """n > 1 siblings wait for the leader's prompt (then share it); processors may be busy;
        a preempted request waits for its steps in flight."""
        if not processors_ready(request.sampling_params) or request.num_inflight_steps:
            return True
        group = request.siblings
        if group is None or group.leader_id == request.request_id:
            return False
        leader = self.requests.get(group.leader_id)
        return leader is not None and leader.num_computed_tokens < leader.num_prompt_tokens

    # --- results ------------------------------------------------------------------------------
    def update_from_output(
        self, scheduled: SchedulerOutput, result: ModelRunnerOutput
    ) -> list[EngineCoreOutput]:
        """Advance each scheduled request by its computed tokens and sampled token."""
        row_of = {request_id: row for row, request_id in enumerate(result.request_ids)}
        outputs = []
        for request_id, num_tokens in scheduled.num_scheduled_tokens.items():
            request = self.requests.get(request_id)
            if request is not None and self.config.async_scheduling:
                request.num_inflight_steps -= 1
            if request is None or request.status != RequestStatus.RUNNING:
                continue  # ended (or was preempted) while the step ran: its token is dropped
            row = row_of.get(request_id)
            sampled = result.sampled_token_ids[row] if row is not None else []
            if self.config.async_scheduling:
                request.num_output_placeholders -= len(sampled)  # counted when scheduled
            else:
                self._advance(request, num_tokens)
            core_output = EngineCoreOutput(
                request_id,
                new_token_ids=[],
                prompt_logprobs=result.prompt_logprobs.get(request_id),
                num_cached_tokens=max(request.num_cached_tokens, 0),
            )
            self._append_sampled(request, sampled, result, row, core_output)
            if core_output.new_token_ids or core_output.prompt_logprobs or core_output.finished:
                outputs.append(core_output)
        return outputs

    def _append_sampled(
        self,
        request: Request,
        sampled: list[int],
        result: ModelRunnerOutput,
        row: int | None,
        core_output: EngineCoreOutput,
    ) -> None:
        for token_id in sampled:
            request.append_output_tokens([token_id])
            core_output.new_token_ids.append(token_id)
            self.stats.num_generation_tokens += 1
            now = time.time()
            request.metrics.first_token_time = request.metrics.first_token_time or now
            request.metrics.last_token_time = now
            if self._check_stop(request):
                break
        if row is not None and result.logprobs and result.logprobs[row] is not None:
            entry = result.logprobs[row]
            assert entry is not None
            core_output.new_logprobs.append(entry)
        if request.is_finished:
            core_output.finish_reason = request.status.finish_reason
            core_output.stop_reason = request.stop_reason
            request.metrics.finished_time = time.time()
            self.running.remove(request)
            self._release(request)

    def _check_stop(self, request: Request) -> bool:
        params = request.sampling_params
        last = request.output_token_ids[-1]
        if request.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and last in request.eos_token_ids:
                request.status = RequestStatus.FINISHED_STOPPED
                return True
            if last in (params.stop_token_ids or ()):
                request.status = RequestStatus.FINISHED_STOPPED
                request.stop_reason = last
                return True
        if (
            request.num_output_tokens >= request.max_tokens
            or request.num_tokens >= self.config.max_model_len
        ):
            request.status = RequestStatus.FINISHED_LENGTH_CAPPED
            return True
        return False
