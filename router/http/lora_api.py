"""vLLM's runtime adapter endpoints: `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter`.

Behind the admin key (`--admin-api-key`; without one configured they answer 403). A load
is an order in Redis that every replica with LoRA enabled follows (streams/lora_adapters.py):
the answer waits until each of them serves the adapter (200), or one reports why it
cannot, a corrupt adapter, a rank above `--max-lora-rank`, another model's shapes (400 with
that reason; the order is withdrawn so that the replicas agree). Replicas keep serving
throughout. An unload waits until no replica lists the adapter; an unknown name is a 404.
"""

from __future__ import annotations

import asyncio
import hmac
import time

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

from oss_serve.common.adapters import check_adapter_name
from oss_serve.router.http.context import ApiContext
from oss_serve.router.http.errors import ApiError, invalid
from oss_serve.router.http.request_body import parse_body, read_json
from oss_serve.streams.lora_adapters import order_load, order_unload, read_orders
from oss_serve.streams.registry import ReplicaLoad

ORDER_TIMEOUT_S = 120.0  # reading a large adapter from a slow disk on every replica
POLL_S = 0.1


class _AdminBody(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class LoadLoRAAdapterRequest(_AdminBody):
    lora_name: StrictStr
    lora_path: StrictStr


class UnloadLoRAAdapterRequest(_AdminBody):
    lora_name: StrictStr
    lora_int_id: StrictInt | None = None  # vLLM's field; the name decides here


async def load_lora_adapter(request: Request, ctx: ApiContext) -> Response:
    _authenticate_admin(request, ctx)
    body = parse_body(LoadLoRAAdapterRequest, await read_json(request, ctx.max_body_bytes))
    name = body.lora_name
    _check_name(name)
    view = ctx.pipeline.view
    if name in view.models():
        raise invalid(f"{name!r} is the name of a base model", param="lora_name")
    if name in view.adapters():
        raise invalid(f"the LoRA adapter {name!r} has already been loaded", param="lora_name")
    if not body.lora_path:
        raise invalid("lora_path must name the adapter's folder", param="lora_path")
    if not _lora_replicas(ctx):
        raise invalid(
            "no replica serves LoRA adapters: start replicas with --enable-lora", param="lora_name"
        )
    order_id = await order_load(ctx.redis, ctx.keys, name, body.lora_path)
    deadline = time.monotonic() + ORDER_TIMEOUT_S
    while time.monotonic() < deadline:
        replicas = _lora_replicas(ctx)
        for load in replicas:
            error = load.adapter_error(name, order_id)
            if error is not None:
                await order_unload(ctx.redis, ctx.keys, name)
                raise invalid(f"replica {load.replica_id}: {error}", param="lora_path")
        if replicas and all(name in load.adapters for load in replicas):
            return Response(f"Success: LoRA adapter '{name}' added successfully.", 200)
        await asyncio.sleep(POLL_S)
    raise ApiError(
        504, f"the replicas did not finish loading {name!r} within {ORDER_TIMEOUT_S:.0f} s"
    )


async def unload_lora_adapter(request: Request, ctx: ApiContext) -> Response:
    _authenticate_admin(request, ctx)
    body = parse_body(UnloadLoRAAdapterRequest, await read_json(request, ctx.max_body_bytes))
    name = body.lora_name
    _check_name(name)
    orders = await read_orders(ctx.redis, ctx.keys)
    ordered = name in orders and not orders[name].unload
    if name not in ctx.pipeline.view.adapters() and not ordered:
        raise ApiError(
            404,
            f"the LoRA adapter {name!r} is not loaded",
            param="lora_name",
            code="model_not_found",
        )
    await order_unload(ctx.redis, ctx.keys, name)
    deadline = time.monotonic() + ORDER_TIMEOUT_S
    while time.monotonic() < deadline and name in ctx.pipeline.view.adapters():
        await asyncio.sleep(POLL_S)
    return Response(f"Success: LoRA adapter '{name}' removed successfully.", 200)


def _authenticate_admin(request: Request, ctx: ApiContext) -> None:
    if not ctx.admin_api_key:
        raise ApiError(
            403,
            "runtime LoRA loading is off: start the router with --admin-api-key",
            code="admin_key_not_configured",
        )
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    presented = token.strip() if scheme.lower() == "bearer" else ""
    if not hmac.compare_digest(presented.encode(), ctx.admin_api_key.encode()):
        raise ApiError(401, "this endpoint needs the admin key", code="invalid_api_key")


def _check_name(name: str) -> None:
    try:
        check_adapter_name(name)
    except ValueError as err:
        raise invalid(str(err), param="lora_name") from None


def _lora_replicas(ctx: ApiContext) -> list[ReplicaLoad]:
    return [
        load
        for load in ctx.pipeline.view.replicas.values()
        if load.max_loras > 0 and not load.draining
    ]
