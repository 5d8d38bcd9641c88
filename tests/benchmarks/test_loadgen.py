"""The load generator against a real streaming server whose timings the test sets."""

from __future__ import annotations

import itertools
import math

import pytest

from oss_serve.benchmarks.loadgen import LoadPoint
from oss_serve.benchmarks.metrics import SLO, summarize
from oss_serve.benchmarks.workloads import count_tokens

from .conftest import STUB_ITL_MS, STUB_TTFT_MS, free_port
from .helpers import run_bench

pytestmark = pytest.mark.integration
# Loopback HTTP + event-loop wake-ups on a busy 2-core CI machine: single requests must land
# within TOLERANCE_MS (below one 20 ms token gap, so counting the role chunk or missing a
# token fails); medians, net of the measured loopback overhead, within 4 ms.
TOLERANCE_MS = 15.0


def _loopback_overhead_ms(stub_url: str) -> float:
    """Median TTFT of requests the server answers at once: HTTP + scheduling cost right now."""
    result = run_bench(stub_url, num_requests=6, output_len=2, stub={"ttft_ms": 0, "itl_ms": 0})
    return sorted(r.ttft_s * 1000 for r in result.records)[3]


def test_ttft_itl_tpot_and_e2e_match_the_server_schedule(stub_url):
    output_len = 10
    overhead_ms = _loopback_overhead_ms(stub_url)
    result = run_bench(stub_url, num_requests=6, output_len=output_len)
    assert [r.error for r in result.records] == [None] * 6
    expected_e2e_ms = STUB_TTFT_MS + (output_len - 1) * STUB_ITL_MS
    for record in result.records:
        assert STUB_TTFT_MS - 1 <= record.ttft_s * 1000 <= STUB_TTFT_MS + TOLERANCE_MS
        assert len(record.itl_s) == output_len - 1
        assert record.tpot_s * 1000 == pytest.approx(STUB_ITL_MS, abs=1.5)
        assert expected_e2e_ms - 1 <= record.e2e_s * 1000 <= expected_e2e_ms + TOLERANCE_MS
        assert record.output_tokens == output_len
        assert record.input_tokens == 50
        assert record.usage_source == "usage"
    itl_ms = sorted(gap * 1000 for r in result.records for gap in r.itl_s)
    assert itl_ms[len(itl_ms) // 2] == pytest.approx(STUB_ITL_MS, abs=3.0)
    summary = summarize(result.records, result.duration_s, SLO())["latency_ms"]
    # Net of the loopback overhead measured just before, the medians land within a few ms.
    assert summary["ttft"]["p50"] - overhead_ms == pytest.approx(STUB_TTFT_MS, abs=4.0)
    assert summary["e2e"]["p50"] - overhead_ms == pytest.approx(expected_e2e_ms, abs=4.0)


def test_throughput_and_goodput_follow_from_the_records(stub_url):
    # Every other request (server order) waits 200 ms for its first token: exactly half
    # of 8 miss a TTFT bound of 150 ms.
    stub = {"slow_every": 2, "slow_ttft_ms": 200.0}
    result = run_bench(stub_url, num_requests=8, output_len=5, stub=stub)
    summary = summarize(result.records, result.duration_s, SLO(ttft_ms=150.0, tpot_ms=30.0))
    goodput, throughput = summary["goodput"], summary["throughput"]
    assert goodput["requests_met"] == 4
    assert goodput["fraction"] == 0.5
    met = [r for r in result.records if r.ttft_s < 0.150]
    assert len(met) == 4
    duration_s = result.duration_s
    assert goodput["requests_per_s"] == pytest.approx(4 / duration_s, rel=1e-5)
    assert goodput["output_tokens_per_s"] == pytest.approx(
        sum(r.output_tokens for r in met) / duration_s, rel=1e-5
    )
    assert throughput["requests_per_s"] == pytest.approx(8 / duration_s, rel=1e-5)
    assert throughput["output_tokens_per_s"] == pytest.approx(40 / duration_s, rel=1e-5)
    assert throughput["total_tokens_per_s"] == pytest.approx((8 * 50 + 40) / duration_s, rel=1e-5)
    # Two workers, four rounds, each round at least a slow or fast request end to end.
    fast_s = (STUB_TTFT_MS + 4 * STUB_ITL_MS) / 1000
    slow_s = (200.0 + 4 * STUB_ITL_MS) / 1000
    assert 4 * fast_s <= duration_s <= 4 * slow_s + 0.1


@pytest.mark.parametrize(
    ("stub", "error"),
    [
        ({"fail_status": 429, "fail_every": 2}, "http_429"),
        ({"fail_status": 500, "fail_every": 2}, "http_500"),
        ({"garbage": True}, "invalid_response"),
        ({"midstream_error": True}, "stream_error"),
        ({"close_early": True}, "incomplete_stream"),
    ],
)
def test_server_failures_are_counted_by_type(stub_url, stub, error):
    result = run_bench(stub_url, num_requests=4, output_len=6, stub=stub)
    summary = summarize(result.records, result.duration_s, SLO())
    expected_failures = 2 if "fail_every" in stub else 4
    assert summary["requests"]["errors"] == {error: expected_failures}
    assert summary["requests"]["completed"] == 4 - expected_failures
    assert summary["tokens"]["output_total"] == (4 - expected_failures) * 6
    assert all(r.error_detail for r in result.records if r.error)


def test_wrong_api_key_is_http_401(stub_url):
    result = run_bench(stub_url, num_requests=2, api_key="wrong")
    assert {r.error for r in result.records} == {"http_401"}
    assert "API key" in result.records[0].error_detail


def test_unreachable_server_is_a_connection_error():
    result = run_bench(f"http://127.0.0.1:{free_port()}", num_requests=2)
    assert {r.error for r in result.records} == {"connection_error"}


def test_slow_first_token_past_the_timeout_is_a_timeout(stub_url):
    result = run_bench(stub_url, num_requests=2, stub={"ttft_ms": 3000.0}, timeout_s=0.3)
    assert {r.error for r in result.records} == {"timeout"}
    assert result.duration_s < 2.0


def test_tokens_are_counted_with_o200k_when_the_server_sends_no_usage(stub_url):
    result = run_bench(stub_url, num_requests=2, output_len=7, stub={"omit_usage": True})
    for record in result.records:
        assert record.usage_source == "counted"
        assert record.output_tokens == 7
        assert record.input_tokens == 50


def test_reasoning_and_tool_call_deltas_are_output_tokens(stub_url):
    result = run_bench(
        stub_url,
        num_requests=2,
        output_len=8,
        stub={"reasoning_tokens": 3, "omit_usage": True},
        kind="tool-calling",
    )
    for record in result.records:
        assert record.ok, record.error_detail
        assert record.chunks == 8
        assert record.output_tokens >= 8  # 3 reasoning words + tool name + 5 argument words
        assert STUB_TTFT_MS - 1 <= record.ttft_s * 1000 <= STUB_TTFT_MS + TOLERANCE_MS


def test_multi_turn_resends_the_growing_history(stub_url):
    result = run_bench(
        stub_url,
        num_requests=6,
        point=LoadPoint("concurrency", concurrency=1),
        input_len=20,
        output_len=5,
        kind="multi-turn",
        turns=3,
        num_system_prompts=1,
        system_prompt_len=30,
    )
    records = result.records
    assert [(r.session_id, r.turn) for r in records] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
        (1, 2),
    ]
    reply_tokens = count_tokens(" the quick brown fox jumps")
    for earlier, later in itertools.pairwise(records[:3]):
        # the next turn carries the previous prompt, the server's reply and 20 new tokens
        assert later.input_tokens == earlier.input_tokens + reply_tokens + 20
    assert records[0].input_tokens == records[3].input_tokens == 30 + 20


