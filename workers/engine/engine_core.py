"""The engine loop's body: add and abort requests, and `step()` = schedule -> execute -> update.

Single-threaded; `LLM` drives it directly and `AsyncEngine` drives it from a background
thread. Requests are validated here, before they touch the scheduler, so a bad one raises
`InvalidRequestError` and everything else keeps running.

With async scheduling (vLLM's `--async-scheduling`; on by default when a local model runs
on CUDA) up to two steps are in flight: step N+1 is scheduled and queued while step N runs
on the device, then N's tokens are taken and post-processed while N+1 runs. The runner
executes the steps in order and feeds each decode the token it sampled the step before,
so the tokens are those of synchronous stepping.
"""

from __future__ import annotations

import itertools
import operator
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from oss_serve.common.logging import get_logger
from oss_serve.common.vocab import STOP_TOKEN_IDS
from oss_serve.workers.engine.admission import AdmissionCapacity
from oss_serve.workers.engine.detokenizer import Tokenizer
from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.engine.kv_cache_manager import KVCacheManager
from oss_serve.workers.engine.metrics import EngineStats, StepTimer
from oss_serve.workers.engine.output_processor import OutputProcessor
from oss_serve.workers.engine.outputs import RequestOutput
from oss_serve.workers.engine.request import Request, RequestStatus, SiblingGroup
from oss_serve.workers.engine.sampling_params import InvalidRequestError, SamplingParams
from oss_serve.workers.engine.scheduler import Scheduler, SchedulerConfig
from oss_serve.workers.engine.scheduler_output import ModelRunnerOutput, SchedulerOutput
from oss_serve.workers.lora.catalog import AdapterCatalog
from oss_serve.workers.lora.peft_format import AdapterError
from oss_serve.workers.lora.request import LoRARequest
from oss_serve.workers.lora.slot_table import AdapterSlotTable
from oss_serve.workers.runner.executor import Executor, LocalExecutor
from oss_serve.workers.runner.logits_processors import as_processors

log = get_logger(__name__)

MAX_STEPS_IN_FLIGHT = 2  # async scheduling: the step running and the one queued behind it


class PendingStep(Protocol):
    def result(self) -> ModelRunnerOutput: ...


@dataclass
class _StepInFlight:
    scheduled: SchedulerOutput
    pending: PendingStep
    schedule_s: float


