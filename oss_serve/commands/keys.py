"""`oss-serve keys add|list|revoke|usage`: API keys for the HTTP API, stored hashed in Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from redis.exceptions import RedisError

from oss_serve.commands._common import ConfigOption, fail, settings_from_flags

T = TypeVar("T")
keys_app = typer.Typer(help="API keys of the HTTP API (hashed in Redis; shown once when added).")

RedisUrlOption = Annotated[
    str | None, typer.Option("--redis-url", help="redis://[:password@]host:port/db")
]
NamespaceOption = Annotated[str | None, typer.Option("--namespace", help="Redis key namespace.")]


def _run(
    config: ConfigOption,
    redis_url: str | None,
    namespace: str | None,
    job: Callable[..., Awaitable[T]],
) -> T:
    from oss_serve.streams.keys import RedisKeys
    from oss_serve.streams.redis_client import connect_from

    settings = settings_from_flags(config, redis_url=redis_url, redis_namespace=namespace)
    if settings.redis_url is None:
        fail("keys live in Redis: give --redis-url (or OSS_SERVE_REDIS_URL)")

    async def main() -> T:
        redis = connect_from(settings)
        try:
            return await job(redis, RedisKeys(settings.redis_namespace))
        finally:
            await redis.aclose()

    try:
        return asyncio.run(main())
    except (OSError, ConnectionError, RedisError) as err:
        fail(f"cannot use Redis: {type(err).__name__}: {err}")


@keys_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="A label for the key (who or what uses it).")],
    requests_per_min: Annotated[
        int, typer.Option("--requests-per-min", min=0, help="0 = unlimited.")
    ] = 0,
    tokens_per_min: Annotated[
        int, typer.Option("--tokens-per-min", min=0, help="0 = unlimited.")
    ] = 0,
    config: ConfigOption = None,
    redis_url: RedisUrlOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Create a key and print it (once: only its SHA-256 is stored)."""
    from oss_serve.router.auth.keys import ApiKeyStore

    async def job(redis: Any, keys: Any) -> Any:
        return await ApiKeyStore(redis, keys).add(
            name, requests_per_min=requests_per_min, tokens_per_min=tokens_per_min
        )

    api_key, record = _run(config, redis_url, namespace, job)
    typer.echo(api_key)
    typer.echo(
        f"key id {record.key_id} ({name}); store the key now, it is not shown again", err=True
    )


@keys_app.command("list")
def list_keys(
    config: ConfigOption = None, redis_url: RedisUrlOption = None, namespace: NamespaceOption = None
) -> None:
    """Keys (id, name, limits, created, usage); never the keys themselves."""
    from oss_serve.router.auth.keys import ApiKeyStore
    from oss_serve.router.auth.usage import UsageRecorder

    async def job(redis: Any, keys: Any) -> Any:
        records = await ApiKeyStore(redis, keys).all()
        usage = UsageRecorder(redis, keys)
        return [(r, await usage.read(r.key_id)) for r in records]

    rows = _run(config, redis_url, namespace, job)
    typer.echo(
        "key_id            name                 req/min  tok/min   created              requests  prompt_tok  completion_tok"
    )
    for record, usage in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created_unix_s))
        typer.echo(
            f"{record.key_id:<17} {record.name[:20]:<20} {record.requests_per_min:>7}  "
            f"{record.tokens_per_min:>7}   {created}  {usage.requests:>8}  {usage.prompt_tokens:>10}  "
            f"{usage.completion_tokens:>14}"
        )


@keys_app.command("revoke")
def revoke(
    key: Annotated[str, typer.Argument(help="The key id (from `keys list`) or the key's name.")],
    config: ConfigOption = None,
    redis_url: RedisUrlOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Delete a key: requests with it get 401 from the next request on."""
    from oss_serve.router.auth.keys import ApiKeyStore

    async def job(redis: Any, keys: Any) -> Any:
        return await ApiKeyStore(redis, keys).revoke(key)

    revoked = _run(config, redis_url, namespace, job)
    if not revoked:
        fail(f"no key with id or name {key!r}", code=1)
    for record in revoked:
        typer.echo(f"revoked {record.key_id} ({record.name})")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