def test_poisson_rate_mode_sends_the_requested_count(stub_url):
    point = LoadPoint("rate", request_rate=40.0)
    result = run_bench(stub_url, num_requests=12, point=point, output_len=3)
    assert len(result.records) == 12 and all(r.ok for r in result.records)
    starts = sorted(r.start_s for r in result.records)
    assert starts[0] < 0.05
    # 11 exponential gaps of mean 25 ms: their sum is far from both 0 and 1 s
    assert 0.05 < starts[-1] - starts[0] < 1.0


def test_infinite_rate_sends_everything_at_once(stub_url):
    point = LoadPoint("rate", request_rate=math.inf)
    result = run_bench(stub_url, num_requests=6, point=point, output_len=3)
    assert max(r.start_s for r in result.records) < 0.05


def test_duration_budget_stops_issuing_after_the_deadline(stub_url):
    result = run_bench(stub_url, num_requests=None, duration_s=0.5, output_len=3)
    per_request_s = (STUB_TTFT_MS + 2 * STUB_ITL_MS) / 1000
    assert all(r.start_s < 0.5 for r in result.records)
    assert 2 * int(0.5 / per_request_s) <= len(result.records) <= 2 * (int(0.5 / per_request_s) + 1)
    assert result.duration_s < 0.5 + per_request_s + 0.1


def test_rate_mode_cap_bounds_requests_in_flight(stub_url):
    point = LoadPoint("rate", request_rate=math.inf, max_concurrency=2)
    result = run_bench(stub_url, num_requests=6, point=point, output_len=3)
    assert len(result.records) == 6 and all(r.ok for r in result.records)
    spans = [(r.start_s, r.start_s + r.e2e_s) for r in result.records]
    for start_s, _ in spans:
        in_flight = sum(1 for s, e in spans if s <= start_s < e)
        assert in_flight <= 2
    per_request_s = (STUB_TTFT_MS + 2 * STUB_ITL_MS) / 1000
    assert result.duration_s >= 3 * per_request_s  # three waves of two
