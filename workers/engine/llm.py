"""The offline API, shaped like vLLM's so that users' scripts port:

from oss_serve import LLM, SamplingParams
with LLM(model="gpt-oss-tiny", dtype="float32") as llm:
    outputs = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=16))
print(outputs[0].outputs[0].text)

The engine does not know where its model runs: LLM takes an executor factory, by default
the model in this process. `from oss_serve import LLM` (oss_serve/llm.py) adds Ray's
for tensor_parallel_size or expert_parallel_size above 1.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Self

from oss_serve.workers.engine.detokenizer import Tokenizer
from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.engine.engine_core import EngineCore
from oss_serve.workers.engine.outputs import RequestOutput
from oss_serve.workers.engine.pipelined_core import build_engine_core
from oss_serve.workers.engine.sampling_params import (
    InvalidRequestError,
    RequestOutputKind,
    SamplingParams,
)
from oss_serve.workers.lora.request import LoRARequest
from oss_serve.workers.runner.executor import ExecutorFactory, LocalExecutor

PromptType = str | Mapping[str, Any]


class LLM:
    """Generate from a batch of prompts with one engine driven from this process.

    `shutdown()`, leaving a `with` block or `del llm` stops the executor: for a TP/EP
    engine, its rank actors and their placement group, so that another LLM can have them."""

    _shut_down = False  # a class default, so that an __init__ that raised shuts nothing down

    def __init__(
        self,
        model: str | None = None,
        *,
        dtype: str = "auto",
        device: str = "auto",
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        tensor_parallel_size: int = 1,
        expert_parallel_size: int = 1,
        seed: int = 0,
        executor_factory: ExecutorFactory = LocalExecutor,
        **engine_args: Any,
    ) -> None:
        self.config = EngineConfig.from_kwargs(
            model=model,
            dtype=dtype,
            device=device,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            tensor_parallel_size=tensor_parallel_size,
            expert_parallel_size=expert_parallel_size,
            seed=seed,
            **engine_args,
        )
        self.llm_engine: EngineCore = build_engine_core(self.config, executor_factory)
        self._request_counter = itertools.count()

    def shutdown(self) -> None:
        """Stop the engine and release what its executor holds (idempotent)."""
        if self._shut_down:
            return
        self._shut_down = True
        self.llm_engine.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit Ray may already be gone
            self.shutdown()

    def get_tokenizer(self) -> Tokenizer | None:
        return self.llm_engine.output_processor.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = False,
        priority: Sequence[int] | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in the prompts' order.

        `lora_request`: one adapter for every prompt, or one per prompt (None = base model);
        prompts of different adapters run batched together (needs enable_lora=True)."""
        if self._shut_down:
            raise RuntimeError("this LLM was shut down: create a new one to generate")
        prompt_list = [prompts] if isinstance(prompts, str | Mapping) else list(prompts)
        params_list = self._params_per_prompt(sampling_params, len(prompt_list))
        loras = self._per_prompt(lora_request, len(prompt_list), "lora_request")
        request_ids: list[str] = []
        try:
            for index, (prompt, params) in enumerate(zip(prompt_list, params_list, strict=True)):
                text, token_ids = self._tokenize(prompt)
                request_id = str(next(self._request_counter))
                self.llm_engine.add_request(
                    request_id,
                    token_ids,
                    params.clone(output_kind=RequestOutputKind.FINAL_ONLY),
                    priority=priority[index] if priority else 0,
                    prompt=text,
                    lora_request=loras[index],
                )
                request_ids.append(request_id)
        except Exception:
            for request_id in request_ids:
                self.llm_engine.abort_request(request_id)
            raise
        return self._run(request_ids)

    def _run(self, request_ids: list[str]) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        while len(finished) < len(request_ids) and self.llm_engine.has_unfinished_requests():
            for output in self.llm_engine.step():
                if output.finished:
                    finished[output.request_id] = output
        return [finished[r] for r in request_ids if r in finished]

    @staticmethod
    def _params_per_prompt(
        sampling_params: SamplingParams | Sequence[SamplingParams] | None, count: int
    ) -> list[SamplingParams]:
        if sampling_params is None:
            return [SamplingParams()] * count
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * count
        params = list(sampling_params)
        if len(params) != count:
            raise InvalidRequestError(
                f"got {len(params)} sampling_params for {count} prompts", field="sampling_params"
            )
        return params

    @staticmethod
    def _per_prompt(
        value: LoRARequest | Sequence[LoRARequest | None] | None, count: int, name: str
    ) -> list[LoRARequest | None]:
        if value is None or isinstance(value, LoRARequest):
            return [value] * count
        values = list(value)
        if len(values) != count:
            raise InvalidRequestError(f"got {len(values)} {name}s for {count} prompts", name)
        return values

    def _tokenize(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, Mapping):
            unknown = set(prompt) - {"prompt", "prompt_token_ids"}
            if unknown:
                raise InvalidRequestError(
                    f"unknown prompt field(s): {', '.join(sorted(unknown))}", field="prompt"
                )
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), list(prompt["prompt_token_ids"])
            prompt = prompt.get("prompt", "")
        if not isinstance(prompt, str):
            raise InvalidRequestError(
                "a prompt is a string or {'prompt_token_ids': [...]}", field="prompt"
            )
        tokenizer = self.get_tokenizer()
        if tokenizer is None:
            raise InvalidRequestError(
                "text prompts need the tokenizer (skip_tokenizer_init=True)", field="prompt"
            )
        return prompt, tokenizer.encode(prompt, allowed_special="all")

    def stats(self) -> dict[str, object]:
        return self.llm_engine.stats().to_dict()
