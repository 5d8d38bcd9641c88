"""Checks on a request's token ids and sampling parameters before anything is queued.

The engine validates again (it is the authority); checking here means a bad request is
refused with a message naming the field instead of taking a queue slot first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from oss_serve.common.vocab import VOCAB_SIZE
from oss_serve.protos import inference_pb2
from oss_serve.router.errors import InvalidRequest

MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 16

_RANGES: tuple[tuple[str, Callable[[float], bool], str], ...] = (
    ("temperature", lambda v: 0 <= v <= 100, "must be >= 0"),
    ("top_p", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("top_k", lambda v: v >= -1, "must be -1, 0 (off) or a positive integer"),
    ("min_p", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("presence_penalty", lambda v: -2 <= v <= 2, "must be in [-2, 2]"),
    ("frequency_penalty", lambda v: -2 <= v <= 2, "must be in [-2, 2]"),
    ("repetition_penalty", lambda v: v > 0, "must be > 0"),
    ("max_tokens", lambda v: v >= 1, "must be >= 1"),
    ("min_tokens", lambda v: v >= 0, "must be >= 0"),
    ("logprobs", lambda v: 0 <= v <= MAX_LOGPROBS, f"must be in [0, {MAX_LOGPROBS}]"),
)


def check_prompt(token_ids: Sequence[int], field: str = "prompt_token_ids") -> None:
    if not token_ids:
        raise InvalidRequest(f"{field} must not be empty", field=field)
    bad = next((t for t in token_ids if not 0 <= t < VOCAB_SIZE), None)
    if bad is not None:
        raise InvalidRequest(
            f"{field} holds token id {bad}, outside [0, {VOCAB_SIZE})", field=field
        )


def check_sampling(sampling: inference_pb2.SamplingParams, field: str = "sampling") -> None:
    """The parameters' ranges (what needs no replica to know); InvalidRequest names a bad one."""
    for name, ok, rule in _RANGES:
        if sampling.HasField(name):
            value = getattr(sampling, name)
            if not math.isfinite(value) or not ok(value):
                raise InvalidRequest(
                    f"{field}.{name} {rule}, got {value!r}", field=f"{field}.{name}"
                )
    if len(sampling.stop) > MAX_STOP_STRINGS or any(not s for s in sampling.stop):
        raise InvalidRequest(
            f"{field}.stop takes up to {MAX_STOP_STRINGS} non-empty strings", field=f"{field}.stop"
        )
    for name, ids in (
        ("stop_token_ids", sampling.stop_token_ids),
        ("logit_bias", sampling.logit_bias),
    ):
        if any(t >= VOCAB_SIZE for t in ids):
            raise InvalidRequest(
                f"{field}.{name} holds a token id >= {VOCAB_SIZE}", field=f"{field}.{name}"
            )
    if any(not -100 <= b <= 100 for b in sampling.logit_bias.values()):
        raise InvalidRequest(
            f"{field}.logit_bias values must be in [-100, 100]", field=f"{field}.logit_bias"
        )


def checked_sampling(
    sampling: inference_pb2.SamplingParams,
    *,
    prompt_len: int,
    max_model_len: int,
    field: str = "sampling",
) -> inference_pb2.SamplingParams:
    """A copy of `sampling` with max_tokens filled in; InvalidRequest names a bad field."""
    check_sampling(sampling, field)
    checked = inference_pb2.SamplingParams()
    checked.CopyFrom(sampling)
    room = max_model_len - prompt_len if max_model_len > 0 else 0
    if max_model_len > 0 and room < 1:
        raise InvalidRequest(
            f"the prompt has {prompt_len} tokens; the model's context is {max_model_len}",
            field="prompt",
        )
    if not checked.HasField("max_tokens"):
        checked.max_tokens = room if room > 0 else 16
    elif max_model_len > 0 and checked.max_tokens > room:
        raise InvalidRequest(
            f"{field}.max_tokens is {checked.max_tokens} but only {room} tokens fit after the "
            f"{prompt_len}-token prompt (context {max_model_len})",
            field=f"{field}.max_tokens",
        )
    if checked.HasField("min_tokens") and checked.min_tokens > checked.max_tokens:
        raise InvalidRequest(
            f"{field}.min_tokens must be <= max_tokens", field=f"{field}.min_tokens"
        )
    return checked
