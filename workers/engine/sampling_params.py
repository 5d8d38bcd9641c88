"""Per-request sampling parameters, with vLLM's names and meanings so users' scripts port.

Validation happens here, once, so that a bad request fails with an `InvalidRequestError`
naming the field before it reaches the engine loop (which keeps serving everyone else).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

MAX_LOGPROBS = 20  # top-k logprobs per token, as vLLM's default max_logprobs


class InvalidRequestError(ValueError):
    """A request the engine refuses; `field` names the offending parameter (HTTP 400 upstream)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RequestOutputKind(Enum):
    """What each RequestOutput of a request carries (vLLM's RequestOutputKind)."""

    CUMULATIVE = 0  # everything so far
    DELTA = 1  # only what is new since the last output (streaming)
    FINAL_ONLY = 2  # one output when the request finishes (offline generate)


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop; temperature 0 means greedy."""

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 = all tokens
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None
    # Per-request logits processors: `RequestLogitsProcessor` objects (batched hook, see
    # logits_processors.py) or vLLM-v0-style callables (output_token_ids, logits) -> logits.
    logits_processors: list[Any] | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    extra_args: dict[str, Any] | None = None
    stop_strings: list[str] = field(init=False, default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop_strings = [self.stop]
        else:
            self.stop_strings = list(self.stop or [])
        self.stop_token_ids = [int(t) for t in (self.stop_token_ids or [])]
        if self.logit_bias is not None:
            self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
        if self.seed is not None:
            self.seed = int(self.seed)
        self._validate()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SamplingParams:
        """Build from a plain mapping (an API body); unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidRequestError(
                f"unknown sampling parameter(s): {', '.join(unknown)}", field=unknown[0]
            )
        try:
            return cls(**values)
        except TypeError as exc:  # e.g. a list where a number belongs
            raise InvalidRequestError(f"bad sampling parameter: {exc}") from exc

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    def clone(self, **changes: Any) -> SamplingParams:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        values.update(changes)
        return SamplingParams(**values)

    def _validate(self) -> None:
        for name, check, rule in _RULES:
            value = getattr(self, name)
            if value is not None and not check(value):
                raise InvalidRequestError(f"{name} {rule}, got {value!r}", field=name)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidRequestError(
                f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})",
                field="min_tokens",
            )
        if any(not s for s in self.stop_strings):
            raise InvalidRequestError("stop strings must be non-empty", field="stop")
        if self.logits_processors is not None and not isinstance(self.logits_processors, list):
            raise InvalidRequestError("logits_processors must be a list", field="logits_processors")


_GREEDY_EPS = 1e-5


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_LOGPROBS_RULE = f"must be an integer in [0, {MAX_LOGPROBS}]"
_RULES: Sequence[tuple[str, Callable[[Any], bool], str]] = (
    ("n", lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"),
    ("temperature", lambda v: _is_number(v) and v >= 0, "must be >= 0"),
    ("top_p", lambda v: _is_number(v) and 0 < v <= 1, "must be in (0, 1]"),
    ("top_k", lambda v: _is_int(v) and v >= -1, "must be -1, 0 (disabled) or a positive integer"),
    ("min_p", lambda v: _is_number(v) and 0 <= v <= 1, "must be in [0, 1]"),
    ("presence_penalty", lambda v: _is_number(v) and -2 <= v <= 2, "must be in [-2, 2]"),
    ("frequency_penalty", lambda v: _is_number(v) and -2 <= v <= 2, "must be in [-2, 2]"),
    ("repetition_penalty", lambda v: _is_number(v) and v > 0, "must be > 0"),
    ("max_tokens", lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"),
    ("min_tokens", lambda v: _is_int(v) and v >= 0, "must be an integer >= 0"),
    ("seed", _is_int, "must be an integer"),
    ("logprobs", lambda v: _is_int(v) and 0 <= v <= MAX_LOGPROBS, _LOGPROBS_RULE),
    ("prompt_logprobs", lambda v: _is_int(v) and 0 <= v <= MAX_LOGPROBS, _LOGPROBS_RULE),
    (
        "stop_token_ids",
        lambda v: all(_is_int(t) and t >= 0 for t in v),
        "must be non-negative ints",
    ),
    ("output_kind", lambda v: isinstance(v, RequestOutputKind), "must be a RequestOutputKind"),
)
