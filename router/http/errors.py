"""OpenAI-style error bodies, `{"error": {"message", "type", "param", "code"}}`, for every
4xx/5xx the API answers, including the framework's own (unknown route, wrong method)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from oss_serve.common.logging import get_logger
from oss_serve.router.errors import RequestError

log = get_logger(__name__)
SAMPLING_PREFIX = "sampling."

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """An HTTP error with an OpenAI error body; raise it from any handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type or _TYPES.get(status, "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def from_request_error(err: RequestError) -> ApiError:
    """The pipeline's errors keep their HTTP status; 429 carries Retry-After."""
    headers = {}
    if err.retry_after_header is not None:
        headers["Retry-After"] = err.retry_after_header
    # the pipeline names sampling fields as in its protobuf (`sampling.x`); here they are top-level
    param = err.field.removeprefix(SAMPLING_PREFIX) if err.field else None
    return ApiError(
        err.http_status,
        err.message.replace(SAMPLING_PREFIX, ""),
        param=param,
        code=err.code,
        error_type=err.error_type,
        headers=headers,
    )


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def request_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestError)
        return from_request_error(exc).response()

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = str(exc.detail) if exc.detail else "error"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return ApiError(exc.status_code, message, headers=dict(exc.headers or {})).response()

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return invalid(f"{param}: {first.get('msg', 'invalid')}", param).response()

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in the HTTP API", path=request.url.path)
        return ApiError(500, "internal server error; the request was not completed").response()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
