"""Turns the core's per-step token deltas into vLLM-shaped `RequestOutput`s.

Owns what only matters to the caller: detokenization, stop strings (it reports the
sequences they end, for the scheduler to finish), logprob dicts with decoded tokens, the
merging of n > 1 sequences into one RequestOutput, and the output kind (cumulative,
delta for streaming, final only for offline generate).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from oss_serve.workers.engine.detokenizer import IncrementalDetokenizer, Tokenizer, decode_token
from oss_serve.workers.engine.outputs import (
    CompletionOutput,
    Logprob,
    PromptLogprobs,
    RequestMetrics,
    RequestOutput,
    SampleLogprobs,
)
from oss_serve.workers.engine.sampling_params import (
    InvalidRequestError,
    RequestOutputKind,
    SamplingParams,
)
from oss_serve.workers.engine.scheduler_output import EngineCoreOutput, TokenLogprobs


@dataclass
class _Sequence:
    """One of a request's n sequences, as the caller sees it."""

    index: int
    detokenizer: IncrementalDetokenizer | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: SampleLogprobs | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    text: str = ""
    sent_tokens: int = 0  # for DELTA outputs
    sent_text: int = 0
    updated: bool = False


@dataclass
class _Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    sequences: list[_Sequence]
    child_ids: list[str]
    metrics: RequestMetrics
    prompt_logprobs: PromptLogprobs | None = None
    prompt_logprobs_sent: bool = False
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.sequences)


