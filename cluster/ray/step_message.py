"""What a replica's driver sends its ranks each step: plain data, never live per-request objects.

Logits processors (grammar matchers, ...) are state of the process that samples, and
every rank samples. So they never travel: a new request's sampling params go out without
them, next to each processor's recipe (plain data, e.g. the structured-output spec), and
each rank rebuilds them over the request's output so far (which also covers a request
re-sent after preemption or resumed from emitted tokens). Every rank's copy of a sequence
holds rank 0's tokens, so every rank's processors accept the same tokens; a rank that
adopts a token of rank 0's that differs from its own sample rebuilds them over it.

Whether a request can be sent at all is checked when it is added (`check_portable`), so
one that cannot fails alone with a clear error instead of failing a step of the replica.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field

from oss_serve.workers.engine.sampling_params import InvalidRequestError, SamplingParams
from oss_serve.workers.engine.scheduler_output import NewRequestData, SchedulerOutput
from oss_serve.workers.runner.input_batch import CachedRequestState
from oss_serve.workers.runner.logits_processors import (
    ProcessorRecipe,
    RequestLogitsProcessor,
    build_processors,
    processor_recipes,
)


@dataclass
class StepMessage:
    """What the driver broadcasts each step (once into the object store, read by every rank)."""

    step_index: int
    scheduled: SchedulerOutput  # new requests' sampling params hold no processor objects
    rank0_tokens: dict[str, int] = field(default_factory=dict)  # last step's, by request id
    recipes: dict[str, list[ProcessorRecipe]] = field(default_factory=dict)  # by new request


class StepNotSendableError(RuntimeError):
    """A step could not be serialized for the ranks (a request slipped past check_portable)."""


def _without_processors(params: SamplingParams) -> SamplingParams:
    return params.clone(logits_processors=None) if params.logits_processors else params


def _pickles(value: object) -> Exception | None:
    try:
        pickle.loads(pickle.dumps(value))
    except Exception as exc:  # pickling raises many types (TypeError, PicklingError, ...)
        return exc
    return None


def check_portable(params: SamplingParams) -> None:
    """InvalidRequestError unless a request can run on the ranks: every processor has a
    recipe, the params and recipes pickle, and the recipes build (in this process first)."""
    recipes = processor_recipes(params.logits_processors)
    for name, value in (("extra_args", params.extra_args), ("logits_processors", recipes)):
        error = _pickles(value)
        if error is not None:
            raise InvalidRequestError(
                f"{name} cannot be sent to the replica's ranks (not picklable): {error}", name
            )
    try:
        build_processors(recipes, ())
    except InvalidRequestError:
        raise
    except Exception as exc:
        raise InvalidRequestError(
            f"a logits processor could not be rebuilt from its recipe: {exc!r}",
            "logits_processors",
        ) from exc


def pack_step(
    step_index: int, scheduled: SchedulerOutput, rank0_tokens: dict[str, int]
) -> StepMessage:
    """The step as sent: processors replaced by their recipes (the driver's objects untouched)."""
    new_requests: list[NewRequestData] = []
    recipes: dict[str, list[ProcessorRecipe]] = {}
    for data in scheduled.new_requests:
        params = data.sampling_params
        if params.logits_processors:
            recipes[data.request_id] = processor_recipes(params.logits_processors)
            data = dataclasses.replace(data, sampling_params=_without_processors(params))
        new_requests.append(data)
    sent = dataclasses.replace(scheduled, new_requests=new_requests)
    return StepMessage(step_index, sent, dict(rank0_tokens), recipes)


class RankProcessors:
    """One rank's side: the recipes of its live requests and the processors built from them."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self._recipes: dict[str, list[ProcessorRecipe]] = {}

    def unpack(self, message: StepMessage) -> SchedulerOutput:
        """The step with each new request's processors rebuilt over its output so far."""
        scheduled = message.scheduled
        for request_id in scheduled.freed_request_ids:
            self._recipes.pop(request_id, None)
        new_requests = []
        for data in scheduled.new_requests:
            recipes = message.recipes.get(data.request_id, [])
            self._recipes.pop(data.request_id, None)
            if recipes:
                self._recipes[data.request_id] = recipes
                output = data.token_ids[data.num_prompt_tokens :]
                processors = self._build(data.request_id, output)
                params = data.sampling_params.clone(logits_processors=processors)
                data = dataclasses.replace(data, sampling_params=params)
            new_requests.append(data)
        return dataclasses.replace(scheduled, new_requests=new_requests)

    def adopt_rank0_tokens(
        self, states: dict[str, CachedRequestState], tokens: dict[str, int]
    ) -> int:
        """Make each sequence's last token rank 0's (rebuilding its processors when it
        changes); returns how many of this rank's own samples differed."""
        divergent = 0
        for request_id, token_id in tokens.items():
            state = states.get(request_id)
            if state is None or not state.token_ids or state.token_ids[-1] == token_id:
                continue
            state.token_ids[-1] = token_id
            divergent += 1
            if state.processors:
                output = state.token_ids[state.num_prompt_tokens :]
                state.processors = self._build(request_id, output)
        return divergent

    def _build(self, request_id: str, output: Sequence[int]) -> list[RequestLogitsProcessor]:
        try:
            return build_processors(self._recipes[request_id], output)
        except Exception as exc:  # the driver built the same recipes: this rank's environment
            raise RuntimeError(
                f"rank {self.rank} could not rebuild the logits processors of request "
                f"{request_id!r} (they built in the driver): {exc!r}"
            ) from exc
