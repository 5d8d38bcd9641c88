"""What the engine reports about itself (the router publishes these under vLLM's names).

`EngineStats` is a snapshot: gauges (running, waiting, KV usage) and counters since start
(prefix-cache queries/hits in tokens, preemptions, prompt/generation tokens, steps and
their time split into scheduling, model and output processing).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class StepTimer:
    """Accumulated wall time of engine steps, split by phase (seconds)."""

    num_steps: int = 0
    total_s: float = 0.0
    schedule_s: float = 0.0
    execute_s: float = 0.0
    update_s: float = 0.0
    last_step_s: float = 0.0
    num_batched_tokens: int = 0

    def record(
        self, *, schedule_s: float, execute_s: float, update_s: float, num_tokens: int
    ) -> None:
        self.num_steps += 1
        self.schedule_s += schedule_s
        self.execute_s += execute_s
        self.update_s += update_s
        self.last_step_s = schedule_s + execute_s + update_s
        self.total_s += self.last_step_s
        self.num_batched_tokens += num_tokens


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load and counters (field names match the replica hash)."""

    running: int
    waiting: int
    max_running: int
    kv_usage: float  # 0..1, blocks held by requests
    kv_blocks_free: int
    kv_blocks_total: int
    prefix_cache_queries: int  # tokens looked up in the prefix cache
    prefix_cache_hits: int  # tokens found
    num_preemptions: int
    prompt_tokens: int
    generation_tokens: int
    num_steps: int
    step_time_s: float  # total
    scheduler_time_s: float  # scheduling + output processing: the engine's CPU overhead
    model_time_s: float  # model runner (inputs, forward, sampling)
    requests_finished: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    lora_adapters: tuple[str, ...] = ()  # LoRA adapters served (by name)
    lora_held: tuple[str, ...] = ()  # those in device slots now

    @property
    def prefix_cache_hit_rate(self) -> float:
        return (
            self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0
        )

    def to_dict(self) -> dict[str, object]:
        values = dataclasses.asdict(self)
        values["prefix_cache_hit_rate"] = self.prefix_cache_hit_rate
        return values
