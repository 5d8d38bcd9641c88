"""The offline API as users import it (`from oss_serve import LLM`): the engine's LLM with
the executors this package has, the model in this process for TP = EP = 1 and one Ray
actor per rank above that (starting Ray, or joining the one this process has).

The engine (workers/) runs without knowing of Ray; this is where the two are joined.
"""

from __future__ import annotations

from typing import Any

from oss_serve.workers.engine import llm as engine_llm
from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.runner.executor import Executor, ExecutorFactory, LocalExecutor


def default_executor(config: EngineConfig) -> Executor:
    """LocalExecutor, or RayExecutor for tensor/expert parallel sizes above 1."""
    if config.tensor_parallel_size > 1 or config.expert_parallel_size > 1:
        from oss_serve.cluster.ray.executor import RayExecutor

        return RayExecutor(config)
    return LocalExecutor(config)


class LLM(engine_llm.LLM):
    __doc__ = engine_llm.LLM.__doc__

    def __init__(
        self,
        model: str | None = None,
        *,
        executor_factory: ExecutorFactory = default_executor,
        **engine_args: Any,
    ) -> None:
        super().__init__(model, executor_factory=executor_factory, **engine_args)
