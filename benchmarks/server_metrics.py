"""The server's own counters around a load point, read from its Prometheus `/metrics`.

Some figures only the server knows: how many prompt tokens its prefix cache served is
one. The bench reads vLLM's counters (`vllm:prefix_cache_hits_total`,
`vllm:prefix_cache_queries_total`; oss-serve's router exports the same names, one series
per replica) before and after each load point and keeps the difference, so a report
says what share of the prompt tokens of that load point were served from cache. A
server without `/metrics`, or without these counters, leaves the section empty with the
reason; the load test itself does not depend on it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

PREFIX_CACHE_HITS = "vllm:prefix_cache_hits_total"  # prompt tokens served from the cache
PREFIX_CACHE_QUERIES = "vllm:prefix_cache_queries_total"  # prompt tokens looked up
COUNTERS = (PREFIX_CACHE_HITS, PREFIX_CACHE_QUERIES)
# A server may export counters a moment late (oss-serve's replicas report every 0.5 s):
# after a load point they are read until two reads this far apart agree.
SETTLE_INTERVAL_S = 1.0
SETTLE_MAX_S = 6.0


def metrics_url_for(base_url: str) -> str:
    """`http://host:8000[/v1[/chat/completions]]` -> `http://host:8000/metrics`."""
    base = base_url.rstrip("/")
    for suffix in ("/chat/completions", "/v1"):
        base = base.removesuffix(suffix)
    return f"{base}/metrics"


def parse_counters(text: str) -> dict[str, float]:
    """Each counter of `COUNTERS` summed over its label sets; absent ones are left out."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in COUNTERS:
                totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


class ServerCounters:
    """Reads `COUNTERS` from one `/metrics` URL; remembers why a read failed."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self.error: str | None = None
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def read(self) -> dict[str, float] | None:
        try:
            response = await self._client.get(self.url)
            response.raise_for_status()
            counters = parse_counters(response.text)
        except httpx.HTTPStatusError as err:
            self.error = f"HTTP {err.response.status_code} from {self.url}"
            return None
        except httpx.HTTPError as err:
            self.error = f"{type(err).__name__} reading {self.url}"
            return None
        except ValueError as err:  # not the Prometheus text format
            self.error = f"{self.url} is not Prometheus text ({err})"
            return None
        if set(counters) != set(COUNTERS):
            missing = sorted(set(COUNTERS) - set(counters))
            self.error = f"{self.url} exports no {', '.join(missing)}"
            return None
        return counters

    async def read_settled(self) -> dict[str, float] | None:
        """The counters once two reads `SETTLE_INTERVAL_S` apart agree (or `SETTLE_MAX_S`)."""
        last = await self.read()
        waited_s = 0.0
        while last is not None and waited_s < SETTLE_MAX_S:
            await asyncio.sleep(SETTLE_INTERVAL_S)
            waited_s += SETTLE_INTERVAL_S
            current = await self.read()
            if current == last:
                break
            last = current
        return last


def server_metrics_section(
    url: str,
    before: dict[str, float] | None,
    after: dict[str, float] | None,
    error: str | None,
) -> dict[str, Any]:
    """The run's `server_metrics` object (benchmarks/SCHEMA.md)."""
    prefix_cache = None
    if before is not None and after is not None:
        hits = int(after[PREFIX_CACHE_HITS] - before[PREFIX_CACHE_HITS])
        queries = int(after[PREFIX_CACHE_QUERIES] - before[PREFIX_CACHE_QUERIES])
        if hits < 0 or queries < 0:
            error = "the counters went down during the load point (a server restarted)"
        else:
            prefix_cache = {
                "hit_tokens": hits,
                "query_tokens": queries,
                "hit_rate": round(hits / queries, 4) if queries > 0 else None,
            }
    return {
        "url": url,
        "error": None if prefix_cache is not None else error,
        "before": before,
        "after": after,
        "prefix_cache": prefix_cache,
    }
