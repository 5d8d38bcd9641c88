"""What a replica host needs of its engine: AsyncEngine's methods, which a single-process
AsyncEngine and a TP/EP engine whose ranks are Ray actors (cluster/ray/engine.py) both have."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol


class ReplicaEngine(Protocol):
    def generate(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: Any = None,
        *,
        priority: int = 0,
        resume_output_token_ids: Sequence[int] = (),
        lora_request: Any = None,
    ) -> AsyncIterator[Any]: ...

    async def abort(self, request_id: str) -> None: ...

    def stats(self) -> Any: ...  # EngineStats

    def admission_capacity(self) -> Any: ...  # AdmissionCapacity: .admits(prompt_lens)

    def lora_request(self, name: str) -> Any: ...  # the LoRA adapter served as `name`, or None

    @property
    def is_running(self) -> bool: ...
