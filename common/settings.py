"""One typed settings object for every process: flags > OSS_SERVE_* env vars > config file > defaults.

Each area owns a section of fields below; add fields to your section rather than reading
os.environ elsewhere. Secrets are SecretStr so that they never print in logs or reprs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from oss_serve.common.adapters import parse_lora_modules

CONFIG_ENV_VAR = "OSS_SERVE_CONFIG"
_config_file: ContextVar[Path | None] = ContextVar("oss_serve_config_file", default=None)


class Settings(BaseSettings):
    """Everything configurable, flat, with `OSS_SERVE_<FIELD>` as the env var name."""

    model_config = SettingsConfigDict(
        env_prefix="OSS_SERVE_", extra="forbid", validate_default=True
    )

    # --- general -----------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    vocab_dir: Path | None = None  # folder holding o200k_base.tiktoken; None = download as usual
    cache_dir: Path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "oss-serve"

    # --- model / engine ----------------------------------------------------------------------
    model: str | None = None  # checkpoint folder or preset name; None = the embedded demo model
    served_model_name: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    expert_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    kv_cache_memory: int | None = None  # bytes of KV cache on CPU
    block_size: int = 16
    enable_prefix_caching: bool = True
    enforce_eager: bool = False  # no CUDA graphs for decode (vLLM's --enforce-eager)
    cuda_graph_sizes: list[int] | None = None  # decode batch sizes to capture (None: vLLM's)
    async_scheduling: bool | None = None  # schedule step N+1 while N runs (None: on on CUDA)

    # --- LoRA adapters (vLLM's flags): many adapters on one replica, chosen per request ------
    enable_lora: bool = False
    lora_modules: list[str] = []  # "name=path" or '{"name": ..., "path": ...}' (PEFT folders)
    max_loras: int = 1  # adapters in device slots = distinct adapters in one step at most
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None  # adapters kept in host memory (default: max_loras)
    admin_api_key: SecretStr | None = None  # router: allows POST /v1/(un)load_lora_adapter
    adapter_affinity_blocks: float = 8.0  # routing cost of a replica that must load the adapter

    # --- Ray replicas: TP/EP actor groups -------------------------------------------
    ray_address: str | None = None  # "auto" / "ray://host:10001": join a cluster; None = local Ray
    ray_placement_strategy: Literal["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"] = (
        "STRICT_PACK"  # one node per replica (NVLink); PACK/SPREAD may span nodes
    )
    experts_across_all_ranks: bool = False  # split experts over every rank (vLLM-style EP)
    # run the engine as Ray rank actors also for TP x EP = 1 (the chart's RayCluster mode:
    # the GPUs belong to the Ray worker container, not to the `oss-serve replica` driver)
    ray_engine: bool = False

    # --- redis ---------------------------------------------------------------------------------
    redis_url: SecretStr | None = None  # may embed a password: kept secret
    redis_namespace: str = "oss-serve"
    # Redis replicas that must hold a request record before it counts as queued (WAIT);
    # None = 1 for a redis+sentinel:// URL (a failover then loses no queued request), else 0
    redis_replica_acks: int | None = None

    # --- router / API ----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 50051
    api_key: SecretStr | None = None

    # --- security: the replica link, TLS, Redis credentials ------------------------------
    # the router's replica link listens apart from the public gRPC API; None = grpc_port + 1
    # (any free port when grpc_port is 0)
    link_port: int | None = None
    cluster_token: SecretStr | None = None  # replicas present it on the link; routers check it
    tls_cert: Path | None = None  # PEM certificate chain: TLS on the router's ports ...
    tls_key: Path | None = None  # ... with this private key; a replica's client certificate
    tls_ca: Path | None = None  # PEM CA: routers require link peers' certificates signed by it
    # (mTLS); replicas verify the router's certificate with it
    tls_server_name: str | None = None  # the name a replica expects in the router's certificate
    redis_password: SecretStr | None = None  # instead of a password inside redis_url

    # --- routing, queues, replicas ----------------------------------------------------
    routing_policy: Literal["round_robin", "least_load", "prefix_aware"] = "prefix_aware"
    advertise_host: str | None = None  # how replicas reach this router's gRPC port (default host)
    prefix_overlap_weight: float = 1.0  # cost of one uncached prompt block vs one block of load
    prefix_load_measure: Literal["prefill", "kv_blocks"] = "prefill"  # kv_blocks = Dynamo's
    balance_abs_threshold: int = 8  # imbalanced when max - min requests > this ...
    balance_rel_threshold: float = 1.5  # ... and max > this * min: route least-load
    prefix_index_max_blocks: int = 1_048_576
    session_ttl_s: float = 600.0  # sticky session -> replica mapping lifetime since last use
    max_queue_wait_s: float = 30.0  # admission rejects when the estimated queue wait is longer
    max_queued_per_replica: int = 256  # admission rejects when every replica has this many queued
    request_timeout_s: float = 600.0  # a request with no deadline fails after this long
    replica_id: str | None = None  # default: hostname-pid
    replica_pool: str = "default"  # GPU pool label reported in the registry
    heartbeat_interval_s: float = 0.5  # also the load-report interval
    heartbeat_ttl_s: float = 3.0  # a replica whose key expired this long ago is dead
    max_delivery_attempts: int = 3  # deliveries before a request is dead-lettered
    router_link_grace_s: float = 10.0  # a replica gives up on an unreachable owning router after
    kv_events_maxlen: int = 1_000_000
    # a replica's whole prefix-cache index, rewritten this often when it changed: routers that
    # start after the kv-events stream was trimmed still learn where hot prefixes live
    kv_snapshot_interval_s: float = 30.0
    max_num_seqs: int = 256  # replica engine: max running sequences (vLLM's --max-num-seqs)
    max_num_batched_tokens: int = 2048  # replica engine: token budget per step

    # --- OpenAI HTTP API, keys, limits --------------------------------------------------
    http_api: bool = True  # serve the HTTP API beside gRPC in `oss-serve router`
    require_api_key: bool = (
        False  # require a key (from `oss-serve keys add`) even without --api-key
    )
    api_key_requests_per_min: int = 0  # rate limits of the --api-key key (0 = unlimited)
    api_key_tokens_per_min: int = 0
    max_request_body_bytes: int = 8 * 1024 * 1024  # larger bodies: HTTP 413
    http_stall_timeout_s: float = 60.0  # a client that reads nothing this long is disconnected
    max_request_messages: int = 4096  # messages / input items per request (400 beyond)
    max_request_tools: int = 256
    max_request_n: int = 16  # choices per request
    response_store_ttl_s: int = 24 * 3600  # stored Responses for previous_response_id
    # a retry with the same request id (gRPC options.request_id, HTTP Idempotency-Key) replays
    # the stored answer for this long; while the first attempt runs it gets 409, and a dead
    # router's attempts are forgotten after the lease
    idempotency_ttl_s: int = 24 * 3600
    idempotency_lease_s: float = 10.0

    # --- server-side tools (Responses built-in tools and MCP servers) -----------------------
    tools: list[Literal["python", "browser", "mcp"]] = []  # off unless enabled: --tools python,...
    allow_unsandboxed_python: bool = False  # python without bubblewrap (weaker isolation)
    python_timeout_s: float = 30.0  # CPU/wall limit of one python call
    python_memory_mb: int = 512  # address-space limit of a session's python process
    browser_docs_dir: Path | None = None  # folder the local browser backend indexes
    browser_search_url: str | None = None  # an HTTP search API instead of the local index
    browser_search_api_key: SecretStr | None = None
    browser_allow_private_urls: bool = False  # let the browser open loopback/private addresses
    mcp_allowed_urls: list[str] = []  # MCP server URL prefixes a request may name
    mcp_timeout_s: float = 30.0
    tool_output_max_bytes: int = 16 * 1024  # a tool's output beyond this is cut, and says so
    max_tool_calls: int = 16  # server-side calls per response when the request names none
    python_max_sessions: int = 64  # live python sessions; the least recently used one ends
    mcp_tools_cache_ttl_s: float = 300.0  # how long an MCP server's tool list is reused

    @field_validator("lora_modules")
    @classmethod
    def _lora_modules_parse(cls, values: list[str]) -> list[str]:
        parse_lora_modules(values)
        return values

    @property
    def lora_module_paths(self) -> dict[str, str]:
        """--lora-modules as {name: PEFT folder}."""
        return parse_lora_modules(self.lora_modules)

    @property
    def effective_link_port(self) -> int:
        """link_port, or grpc_port + 1 when unset (any free port when grpc_port is 0)."""
        if self.link_port is not None:
            return self.link_port
        return self.grpc_port + 1 if self.grpc_port else 0

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None:
            sources.append(_file_source(settings_cls, config_file))
        return tuple(sources)


def _file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    if not path.is_file():
        raise FileNotFoundError(
            f"config file {path} does not exist (from --config or {CONFIG_ENV_VAR})"
        )
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return YamlConfigSettingsSource(settings_cls, yaml_file=path)
    if suffix == ".toml":
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    raise ValueError(f"config file {path}: use a .yaml, .yml or .toml file")


@contextmanager
def _reading_config_file(path: Path | None) -> Iterator[None]:
    token = _config_file.set(path)
    try:
        yield
    finally:
        _config_file.reset(token)


def load_settings(config_file: Path | str | None = None, **flags: Any) -> Settings:
    """Build Settings with the documented precedence; flags that are None count as not given."""
    path = config_file or os.environ.get(CONFIG_ENV_VAR)
    given = {name: value for name, value in flags.items() if value is not None}
    with _reading_config_file(Path(path) if path else None):
        return Settings(**given)