def _resume(sequence: _Sequence, token_ids: Sequence[int]) -> None:
    """Start a sequence after tokens it emitted before, as if it had streamed them here:
    they count for stop strings and cumulative outputs, never in a delta. Their logprobs
    are unknown here (empty entries)."""
    sequence.token_ids = list(token_ids)
    sequence.sent_tokens = len(token_ids)
    if sequence.logprobs is not None:
        sequence.logprobs = [{} for _ in token_ids]
    detokenizer = sequence.detokenizer
    if detokenizer is not None:
        detokenizer.update(token_ids)
        if detokenizer.stop_string is not None:
            raise InvalidRequestError(
                f"resume_output_token_ids already contain the stop string "
                f"{detokenizer.stop_string!r}: the request has already finished",
                field="resume_output_token_ids",
            )
        sequence.text = detokenizer.text
        sequence.sent_text = detokenizer.streamable_length


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer | None) -> None:
        self.tokenizer = tokenizer
        self._requests: dict[str, _Request] = {}
        self._children: dict[str, tuple[_Request, _Sequence]] = {}

    def add_request(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        child_ids: list[str],
        arrival_time: float,
        resumed_token_ids: Sequence[int] = (),
    ) -> None:
        """Track a request; `resumed_token_ids` are output tokens emitted before (elsewhere)."""
        sequences = [_Sequence(index, self._detokenizer(params)) for index in range(len(child_ids))]
        for sequence in sequences:
            if params.logprobs is not None:
                sequence.logprobs, sequence.cumulative_logprob = [], 0.0
            if resumed_token_ids:
                _resume(sequence, resumed_token_ids)
        state = _Request(
            request_id, prompt, list(prompt_token_ids), params, sequences, list(child_ids),
            RequestMetrics(arrival_time=arrival_time),
            prompt_logprobs=[None] if params.prompt_logprobs is not None else None,
        )  # fmt: skip
        self._requests[request_id] = state
        for child_id, sequence in zip(child_ids, sequences, strict=True):
            self._children[child_id] = (state, sequence)

    def _detokenizer(self, params: SamplingParams) -> IncrementalDetokenizer | None:
        if self.tokenizer is None or not params.detokenize:
            return None
        return IncrementalDetokenizer(
            self.tokenizer,
            skip_special_tokens=params.skip_special_tokens,
            stop=params.stop_strings,
            include_stop_str_in_output=params.include_stop_str_in_output,
        )

    @property
    def num_unfinished(self) -> int:
        return len(self._requests)

    def has_request(self, request_id: str) -> bool:
        return request_id in self._requests

    def child_ids(self, request_id: str) -> list[str]:
        state = self._requests.get(request_id)
        return list(state.child_ids) if state else []

    # --- per step -----------------------------------------------------------------------------
    def process(
        self, core_outputs: list[EngineCoreOutput]
    ) -> tuple[list[RequestOutput], list[str]]:
        """Apply one step's outputs; returns (RequestOutputs to deliver, child ids a stop string ended)."""
        touched: dict[str, _Request] = {}
        stopped_by_string: list[str] = []
        for core in core_outputs:
            entry = self._children.get(core.request_id)
            if entry is None:
                continue
            state, sequence = entry
            self._apply(state, sequence, core)
            if core.finish_reason is None and sequence.finish_reason == "stop":
                stopped_by_string.append(core.request_id)
            touched[state.request_id] = state
        outputs = [o for o in (self._emit(state) for state in touched.values()) if o is not None]
        return outputs, stopped_by_string

    def _apply(self, state: _Request, sequence: _Sequence, core: EngineCoreOutput) -> None:
        if core.prompt_logprobs is not None and sequence.index == 0:
            self._add_prompt_logprobs(state, core)
        if sequence.index == 0:
            state.num_cached_tokens = core.num_cached_tokens
        if sequence.finish_reason is not None:
            return  # already ended by a stop string; late tokens are dropped
        now = time.time()
        if core.new_token_ids:
            state.metrics.first_token_time = state.metrics.first_token_time or now
            state.metrics.last_token_time = now
            sequence.updated = True
        sequence.token_ids.extend(core.new_token_ids)
        if sequence.logprobs is not None:
            for entry in core.new_logprobs:
                sequence.logprobs.append(self._logprob_dict(entry))
                sequence.cumulative_logprob = (sequence.cumulative_logprob or 0.0) + entry.logprobs[
                    0
                ]
        final = core.finish_reason is not None
        if sequence.detokenizer is not None:
            sequence.detokenizer.update(core.new_token_ids, final=final)
            sequence.text = sequence.detokenizer.text
            if sequence.detokenizer.stop_string is not None:
                sequence.finish_reason = "stop"
                sequence.stop_reason = sequence.detokenizer.stop_string
        if final and sequence.finish_reason is None:
            sequence.finish_reason, sequence.stop_reason = core.finish_reason, core.stop_reason
        if sequence.finish_reason is not None:
            sequence.updated = True
            state.metrics.finished_time = now

    def _add_prompt_logprobs(self, state: _Request, core: EngineCoreOutput) -> None:
        chunk = core.prompt_logprobs
        if state.prompt_logprobs is None or chunk is None:
            return
        for offset, entry in enumerate(chunk.entries):
            if chunk.start_position + offset == len(state.prompt_logprobs):  # skip recomputed ones
                state.prompt_logprobs.append(self._logprob_dict(entry))

    def _logprob_dict(self, entry: TokenLogprobs) -> dict[int, Logprob]:
        result: dict[int, Logprob] = {}
        for token_id, logprob, rank in zip(
            entry.token_ids, entry.logprobs, entry.ranks, strict=True
        ):
            if token_id not in result:
                decoded = decode_token(self.tokenizer, token_id) if self.tokenizer else None
                result[token_id] = Logprob(logprob=logprob, rank=rank, decoded_token=decoded)
        return result

    # --- building outputs ---------------------------------------------------------------------
    def _emit(self, state: _Request) -> RequestOutput | None:
        finished = state.finished
        kind = state.params.output_kind
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        if kind == RequestOutputKind.DELTA:
            sequences = [s for s in state.sequences if s.updated]
            if not sequences:
                return None
            completions = [self._delta(s) for s in sequences]
        else:
            completions = [self._cumulative(s) for s in state.sequences]
        for sequence in state.sequences:
            sequence.updated = False
        prompt_logprobs = None
        if state.prompt_logprobs is not None and (
            kind != RequestOutputKind.DELTA or not state.prompt_logprobs_sent
        ):
            prompt_logprobs = state.prompt_logprobs
            state.prompt_logprobs_sent = True
        if finished:
            self._forget(state)
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            prompt_logprobs=prompt_logprobs,
            outputs=completions,
            finished=finished,
            metrics=state.metrics,
            num_cached_tokens=state.num_cached_tokens,
        )

    def _cumulative(self, sequence: _Sequence) -> CompletionOutput:
        return CompletionOutput(
            index=sequence.index,
            text=sequence.text,
            token_ids=list(sequence.token_ids),
            cumulative_logprob=sequence.cumulative_logprob,
            logprobs=list(sequence.logprobs) if sequence.logprobs is not None else None,
            finish_reason=sequence.finish_reason,
            stop_reason=sequence.stop_reason,
        )

    def _delta(self, sequence: _Sequence) -> CompletionOutput:
        streamable = len(sequence.text)
        if sequence.detokenizer is not None and sequence.finish_reason is None:
            streamable = sequence.detokenizer.streamable_length
        text = sequence.text[sequence.sent_text : streamable]
        sequence.sent_text = max(sequence.sent_text, streamable)
        start, sequence.sent_tokens = sequence.sent_tokens, len(sequence.token_ids)
        return CompletionOutput(
            index=sequence.index,
            text=text,
            token_ids=sequence.token_ids[start:],
            cumulative_logprob=sequence.cumulative_logprob,
            logprobs=sequence.logprobs[start:] if sequence.logprobs is not None else None,
            finish_reason=sequence.finish_reason,
            stop_reason=sequence.stop_reason,
        )

    # --- ending -------------------------------------------------------------------------------
    def abort(self, request_id: str) -> RequestOutput | None:
        """End a request from outside; returns its final output (finish_reason "abort")."""
        state = self._requests.get(request_id)
        if state is None:
            return None
        for sequence in state.sequences:
            if sequence.finish_reason is None:
                sequence.finish_reason = "abort"
                sequence.updated = True
        state.metrics.finished_time = time.time()
        return self._emit(state)

    def _forget(self, state: _Request) -> None:
        self._requests.pop(state.request_id, None)
        for child_id in state.child_ids:
            self._children.pop(child_id, None)
