"""Reading and checking a request body: size limit (413), JSON (400), the pydantic model
(400 naming the field), and the sampling parameters it asks for."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from oss_serve.protos import inference_pb2
from oss_serve.router.http.errors import ApiError, invalid
from oss_serve.router.http.models import SamplingFields

M = TypeVar("M", bound=BaseModel)


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object; 413 past max_bytes (checked before and while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > max_bytes:
            raise _too_large(max_bytes)
    try:
        body = json.loads(data, parse_constant=_reject_constant)
        json.dumps(body, ensure_ascii=False).encode("utf-8")  # lone surrogates (\ud800) fail here
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeError, int too long
        raise invalid(f"the body is not valid JSON: {_short(err)}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object", code="invalid_json")
    return body


def parse_body(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise invalid(f"{param}: {first['msg']}", param) from None


def sampling_params(
    request: SamplingFields, *, max_tokens: int | None, logprobs: int | None
) -> inference_pb2.SamplingParams:
    """The pipeline's SamplingParams; ranges are checked by the pipeline (400 naming them)."""
    sampling = inference_pb2.SamplingParams()
    for name in (
        "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "top_k",
        "min_p", "repetition_penalty", "ignore_eos", "min_tokens",
    ):  # fmt: skip
        value = getattr(request, name)
        if value is not None:
            setattr(sampling, name, value)
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if logprobs is not None:
        sampling.logprobs = logprobs
    stop = request.stop
    sampling.stop.extend([stop] if isinstance(stop, str) else stop or [])
    sampling.stop_token_ids.extend(request.stop_token_ids or [])
    for raw_id, bias in (request.logit_bias or {}).items():
        if not raw_id.isdigit() or len(raw_id) > 7:
            raise invalid(f"logit_bias keys must be token ids, got {raw_id[:20]!r}", "logit_bias")
        sampling.logit_bias[int(raw_id)] = bias
    return sampling


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413, f"the request body is larger than {max_bytes} bytes", code="request_too_large"
    )


def _short(err: BaseException) -> str:
    text = str(err)
    return text if len(text) <= 200 else text[:200] + "..."
