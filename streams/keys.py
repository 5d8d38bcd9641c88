"""Names of every Redis key oss-serve uses, in one place (router, replicas and autoscaler agree).

All keys live under a namespace (Settings.redis_namespace, default "oss-serve"), so that
several deployments can share one Redis. Layout:

- `{ns}:req:{replica_id}:{lane}`   stream: request records routed to one replica, per priority lane
- `{ns}:req:overflow:{lane}`       stream: shared overflow lane any replica may pull from
- `{ns}:replicas`                  set: ids of registered replicas
- `{ns}:replica:{replica_id}`      hash: registration + load report (pool, model, running,
                                   waiting, kv_usage, kv_blocks_free, ...); TTL = heartbeat
- `{ns}:kv-events`                 stream: prefix-cache events (blocks stored / evicted)
- `{ns}:dead-letters`              stream: requests that failed for good, with the reason
- `{ns}:apikeys`                   hash: sha256(key) -> JSON metadata
- `{ns}:ratelimit:{key_id}:{unit}:{window}`  counter with TTL
- `{ns}:usage:{key_id}`            hash: token/request accounting
- `{ns}:response:{response_id}`    string: stored Responses API object (TTL)
- `{ns}:response-run:{response_id}`  hash: a background response's run: status, the API key
                                   id that created it, its router (owner) and lease, cancel (TTL)
- `{ns}:response-events:{response_id}`  stream: a streamed background response's events, entry
                                   id 0-(sequence_number + 1), then an end marker (TTL)
- `{ns}:response-cancels`          pub/sub channel: ids of background responses to cancel
- `{ns}:session:{session_key}`     string: replica id a sticky session is routed to (TTL)
- `{ns}:lora-adapters`             hash: LoRA adapter name -> JSON load/unload order (routers
                                   write it, replicas with --enable-lora follow it)
- `{ns}:idem:{key_id}:{id}:{choice}`  hash: a client request id's attempt or stored answer (TTL)

Every request stream has one consumer group, CONSUMER_GROUP; consumers are replica ids.
"""

from __future__ import annotations

from dataclasses import dataclass

LANES: tuple[str, ...] = ("interactive", "batch")  # read in this order: first is highest priority
OVERFLOW = "overflow"
CONSUMER_GROUP = "replicas"


@dataclass(frozen=True)
class RedisKeys:
    namespace: str = "oss-serve"

    def request_stream(self, replica_id: str, lane: str) -> str:
        return f"{self.namespace}:req:{replica_id}:{lane}"

    def overflow_stream(self, lane: str) -> str:
        return self.request_stream(OVERFLOW, lane)

    @property
    def replicas(self) -> str:
        return f"{self.namespace}:replicas"

    def replica(self, replica_id: str) -> str:
        return f"{self.namespace}:replica:{replica_id}"

    @property
    def kv_events(self) -> str:
        return f"{self.namespace}:kv-events"

    def kv_snapshot(self, replica_id: str) -> str:
        return f"{self.namespace}:kv-snapshot:{replica_id}"

    @property
    def kv_snapshots_pattern(self) -> str:
        return f"{self.namespace}:kv-snapshot:*"

    @property
    def dead_letters(self) -> str:
        return f"{self.namespace}:dead-letters"

    @property
    def api_keys(self) -> str:
        return f"{self.namespace}:apikeys"

    def rate_limit(self, key_id: str, unit: str, window: int) -> str:
        return f"{self.namespace}:ratelimit:{key_id}:{unit}:{window}"

    def usage(self, key_id: str) -> str:
        return f"{self.namespace}:usage:{key_id}"

    def response(self, response_id: str) -> str:
        return f"{self.namespace}:response:{response_id}"

    def response_run(self, response_id: str) -> str:
        return f"{self.namespace}:response-run:{response_id}"

    def response_events(self, response_id: str) -> str:
        return f"{self.namespace}:response-events:{response_id}"

    @property
    def response_cancels(self) -> str:
        return f"{self.namespace}:response-cancels"

    def session(self, session_key: str) -> str:
        return f"{self.namespace}:session:{session_key}"

    @property
    def lora_adapters(self) -> str:
        return f"{self.namespace}:lora-adapters"

    def idempotency(self, key_id: str, request_digest: str, choice: int) -> str:
        return f"{self.namespace}:idem:{key_id}:{request_digest}:{choice}"

    def replica_streams(self, replica_id: str) -> list[str]:
        """A replica's request streams, highest-priority lane first."""
        return [self.request_stream(replica_id, lane) for lane in LANES]
