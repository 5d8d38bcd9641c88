"""An EngineCore whose driver work overlaps the executor's forward pass (the ranks' of a
TP/EP engine), and the choice of core for an executor.

EngineCore.step() is schedule -> execute -> update -> post-process, all in series. Here,
once step N's result is in and the scheduler has been updated, step N+1 is scheduled and
dispatched to the ranks *before* step N's outputs are post-processed (detokenized, stop
strings checked, RequestOutputs built, KV events published): that CPU work runs while
the executor computes. A request that a stop string ends during that window has already been
scheduled for one more step; the scheduler ignores that step's token for it (it is no
longer running) and its blocks are freed with the next step, as for an abort.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from oss_serve.workers.engine.detokenizer import Tokenizer
from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.engine.engine_core import EngineCore
from oss_serve.workers.engine.outputs import RequestOutput
from oss_serve.workers.engine.request import RequestStatus
from oss_serve.workers.engine.scheduler_output import ModelRunnerOutput, SchedulerOutput
from oss_serve.workers.runner.executor import Executor, ExecutorFactory, LocalExecutor


class PendingStep(Protocol):
    def result(self) -> ModelRunnerOutput: ...


@runtime_checkable
class PipelinedExecutor(Executor, Protocol):
    def submit(self, scheduled: SchedulerOutput) -> PendingStep: ...


@dataclass
class _InFlight:
    scheduled: SchedulerOutput
    pending: PendingStep
    schedule_s: float


class PipelinedEngineCore(EngineCore):
    executor: PipelinedExecutor

    def __init__(
        self, config: EngineConfig, executor: PipelinedExecutor, tokenizer: Tokenizer | None = None
    ) -> None:
        super().__init__(config, executor, tokenizer)
        self._inflight: _InFlight | None = None

    def has_unfinished_requests(self) -> bool:
        return self._inflight is not None or super().has_unfinished_requests()

    def step(self) -> list[RequestOutput]:
        """Finish the step in flight (dispatching one first if none is) and start the next."""
        if self._inflight is None:
            self._dispatch()
        inflight = self._inflight
        if inflight is None:
            return []
        waited_at = time.perf_counter()
        result = inflight.pending.result()
        executed_at = time.perf_counter()
        self._inflight = None
        core_outputs = self.scheduler.update_from_output(inflight.scheduled, result)
        dispatch_s = self._dispatch()  # the ranks start step N+1 while we post-process step N
        outputs, stopped = self.output_processor.process(core_outputs)
        self.scheduler.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        self.requests_finished += sum(1 for o in outputs if o.finished)
        self._publish_kv_events()
        self.timer.record(
            schedule_s=inflight.schedule_s,
            execute_s=executed_at - waited_at,
            update_s=time.perf_counter() - executed_at - dispatch_s,
            num_tokens=inflight.scheduled.total_num_scheduled_tokens,
        )
        return outputs

    def _dispatch(self) -> float:
        """Schedule the next step and send it to the executor; returns the seconds it took."""
        started = time.perf_counter()
        scheduled = self.scheduler.schedule()
        if scheduled.is_empty and not scheduled.freed_request_ids:
            return time.perf_counter() - started
        pending = self.executor.submit(scheduled)
        elapsed = time.perf_counter() - started
        self._inflight = _InFlight(scheduled, pending, elapsed)
        return elapsed


def build_engine_core(config: EngineConfig, executor_factory: ExecutorFactory) -> EngineCore:
    """Start an executor and the core that drives it: pipelined when the executor runs
    elsewhere and takes a step without waiting for it (a TP/EP engine's ranks); a local
    executor's core overlaps steps itself (async scheduling). Blocking (loads the model); an
    executor whose core fails to start is shut down, so ranks never outlive the failure."""
    executor = executor_factory(config)
    try:
        if isinstance(executor, PipelinedExecutor) and not isinstance(executor, LocalExecutor):
            return PipelinedEngineCore.from_config(config, executor)
        return EngineCore.from_config(config, executor)
    except BaseException:
        executor.shutdown()
        raise