class EngineCore:
    def __init__(
        self, config: EngineConfig, executor: Executor, tokenizer: Tokenizer | None = None
    ) -> None:
        self.config = config
        self.executor = executor
        model_config = executor.model_config
        self.vocab_size = int(model_config.vocab_size)
        self.max_model_len = int(config.max_model_len or model_config.max_position_embeddings)
        self.eos_token_ids = frozenset(t for t in _eos_ids(model_config) if t < self.vocab_size)
        spec = executor.kv_cache_spec()
        num_blocks = config.num_kv_blocks or spec.num_blocks_for_budget(
            executor.available_kv_cache_bytes()
        )
        self.kv_cache = KVCacheManager(
            spec,
            num_blocks,
            enable_caching=config.enable_prefix_caching,
            retention_interval_tokens=config.sliding_retention_interval,
        )
        self._check_pool_fits_one_request(num_blocks)
        self._log_kv_capacity(executor.device_type)
        executor.initialize_kv_cache(num_blocks)
        self.async_scheduling = wants_async_scheduling(config, executor)
        self._steps_in_flight: deque[_StepInFlight] = deque()
        self.adapters: AdapterCatalog | None = None
        lora_slots = None
        if config.enable_lora:
            self.adapters = AdapterCatalog(model_config, max_lora_rank=config.max_lora_rank)
            lora_slots = AdapterSlotTable(config.max_loras)
            for name, path in config.lora_modules.items():
                self.adapters.add(name, path)
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_batched_tokens=config.max_num_batched_tokens,
                max_num_seqs=config.max_num_seqs,
                max_model_len=self.max_model_len,
                enable_chunked_prefill=config.enable_chunked_prefill,
                long_prefill_token_threshold=config.long_prefill_token_threshold,
                async_scheduling=self.async_scheduling,
            ),
            self.kv_cache,
            lora_slots,
        )
        self.output_processor = OutputProcessor(tokenizer)
        self.timer = StepTimer()
        self.requests_finished = 0
        self._rng = random.Random(config.seed)
        self._family_counter = itertools.count()

    @classmethod
    def from_config(cls, config: EngineConfig, executor: Executor | None = None) -> EngineCore:
        """Load the model (unless an executor is given) and the o200k_harmony tokenizer."""
        if executor is None:
            from oss_serve.workers.runner.executor import LocalExecutor

            executor = LocalExecutor(config)
        tokenizer = None
        if not config.skip_tokenizer_init:
            from oss_serve.common.vocab import o200k_harmony

            tokenizer = o200k_harmony()
        return cls(config, executor, tokenizer)

    def _check_pool_fits_one_request(self, num_blocks: int) -> None:
        chunk = min(self.config.max_num_batched_tokens, self.max_model_len)
        needed = (
            self.kv_cache.num_blocks_needed(self.max_model_len)
            + chunk // self.config.block_size
            + 1
        )
        if num_blocks - 1 < needed:
            raise ValueError(
                f"the KV cache has {num_blocks - 1} usable blocks but one request of "
                f"max_model_len={self.max_model_len} tokens needs about {needed}; give the cache "
                "more memory (kv_cache_memory / gpu_memory_utilization) or lower max_model_len"
            )

    def _log_kv_capacity(self, device_type: str) -> None:
        """vLLM's start-up lines: tokens the cache holds, and how many longest requests fit."""
        tokens = self.kv_cache.num_usable_blocks * self.config.block_size
        per_request = self.kv_cache.num_blocks_needed(self.max_model_len) * self.config.block_size
        kind = "GPU" if device_type == "cuda" else "CPU"
        log.info(f"{kind} KV cache size: {tokens:,} tokens")
        log.info(
            f"Maximum concurrency for {self.max_model_len:,} tokens per request: "
            f"{tokens / per_request:.2f}x"
        )

    # --- requests -----------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: SamplingParams | None = None,
        *,
        priority: int = 0,
        prompt: str | None = None,
        arrival_time: float | None = None,
        resume_output_token_ids: Sequence[int] = (),
        lora_request: LoRARequest | None = None,
    ) -> None:
        """Queue a request (n > 1 becomes n sequences sharing the prompt); raises on bad input.

        `lora_request`: run it with that LoRA adapter (an unknown one is loaded and checked
        first, as vLLM does); None runs the base model.

        `resume_output_token_ids`: output tokens the request already emitted (on a replica
        that died); it continues after them as if never interrupted (sampling index,
        penalties, min/max_tokens, stop strings) and outputs only what follows them.
        """
        params = sampling_params or SamplingParams()
        tokens = self._validate(request_id, prompt_token_ids, params)
        lora = self._resolve_adapter(lora_request)
        max_tokens = self.max_model_len - len(tokens)
        if params.max_tokens is not None:
            max_tokens = min(max_tokens, params.max_tokens)
        resumed = self._validate_resume(resume_output_token_ids, params, max_tokens)
        arrival = time.time() if arrival_time is None else arrival_time
        base_seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        child_ids = (
            [request_id] if params.n == 1 else [f"{i}_{request_id}" for i in range(params.n)]
        )
        siblings = SiblingGroup(child_ids[0], params.n) if params.n > 1 else None
        private = (
            None if self.config.enable_prefix_caching else f"private-{next(self._family_counter)}"
        )
        keys = [k for k in (lora.kv_key if lora else None, private) if k]
        extra_key = "|".join(keys) or None
        self.output_processor.add_request(
            request_id, prompt, tokens, params, child_ids, arrival, resumed
        )
        for index, child_id in enumerate(child_ids):
            child_params = params if index == 0 else _fork_params(params)
            self.scheduler.add_request(
                Request(
                    child_id, tokens, child_params,
                    seed=base_seed + index, eos_token_ids=self.eos_token_ids,
                    block_size=self.config.block_size, max_tokens=max_tokens, priority=priority,
                    arrival_time=arrival, kv_extra_key=extra_key, parent_id=request_id,
                    index=index, siblings=siblings, resumed_output_token_ids=resumed,
                    lora_request=lora,
                )
            )  # fmt: skip

    def _validate(
        self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams
    ) -> list[int]:
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError("sampling_params must be a SamplingParams", "sampling_params")
        if self.output_processor.has_request(request_id):
            raise InvalidRequestError(f"request id {request_id!r} is already running", "request_id")
        try:
            tokens = [operator.index(t) for t in prompt_token_ids]
        except TypeError as exc:
            raise InvalidRequestError("prompt token ids must be integers", field="prompt") from exc
        if not tokens:
            raise InvalidRequestError("the prompt is empty", field="prompt")
        if any(not 0 <= t < self.vocab_size for t in tokens):
            raise InvalidRequestError(
                f"prompt token ids must be integers in [0, {self.vocab_size})", field="prompt"
            )
        if len(tokens) > self.max_model_len:
            raise InvalidRequestError(
                f"the prompt has {len(tokens)} tokens, more than max_model_len="
                f"{self.max_model_len}; shorten it", field="prompt",
            )  # fmt: skip
        for name, ids in (
            ("logit_bias", params.logit_bias or {}),
            ("stop_token_ids", params.stop_token_ids or []),
        ):
            if any(not 0 <= t < self.vocab_size for t in ids):
                raise InvalidRequestError(
                    f"{name} token ids must be in [0, {self.vocab_size})", name
                )
        try:
            as_processors(params.logits_processors)
        except TypeError as exc:
            raise InvalidRequestError(str(exc), field="logits_processors") from exc
        self.executor.check_request(params)
        return tokens

    def _resolve_adapter(self, lora_request: LoRARequest | None) -> LoRARequest | None:
        """The engine's own LoRARequest for the caller's (loaded and checked if new)."""
        if lora_request is None:
            return None
        if self.adapters is None:
            raise InvalidRequestError(
                "this engine serves no LoRA adapters (start it with enable_lora)", "lora_request"
            )
        try:
            return self.adapters.register(lora_request)
        except AdapterError as err:
            raise InvalidRequestError(str(err), "lora_request") from err

    # --- adapters -----------------------------------------------------------------------------
    def add_lora(self, name: str, path: str) -> LoRARequest:
        """Serve the PEFT adapter at `path` as `name` (vLLM's load_lora_adapter); raises
        AdapterError (corrupt, rank above max_lora_rank, wrong shapes) and keeps serving."""
        if self.adapters is None:
            raise AdapterError("this engine serves no LoRA adapters (start it with enable_lora)")
        return self.adapters.add(name, path)

    def remove_lora(self, name: str) -> bool:
        """Stop serving `name`; requests already running with it finish. False if unknown."""
        if self.adapters is None or self.adapters.get(name) is None:
            return False
        removed = self.adapters.remove(name)
        if self.scheduler.lora_slots is not None:
            self.scheduler.lora_slots.forget(removed.lora_int_id)
        return True

    def list_loras(self) -> list[str]:
        return [] if self.adapters is None else self.adapters.names()

    def lora_request(self, name: str) -> LoRARequest | None:
        """The adapter served as `name`, if any."""
        return None if self.adapters is None else self.adapters.get(name)

    def held_loras(self) -> list[str]:
        """Adapters in device slots now (a request of one of these starts without a load)."""
        slots = self.scheduler.lora_slots
        return [] if slots is None else [lora.lora_name for lora in slots.held()]

    def _validate_resume(
        self, token_ids: Sequence[int], params: SamplingParams, max_tokens: int
    ) -> list[int]:
        field = "resume_output_token_ids"
        try:
            resumed = [operator.index(t) for t in token_ids]
        except TypeError as exc:
            raise InvalidRequestError(f"{field} must be integers", field) from exc
        if not resumed:
            return resumed
        if params.n != 1:
            raise InvalidRequestError(f"{field} needs n == 1 (one sequence to continue)", field)
        if any(not 0 <= t < self.vocab_size for t in resumed):
            raise InvalidRequestError(f"{field} must be in [0, {self.vocab_size})", field)
        if len(resumed) >= max_tokens:
            raise InvalidRequestError(
                f"{len(resumed)} resumed tokens leave no room under max_tokens / max_model_len "
                f"({max_tokens} output tokens at most): the request has already finished",
                field,
            )
        return resumed

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """End a request now; returns its final output (finish_reason "abort") if it was live."""
        child_ids = self.output_processor.child_ids(request_id)
        self.scheduler.finish_requests(child_ids, RequestStatus.FINISHED_ABORTED)
        output = self.output_processor.abort(request_id)
        if output is not None:
            self.requests_finished += 1
        return output

    def has_unfinished_requests(self) -> bool:
        return (
            bool(self._steps_in_flight)
            or self.scheduler.has_unfinished_requests()
            or self.output_processor.num_unfinished > 0
        )

    # --- the step -----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One engine iteration; returns the RequestOutputs it produced."""
        if self.async_scheduling:
            return self._step_async()
        started = time.perf_counter()
        scheduled = self.scheduler.schedule()
        scheduled_at = time.perf_counter()
        if scheduled.is_empty and not scheduled.freed_request_ids:
            result = ModelRunnerOutput()
        else:
            result = self.executor.execute_model(scheduled)
        executed_at = time.perf_counter()
        outputs = self._update(scheduled, result)
        self.timer.record(
            schedule_s=scheduled_at - started,
            execute_s=executed_at - scheduled_at,
            update_s=time.perf_counter() - executed_at,
            num_tokens=scheduled.total_num_scheduled_tokens,
        )
        return outputs

    def _update(self, scheduled: SchedulerOutput, result: ModelRunnerOutput) -> list[RequestOutput]:
        """A step's tokens into the scheduler, then outputs, stop strings and KV events."""
        core_outputs = self.scheduler.update_from_output(scheduled, result)
        outputs, stopped = self.output_processor.process(core_outputs)
        self.scheduler.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        self.requests_finished += sum(1 for o in outputs if o.finished)
        self._publish_kv_events()
        return outputs

    def _step_async(self) -> list[RequestOutput]:
        """Queue the next step if there is room; when one step is queued and the runner is
        still busy with it, return at once (the next call schedules the step after it);
        otherwise take the oldest step's tokens."""
        queued = False
        if len(self._steps_in_flight) < MAX_STEPS_IN_FLIGHT:
            started = time.perf_counter()
            scheduled = self.scheduler.schedule()
            if not scheduled.is_empty or scheduled.freed_request_ids:
                assert isinstance(self.executor, LocalExecutor)
                pending = self.executor.submit(scheduled)
                elapsed = time.perf_counter() - started
                self._steps_in_flight.append(_StepInFlight(scheduled, pending, elapsed))
                queued = True
        if not self._steps_in_flight or (
            queued and len(self._steps_in_flight) < MAX_STEPS_IN_FLIGHT
        ):
            return []
        step = self._steps_in_flight.popleft()
        waited_at = time.perf_counter()
        result = step.pending.result()
        executed_at = time.perf_counter()
        outputs = self._update(step.scheduled, result)
        self.timer.record(
            schedule_s=step.schedule_s,
            execute_s=executed_at - waited_at,
            update_s=time.perf_counter() - executed_at,
            num_tokens=step.scheduled.total_num_scheduled_tokens,
        )
        return outputs

    def _publish_kv_events(self) -> None:
        events = self.kv_cache.take_events()
        if events and self.config.kv_event_sink is not None:
            try:
                self.config.kv_event_sink(events)
            except Exception:  # a broken sink must not stop the engine
                log.exception("kv event sink failed", num_events=len(events))

    # --- introspection ------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        scheduler_stats = self.scheduler.stats
        prefix = self.kv_cache.prefix_stats
        return EngineStats(
            running=self.scheduler.num_running,
            waiting=self.scheduler.num_waiting,
            max_running=self.config.max_num_seqs,
            kv_usage=self.kv_cache.usage(),
            kv_blocks_free=self.kv_cache.num_free_blocks,
            kv_blocks_total=self.kv_cache.num_usable_blocks,
            prefix_cache_queries=prefix.queries,
            prefix_cache_hits=prefix.hits,
            num_preemptions=scheduler_stats.num_preemptions,
            prompt_tokens=scheduler_stats.num_prompt_tokens,
            generation_tokens=scheduler_stats.num_generation_tokens,
            num_steps=self.timer.num_steps,
            step_time_s=self.timer.total_s,
            scheduler_time_s=self.timer.schedule_s + self.timer.update_s,
            model_time_s=self.timer.execute_s,
            requests_finished=self.requests_finished,
            lora_adapters=tuple(self.list_loras()),
            lora_held=tuple(self.held_loras()),
        )

    def admission_capacity(self) -> AdmissionCapacity:
        """Free batch slots and KV blocks left after what running and waiting requests need."""
        return self.kv_cache.admission_capacity(
            self.scheduler.num_free_slots, self.scheduler.committed_blocks()
        )

    def can_admit(self, num_prompt_tokens: int) -> bool:
        """Back-pressure: room to start one more prompt of this size now."""
        if num_prompt_tokens > self.max_model_len:
            return True  # let it in to be rejected with a clear error
        return self.admission_capacity().admits([num_prompt_tokens])

    def shutdown(self) -> None:
        self._steps_in_flight.clear()
        self.executor.shutdown()


def wants_async_scheduling(config: EngineConfig, executor: Executor) -> bool:
    """Async scheduling needs an executor that queues steps in order (LocalExecutor); by
    default it is on where the model runs on CUDA."""
    if not isinstance(executor, LocalExecutor):
        return False
    if config.async_scheduling is None:
        return executor.device.type == "cuda"
    return config.async_scheduling


def _eos_ids(model_config: Any) -> list[int]:
    ids = list(STOP_TOKEN_IDS)
    configured = getattr(model_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.append(configured)
    elif isinstance(configured, list | tuple):
        ids.extend(int(t) for t in configured)
    return ids


def _fork_params(params: SamplingParams) -> SamplingParams:
    """A sibling's parameters: the same, with its own copy of stateful logits processors."""
    if not params.logits_processors:
        return params
    return params.clone(
        logits_processors=[p.fork() for p in as_processors(params.logits_processors)]
    )
