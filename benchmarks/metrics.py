"""Per-request measurements and what a load point adds up to (vLLM's definitions).

- TTFT: request sent -> first chunk that carries generated text (content, reasoning or
  tool-call arguments); the empty role chunk does not count.
- ITL: gaps between consecutive text-carrying chunks (one value per gap; a server that
  batches tokens into chunks shows fewer, longer gaps).
- TPOT: (end-to-end - TTFT) / (output tokens - 1), per request with >= 2 output tokens.
- Throughput: totals of successful requests over the wall time of the load point
  (first request sent -> last one finished).
- Goodput: requests/s (and their output tokens/s) that met every SLO bound given.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass
class RequestRecord:
    """What one request did. Times in seconds; `start_s` is relative to the load point's start."""

    request_id: int
    session_id: int
    turn: int
    start_s: float
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    chunks: int = 0
    usage_source: str = "counted"  # "usage" = the server's usage chunk, else o200k counts
    error: str | None = None  # error type, e.g. http_429, timeout, invalid_response
    error_detail: str | None = None
    retry_after_s: float | None = None  # the Retry-After a refusal (429, 503, 409) carried
    tag: str = ""
    output_text: str = ""  # kept in memory for multi-turn history, not written to reports

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("output_text")
        data["tpot_s"] = self.tpot_s
        for key in ("start_s", "ttft_s", "e2e_s", "tpot_s"):
            if data[key] is not None:
                data[key] = round(data[key], 6)
        data["itl_s"] = [round(value, 6) for value in self.itl_s]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class SLO:
    """Bounds a request must meet to count toward goodput; None = no bound."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2e_ms))

    def met_by(self, record: RequestRecord) -> bool:
        if not record.ok:
            return False
        checks = (
            ("ttft", self.ttft_ms, record.ttft_s),
            ("tpot", self.tpot_ms, record.tpot_s),
            ("e2e", self.e2e_ms, record.e2e_s),
        )
        for name, bound_ms, value_s in checks:
            if bound_ms is None:
                continue
            if value_s is None:
                # A request with one output token has no TPOT: it cannot violate that bound.
                if name == "tpot":
                    continue
                return False
            if value_s * 1000.0 > bound_ms:
                return False
        return True

    def to_json(self) -> dict[str, float | None]:
        return asdict(self)


def distribution_ms(values_s: list[float]) -> dict[str, float | int | None]:
    """Mean, percentiles, min and max in milliseconds (None when there are no values)."""
    summary: dict[str, float | int | None] = {"count": len(values_s)}
    keys = ["mean", *(f"p{p}" for p in PERCENTILES), "min", "max"]
    if not values_s:
        return summary | dict.fromkeys(keys)
    array_ms = np.asarray(values_s, dtype=np.float64) * 1000.0
    summary["mean"] = float(array_ms.mean())
    for p in PERCENTILES:
        summary[f"p{p}"] = float(np.percentile(array_ms, p))
    summary["min"] = float(array_ms.min())
    summary["max"] = float(array_ms.max())
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}


def summarize(records: list[RequestRecord], duration_s: float, slo: SLO) -> dict[str, Any]:
    """The load point's numbers: counts, errors by type, latency distributions, throughput."""
    ok = [r for r in records if r.ok]
    duration_s = max(duration_s, 1e-9)
    input_tokens = sum(r.input_tokens for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    good = [r for r in ok if slo.met_by(r)]
    summary: dict[str, Any] = {
        "duration_s": round(duration_s, 6),
        "requests": {
            "total": len(records),
            "completed": len(ok),
            "failed": len(records) - len(ok),
            "errors": dict(sorted(Counter(r.error for r in records if r.error).items())),
        },
        "tokens": {
            "input_total": input_tokens,
            "output_total": output_tokens,
            "input_mean": round(input_tokens / len(ok), 3) if ok else None,
            "output_mean": round(output_tokens / len(ok), 3) if ok else None,
            "from_usage": sum(1 for r in ok if r.usage_source == "usage"),
            "counted": sum(1 for r in ok if r.usage_source != "usage"),
        },
        "throughput": {
            "requests_per_s": round(len(ok) / duration_s, 6),
            "input_tokens_per_s": round(input_tokens / duration_s, 6),
            "output_tokens_per_s": round(output_tokens / duration_s, 6),
            "total_tokens_per_s": round((input_tokens + output_tokens) / duration_s, 6),
        },
        "goodput": {
            "slo": slo.to_json(),
            "requests_met": len(good),
            "fraction": round(len(good) / len(ok), 6) if ok else 0.0,
            "requests_per_s": round(len(good) / duration_s, 6),
            "output_tokens_per_s": round(sum(r.output_tokens for r in good) / duration_s, 6),
        },
        "latency_ms": latency_summary(ok),
    }
    tags = sorted({r.tag for r in ok if r.tag})
    if tags:
        summary["by_tag"] = {
            tag: {
                "completed": sum(1 for r in ok if r.tag == tag),
                "latency_ms": latency_summary([r for r in ok if r.tag == tag]),
            }
            for tag in tags
        }
    return summary


def latency_summary(ok: list[RequestRecord]) -> dict[str, dict[str, float | int | None]]:
    return {
        "ttft": distribution_ms([r.ttft_s for r in ok if r.ttft_s is not None]),
        "tpot": distribution_ms([t for r in ok if (t := r.tpot_s) is not None]),
        "itl": distribution_ms([gap for r in ok for gap in r.itl_s]),
        "e2e": distribution_ms([r.e2e_s for r in ok if r.e2e_s is not None]),
    }
