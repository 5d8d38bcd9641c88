"""Runs one scheduled step on the model: inputs -> forward -> logits -> sampled tokens.

Split by concern: request bookkeeping (input_batch.py), tensor preparation
(input_preparation.py), the forward here, token choice in sampler.py. Sampling is a
deterministic function of the logits and (seed, output index), so every tensor-parallel
rank may run the whole step and agree on the tokens without a broadcast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from oss_serve.kernels.vocab_projection import VocabProjection
from oss_serve.workers.engine.kv_cache_spec import KVCacheSpec
from oss_serve.workers.engine.scheduler_output import (
    ModelRunnerOutput,
    PromptLogprobsChunk,
    SchedulerOutput,
    TokenLogprobs,
)
from oss_serve.workers.lora.runtime import LoRARuntime
from oss_serve.workers.runner.cpu_allocator import keep_step_buffers_in_heap
from oss_serve.workers.runner.cpu_threads import CpuThreadPolicy
from oss_serve.workers.runner.cuda_graphs import (
    DecodeGraphs,
    is_decode_batch,
    pad_decode_inputs,
    padded_size,
)
from oss_serve.workers.runner.input_batch import CachedRequestState, RequestStates
from oss_serve.workers.runner.input_preparation import ModelInputs, prepare_inputs
from oss_serve.workers.runner.sampler import Sampler, SamplingRow, gather_logprobs
from oss_serve.workers.runner.workspace import Workspace

PROMPT_LOGPROB_ROWS_PER_CHUNK = 256  # bounds the [rows, vocab] logits held at once


@dataclass
class RunnerTimings:
    """Seconds spent per phase since start: the CPU overhead is everything but the forward.
    On CUDA nothing waits for the forward (kernels are queued): the wait falls in sample_s,
    where the sampled ids come back to the host."""

    prepare_s: float = 0.0
    forward_s: float = 0.0
    sample_s: float = 0.0


@dataclass(frozen=True)
class DecodePadding:
    """Decode batches padded to `sizes` with block tables `max_blocks` wide; `graphs`:
    replayed from captured CUDA graphs (else run eagerly, padded: tests of the padding)."""

    sizes: list[int]
    max_blocks: int
    graphs: bool


class ModelRunner:
    def __init__(
        self,
        model: Any,
        spec: KVCacheSpec,
        device: torch.device | str,
        padding: DecodePadding | None = None,
        lora: LoRARuntime | None = None,
        cpu_threads: int = 0,
    ) -> None:
        self.model = model
        self.lora = lora  # adapter slots and their host cache, when serving LoRA adapters
        self.spec = spec
        self.device = torch.device(device)
        self.states = RequestStates()
        self.workspace = Workspace()  # CPU: big per-step tensors reused across steps
        self.sampler = Sampler(self.workspace)
        self.kv_caches: list[torch.Tensor] = []
        self.timings = RunnerTimings()
        self.padding = padding
        self.graphs: DecodeGraphs | None = None
        self._projection: VocabProjection | None = None
        is_cpu = self.device.type == "cpu"
        self.cpu_threads = CpuThreadPolicy(cpu_threads) if is_cpu else None
        if is_cpu:
            keep_step_buffers_in_heap()

    def initialize_kv_cache(self, num_blocks: int) -> None:
        """One tensor per layer rank-in-group; layer j of each group shares tensor j."""
        shape = (2, num_blocks, self.spec.block_size, self.spec.num_kv_heads, self.spec.head_dim)
        tensors = [
            torch.zeros(shape, dtype=self.spec.dtype, device=self.device)
            for _ in range(self.spec.num_layer_tensors)
        ]
        self.kv_caches = [tensors[i] for i in self.spec.layer_tensor_index()]

    def capture_graphs(self) -> float:
        """Capture the decode graphs (after the KV cache exists); returns the seconds taken."""
        if self.padding is None or not self.padding.graphs:
            return 0.0
        started = time.perf_counter()
        self.graphs = DecodeGraphs(
            self.model, self.kv_caches, self.padding.sizes, self.padding.max_blocks
        )
        names = [group.name for group in self.spec.groups]
        with torch.inference_mode():
            self.graphs.capture(names, self.spec.block_size, self.device)
        return time.perf_counter() - started

    @torch.inference_mode()
    def execute_model(self, scheduled: SchedulerOutput) -> ModelRunnerOutput:
        self.states.update(scheduled)
        if scheduled.is_empty:
            return ModelRunnerOutput()
        if self.cpu_threads is not None:
            self.cpu_threads.apply()
        started = time.perf_counter()
        inputs = prepare_inputs(scheduled, self.states.states, self.spec, self.device)
        if self.lora is not None:
            self.lora.begin_step(
                scheduled.lora_loads, inputs.token_lora_slots, inputs.lora_slots_used
            )
        prepared = time.perf_counter()
        hidden = self._forward(inputs)
        forwarded = time.perf_counter()
        output = ModelRunnerOutput(
            request_ids=inputs.request_ids,
            sampled_token_ids=[[] for _ in inputs.request_ids],
            logprobs=[None] * len(inputs.request_ids),
        )
        self._sample(hidden, inputs, output)
        self._prompt_logprobs(hidden, inputs, output)
        self.timings.prepare_s += prepared - started
        self.timings.forward_s += forwarded - prepared
        self.timings.sample_s += time.perf_counter() - forwarded
        return output

    def _forward(self, inputs: ModelInputs) -> torch.Tensor:
        """Hidden states of the batch's rows: a graph replay for a decode batch that fits a
        captured size, else the eager forward (of the padded batch when padding is on). A
        step that uses LoRA adapters runs eagerly and unpadded: the captured graphs hold no
        adapter deltas, and the adapters' per-token slots cover the real rows only."""
        if inputs.lora_slots_used:
            return self.model(inputs.input_ids, inputs.positions, inputs.meta, self.kv_caches)
        if self.graphs is not None and self.graphs.can_run(inputs):
            return self.graphs.run(inputs)
        padding = self.padding
        if padding is not None and not padding.graphs and is_decode_batch(inputs):
            size = padded_size(len(inputs.request_ids), padding.sizes)
            if size is not None:
                padded = pad_decode_inputs(inputs, size, padding.max_blocks)
                hidden = self.model(padded.input_ids, padded.positions, padded.meta, self.kv_caches)
                return hidden[: len(inputs.request_ids)]
        return self.model(inputs.input_ids, inputs.positions, inputs.meta, self.kv_caches)

    def _sample(self, hidden: torch.Tensor, inputs: ModelInputs, output: ModelRunnerOutput) -> None:
        """Greedy rows that want nothing but their token take the chunked argmax (on the CPU:
        no [rows, vocab] logits); the others go through the sampler on full logits."""
        if not inputs.sample_rows:
            return
        hidden = hidden[torch.tensor(inputs.sample_rows, device=hidden.device)]
        states = [self.states[r] for r in inputs.sample_request_ids]
        rows = [_sampling_row(s) for s in states]
        token_ids: list[int] = [0] * len(rows)
        logprobs: list[TokenLogprobs | None] = [None] * len(rows)
        projection = self._vocab_projection()
        argmax_only = [i for i, row in enumerate(rows) if row.needs_only_argmax]
        if projection is None:
            argmax_only = []
        elif argmax_only:
            chosen = projection.argmax(_select(hidden, argmax_only)).tolist()
            for i, token_id in zip(argmax_only, chosen, strict=True):
                token_ids[i] = token_id
        sampled = [i for i in range(len(rows)) if i not in set(argmax_only)]
        if sampled:
            logits = self._sampling_logits(_select(hidden, sampled))
            result = self.sampler(logits, [rows[i] for i in sampled])
            for i, token_id, entry in zip(sampled, result.token_ids, result.logprobs, strict=True):
                token_ids[i], logprobs[i] = token_id, entry
        batch_index = {r: i for i, r in enumerate(inputs.request_ids)}
        for state, token_id, entry in zip(states, token_ids, logprobs, strict=True):
            state.token_ids.append(token_id)
            for processor in state.processors:
                processor.accept_token(token_id)
            row = batch_index[state.request_id]
            output.sampled_token_ids[row] = [token_id]
            output.logprobs[row] = entry

    def _vocab_projection(self) -> VocabProjection | None:
        """The chunked output projection on a CPU model that holds the whole vocabulary (built
        on first use, rebuilt when the weight changed); None elsewhere (full logits)."""
        model = self.model
        if self.device.type != "cpu" or model.parallel.tp_size != 1:
            return None
        if self._projection is None:
            self._projection = VocabProjection(model.lm_head.weight, model.config.vocab_size)
        elif self._projection.is_stale():
            self._projection.refresh()
        return self._projection

    def _sampling_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits where the model runs (the sampler runs there too); on the CPU written
        into a buffer kept across steps (the sampler edits them in place, keeps no reference)."""
        projection = self._vocab_projection()
        if projection is None:
            return self.model.compute_logits(hidden).float()
        vocab = int(self.model.config.vocab_size)
        buffer = self.workspace.take("logits", hidden.shape[0], vocab, torch.float32, self.device)
        return projection.logits(hidden, out=buffer)

    def _prompt_logprobs(
        self, hidden: torch.Tensor, inputs: ModelInputs, output: ModelRunnerOutput
    ) -> None:
        for span in inputs.prompt_logprob_spans:
            state = self.states[span.request_id]
            top_k = state.sampling_params.prompt_logprobs or 0
            entries: list[TokenLogprobs] = []
            for offset in range(0, span.count, PROMPT_LOGPROB_ROWS_PER_CHUNK):
                count = min(PROMPT_LOGPROB_ROWS_PER_CHUNK, span.count - offset)
                first = span.first_row + offset
                logits = self.model.compute_logits(hidden[first : first + count]).float()
                position = span.start_position + offset
                targets = torch.tensor(state.token_ids[position : position + count])
                entries += gather_logprobs(torch.log_softmax(logits, dim=-1), targets, top_k)
            output.prompt_logprobs[span.request_id] = PromptLogprobsChunk(
                span.start_position, entries
            )


def _select(tensor: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """tensor[rows]: the tensor itself when that is every row in order."""
    if rows == list(range(tensor.shape[0])):
        return tensor
    return tensor[torch.tensor(rows, device=tensor.device)]


def _sampling_row(state: CachedRequestState) -> SamplingRow:
    return SamplingRow(
        params=state.sampling_params,
        seed=state.seed,
        token_ids=state.token_ids,
        num_prompt_tokens=state.num_prompt_tokens,
        eos_token_ids=state.eos_token_ids,
        processors=state.processors,
    )
