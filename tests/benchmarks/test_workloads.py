"""Workloads: exact prompt lengths, seeded sessions, history, dataset validation."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from oss_serve.benchmarks.metrics import SLO, RequestRecord, distribution_ms
from oss_serve.benchmarks.workloads import (
    LengthDistribution,
    Workload,
    WorkloadError,
    WorkloadSpec,
    count_tokens,
    synthetic_text,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("num_tokens", [1, 17, 500])
def test_synthetic_text_has_exactly_the_requested_tokens(num_tokens):
    assert count_tokens(synthetic_text(num_tokens, random.Random(num_tokens))) == num_tokens


def test_length_specs_parse_and_sample_within_bounds():
    rng = random.Random(0)
    assert LengthDistribution.parse("64").sample(rng) == 64
    uniform = LengthDistribution.parse("uniform:10:20")
    assert {uniform.sample(rng) for _ in range(200)} <= set(range(10, 21))
    normal = [LengthDistribution.parse("normal:100:10").sample(rng) for _ in range(2000)]
    assert sum(normal) / len(normal) == pytest.approx(100, abs=2)
    assert min(LengthDistribution.parse("exp:5").sample(rng) for _ in range(100)) >= 1


@pytest.mark.parametrize("spec", ["abc", "uniform:5", "uniform:9:3", "0", "normal:x:1"])
def test_bad_length_specs_name_the_option(spec):
    with pytest.raises(WorkloadError, match="--input-len"):
        LengthDistribution.parse(spec, "--input-len")


def test_sessions_are_reproducible_from_the_seed():
    workload = Workload(WorkloadSpec(kind="reasoning"))
    first = list(itertools.islice(workload.sessions(7), 5))
    again = list(itertools.islice(workload.sessions(7), 5))
    other = list(itertools.islice(workload.sessions(8), 5))
    assert first == again
    assert first != other
    efforts = {s.turns[0].extra["reasoning_effort"] for s in first}
    assert efforts <= {"low", "medium", "high"}
    assert all(s.turns[0].tag.startswith("effort=") for s in first)


def test_multi_turn_sessions_share_system_prompts_and_grow_history():
    spec = WorkloadSpec(kind="multi-turn", turns=3, num_system_prompts=2, system_prompt_len=40)
    sessions = list(itertools.islice(Workload(spec).sessions(0), 20))
    assert len({s.system_prompt for s in sessions}) == 2
    session = sessions[0]
    messages = session.messages_for(2, ["first reply", "second reply"])
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert messages[2]["content"] == "first reply"
    assert messages[-1]["content"] == session.turns[2].user_content


def test_tool_and_structured_workloads_carry_their_request_fields():
    tool = next(Workload(WorkloadSpec(kind="tool-calling")).sessions(0)).turns[0]
    assert tool.extra["tools"][0]["function"]["name"] == "get_weather"
    assert tool.extra["tool_choice"] == "auto"
    structured = next(Workload(WorkloadSpec(kind="structured")).sessions(0)).turns[0]
    assert structured.extra["response_format"]["type"] == "json_schema"


def test_dataset_rows_are_sent_as_given(tmp_path):
    path = tmp_path / "chats.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    workload = Workload(
        WorkloadSpec(kind="dataset", dataset_path=path, output_len=LengthDistribution.parse(9))
    )
    sessions = list(itertools.islice(workload.sessions(0), 4))
    sent = [tuple(m["content"] for m in s.messages_for(0, [])) for s in sessions]
    assert set(sent) == {("hi",), ("s", "q")}
    by_first = {s.messages_for(0, [])[-1]["content"]: s.turns[0].max_tokens for s in sessions}
    assert by_first == {"hi": 5, "q": 9}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "not JSON"),
        ('{"messages": []}', "non-empty `messages`"),
        ('{"messages": [{"content": "x"}]}', "string `role`"),
        ('{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
    ],
)
def test_bad_dataset_lines_are_refused_with_their_line_number(tmp_path, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "ok"}]}\n' + line + "\n")
    with pytest.raises(WorkloadError, match=rf"bad.jsonl:2: .*{problem}"):
        Workload(WorkloadSpec(kind="dataset", dataset_path=path))


def test_slo_and_distributions():
    ok = RequestRecord(0, 0, 0, 0.0, ttft_s=0.1, e2e_s=0.5, output_tokens=5)
    single = RequestRecord(1, 1, 0, 0.0, ttft_s=0.1, e2e_s=0.1, output_tokens=1)
    failed = RequestRecord(2, 2, 0, 0.0, error="http_500")
    slo = SLO(ttft_ms=150, tpot_ms=90)
    assert ok.tpot_s == pytest.approx(0.1)
    assert not slo.met_by(ok)  # TPOT 100 ms > 90 ms
    assert slo.met_by(single)  # one token: no TPOT to violate
    assert not slo.met_by(failed)
    stats = distribution_ms([0.001 * i for i in range(1, 101)])
    assert stats["p50"] == pytest.approx(50.5) and stats["p99"] == pytest.approx(99.01)
    assert stats["mean"] == pytest.approx(50.5) and stats["count"] == 100
    assert distribution_ms([])["p99"] is None


def test_report_warns_when_the_load_generator_itself_was_late():
    from oss_serve.benchmarks.loadgen import Budget, LoadPoint, LoadPointResult
    from oss_serve.benchmarks.report import build_report, markdown_report
    from oss_serve.benchmarks.stream_client import Endpoint

    record = RequestRecord(0, 0, 0, 0.0, ttft_s=0.1, e2e_s=0.3, output_tokens=3, itl_s=[0.1, 0.1])
    point = LoadPoint("concurrency", concurrency=1)

    def document(lag_s: float) -> dict:
        return build_report(
            endpoint=Endpoint.from_base_url("http://x", "m"),
            workload=Workload(WorkloadSpec()),
            budget=Budget(num_requests=1),
            seed=0,
            warmup_requests=0,
            slo=SLO(),
            results=[LoadPointResult(point, [record], 0.3, [lag_s] * 20)],
            started_unix_s=0.0,
        )

    late = document(0.06)
    assert late["runs"][0]["client"]["loop_lag_ms"]["p99"] == pytest.approx(60.0)
    assert "the load generator's own event loop ran late" in markdown_report(late)
    assert "Warning" not in markdown_report(document(0.002))
