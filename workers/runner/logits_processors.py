"""The hook for per-request logits processors (structured output masks tokens through it).

A processor is per-request state (e.g. a grammar matcher) behind four calls:
- `is_ready()`: False keeps the request waiting (grammar still compiling) while the
  other requests run; the scheduler asks before admitting it.
- `apply_batch(processors, rows, output_token_ids, logits)` (classmethod): edit the rows of
  the step's logits that belong to requests using this class, in one call per class per
  step, so a grammar engine can fill one bitmask for the whole batch and apply it at once.
  The default loops over `apply(output_token_ids, logits_row)`.
- `accept_token(token_id)`: told each token the request emits, in order.
- `fork()`: a fresh copy for each of n > 1 sequences.
- `recipe()`: plain, picklable data from which another process (a TP/EP rank, where the
  tokens are sampled) rebuilds the processor; processors themselves never cross processes.
Plain callables `(output_token_ids, logits_row) -> logits_row` (vLLM v0 style) also work.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from oss_serve.workers.engine.sampling_params import InvalidRequestError

RowProcessor = Callable[[Sequence[int], torch.Tensor], torch.Tensor]


class RequestLogitsProcessor:
    """Base class for stateful per-request processors; override `apply` or `apply_batch`."""

    def is_ready(self) -> bool:
        return True

    def apply(self, output_token_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        """Return the edited logits of one request ([vocab], fp32)."""
        raise NotImplementedError

    @classmethod
    def apply_batch(
        cls,
        processors: Sequence[RequestLogitsProcessor],
        rows: Sequence[int],
        output_token_ids: Sequence[Sequence[int]],
        logits: torch.Tensor,
    ) -> None:
        """Edit `logits[rows[i]]` in place for `processors[i]` (the whole step's batch at once)."""
        for processor, row, token_ids in zip(processors, rows, output_token_ids, strict=True):
            logits[row] = processor.apply(token_ids, logits[row])

    def accept_token(self, token_id: int) -> None:
        """The request emitted token_id (after sampling); advance any state."""

    def fork(self) -> RequestLogitsProcessor:
        return copy.deepcopy(self)

    def recipe(self) -> ProcessorRecipe | None:
        """How another process rebuilds this processor (None: it cannot leave this one)."""
        return None


class ProcessorRecipe(Protocol):
    """Plain, picklable data describing a processor; its state follows from the tokens."""

    def build(self, output_token_ids: Sequence[int]) -> RequestLogitsProcessor:
        """A processor that has already accepted `output_token_ids` (the output so far)."""
        ...


class FunctionLogitsProcessor(RequestLogitsProcessor):
    """Adapts a stateless callable (output_token_ids, logits) -> logits."""

    def __init__(self, function: RowProcessor) -> None:
        self.function = function

    def apply(self, output_token_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        return self.function(output_token_ids, logits)

    def fork(self) -> RequestLogitsProcessor:
        return self


def as_processors(raw: Sequence[Any] | None) -> list[RequestLogitsProcessor]:
    """Normalise SamplingParams.logits_processors into processor objects."""
    processors: list[RequestLogitsProcessor] = []
    for item in raw or ():
        if isinstance(item, RequestLogitsProcessor):
            processors.append(item)
        elif callable(item):
            processors.append(FunctionLogitsProcessor(item))
        else:
            raise TypeError(
                f"logits processor {item!r} is neither a RequestLogitsProcessor nor callable"
            )
    return processors


def processor_recipes(raw: Sequence[Any] | None) -> list[ProcessorRecipe]:
    """The recipes of a request's processors, for sending it to another process; a
    processor without one is refused (InvalidRequestError naming `logits_processors`)."""
    recipes: list[ProcessorRecipe] = []
    for processor in as_processors(raw):
        recipe = processor.recipe()
        if recipe is None:
            raise InvalidRequestError(
                f"logits processor {type(processor).__name__} cannot run on a multi-process "
                "(TP/EP) replica: it has no recipe() to rebuild it where the tokens are sampled",
                field="logits_processors",
            )
        recipes.append(recipe)
    return recipes


def build_processors(
    recipes: Sequence[ProcessorRecipe], output_token_ids: Sequence[int]
) -> list[RequestLogitsProcessor]:
    return [recipe.build(output_token_ids) for recipe in recipes]


def processors_ready(params: Any) -> bool:
    return all(
        not isinstance(p, RequestLogitsProcessor) or p.is_ready()
        for p in params.logits_processors or ()
    )


def apply_processors(
    per_row: Sequence[Sequence[RequestLogitsProcessor]],
    output_token_ids: Sequence[Sequence[int]],
    logits: torch.Tensor,
) -> None:
    """Group the batch's processors by class and call each class's apply_batch once."""
    by_class: dict[type[RequestLogitsProcessor], tuple[list[Any], list[int], list[Any]]] = {}
    for row, processors in enumerate(per_row):
        for processor in processors:
            members = by_class.setdefault(type(processor), ([], [], []))
            members[0].append(processor)
            members[1].append(row)
            members[2].append(output_token_ids[row])
    for cls, (processors, rows, token_ids) in by_class.items():
        cls.apply_batch(processors, rows, token_ids, logits)
