"""Reading a router's /metrics the way Prometheus does (the official text parser)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(base: str) -> dict[str, float]:
    """sample name{labels} -> value, after the official text parser accepted the page."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


def total(values: dict[str, float], name: str) -> float:
    """The sum of a sample name over all its label sets."""
    return sum(v for k, v in values.items() if k.startswith(name + "{"))
