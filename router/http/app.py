"""The FastAPI app of the OpenAI-compatible API: routes, error bodies, status metrics.

Every generation route is a thin adapter over the shared request pipeline (the same one
the gRPC API uses), so routing, queueing, back-pressure and error mapping happen once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oss_serve.router.http.background import BackgroundResponses
from oss_serve.router.http.background_api import BackgroundApi
from oss_serve.router.http.background_runs import BackgroundRuns
from oss_serve.router.http.chat_api import create_chat_completion
from oss_serve.router.http.completions_api import create_completion
from oss_serve.router.http.context import ApiContext
from oss_serve.router.http.errors import ApiError, install_error_handlers
from oss_serve.router.http.lora_api import load_lora_adapter, unload_lora_adapter
from oss_serve.router.http.response_store import ResponseStore
from oss_serve.router.http.responses_api import create_response
from oss_serve.router.http.streaming import ClientGone
from oss_serve.router.metrics import CONTENT_TYPE

Handler = Callable[[Request], Awaitable[Response]]


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(title="oss-serve", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    store = ResponseStore(ctx.redis, ctx.keys, ctx.response_ttl_s)
    background = BackgroundResponses(
        BackgroundRuns(ctx.redis, ctx.keys, ctx.response_ttl_s), ctx.pipeline.config.router_id
    )
    stored_responses = BackgroundApi(ctx, store, background)
    app.state.api = ctx
    app.state.background = background

    async def client_gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # nobody is listening any more

    app.add_exception_handler(ClientGone, client_gone)

    async def chat(request: Request) -> Response:
        return await create_chat_completion(request, ctx)

    async def completions(request: Request) -> Response:
        return await create_completion(request, ctx)

    async def responses(request: Request) -> Response:
        return await create_response(request, ctx, store)

    async def models(request: Request) -> Response:
        await ctx.authenticate(request)
        return JSONResponse({"object": "list", "data": _models(ctx)})

    async def model(request: Request) -> Response:
        await ctx.authenticate(request)
        wanted = request.path_params["model_id"]
        for entry in _models(ctx):
            if entry["id"] == wanted:
                return JSONResponse(entry)
        raise ApiError(
            404, f"model {wanted!r} is not served here", param="model", code="model_not_found"
        )

    async def load_lora(request: Request) -> Response:
        return await load_lora_adapter(request, ctx)

    async def unload_lora(request: Request) -> Response:
        return await unload_lora_adapter(request, ctx)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        view = ctx.pipeline.view
        if not view.redis_ok:
            raise ApiError(503, "Redis is unreachable", error_type="service_unavailable")
        if not view.replicas:
            raise ApiError(503, "no healthy replica yet", error_type="service_unavailable")
        return JSONResponse({"status": "ready", "replicas": len(view.replicas)})

    async def metrics(request: Request) -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    routes: list[tuple[str, Handler, list[str]]] = [
        ("/v1/chat/completions", chat, ["POST"]),
        ("/v1/completions", completions, ["POST"]),
        ("/v1/responses", responses, ["POST"]),
        ("/v1/responses/{response_id}", stored_responses.get, ["GET"]),
        ("/v1/responses/{response_id}", stored_responses.delete, ["DELETE"]),
        ("/v1/responses/{response_id}/cancel", stored_responses.cancel, ["POST"]),
        ("/v1/models", models, ["GET"]),
        ("/v1/models/{model_id:path}", model, ["GET"]),
        ("/v1/load_lora_adapter", load_lora, ["POST"]),
        ("/v1/unload_lora_adapter", unload_lora, ["POST"]),
        ("/health", health, ["GET"]),
        ("/ready", ready, ["GET"]),
        ("/metrics", metrics, ["GET"]),
    ]
    for path, handler, methods in routes:
        app.add_route(path, handler, methods=methods, include_in_schema=False)
    app.add_middleware(StatusMetrics, ctx=ctx)
    return app


def _models(ctx: ApiContext) -> list[dict[str, Any]]:
    """Base models, then LoRA adapters with their `parent` (vLLM's model cards)."""
    view = ctx.pipeline.view
    lengths = view.models()
    entries = [_model_card(ctx, name, length) for name, length in sorted(lengths.items())]
    for name, parent in sorted(view.adapters().items()):
        entries.append({**_model_card(ctx, name, lengths.get(parent, 0)), "parent": parent})
    return entries


def _model_card(ctx: ApiContext, name: str, max_model_len: int) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": ctx.created_unix_s,
        "owned_by": ctx.owned_by,
        "max_model_len": max_model_len,
    }


class StatusMetrics:
    """Counts answers by route template and status (a pure ASGI middleware: it does not
    buffer streamed bodies)."""

    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = _route_template(scope)
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.ctx.metrics.http_requests.labels(endpoint, str(status)).inc()


def _route_template(scope: Scope) -> str:
    app = scope.get("app")
    router = getattr(app, "router", None)
    for route in getattr(router, "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "other"))
    return "other"
