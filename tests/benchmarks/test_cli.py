"""`oss-serve bench` (+ compare, --plan-check) and `oss-serve plan` through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from oss_serve.cli import app

from .conftest import STUB_API_KEY

pytestmark = pytest.mark.integration
runner = CliRunner()


def _bench(stub_url, *args):
    return runner.invoke(
        app,
        [
            "bench",
            "--base-url",
            stub_url,
            "--api-key",
            STUB_API_KEY,
            "--model",
            "openai/gpt-oss-20b",
            "--input-len",
            "40",
            "--output-len",
            "6",
            "--warmup-requests",
            "2",
            "--no-progress",
            *args,
        ],
    )


def test_bench_sweep_writes_json_markdown_and_plots_then_compare(stub_url, tmp_path):
    first = _bench(
        stub_url, "--concurrency", "1,4", "--num-requests", "8", "--output-dir", str(tmp_path / "a"),
        "--slo-ttft-ms", "500",
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    assert "| c=1 | 8 / 8 |" in first.output and "| c=4 | 8 / 8 |" in first.output
    document = json.loads((tmp_path / "a" / "result.json").read_text())
    assert document["schema"] == "oss-serve.bench/v1"
    assert [run["load"]["concurrency"] for run in document["runs"]] == [1, 4]
    assert document["runs"][0]["goodput"]["requests_met"] == 8
    assert len(document["runs"][1]["requests_detail"]) == 8
    for name in ("report.md", "latency_cdf.png", "throughput_vs_load.png", "latency_vs_load.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    second = _bench(
        stub_url, "--request-rate", "20", "--num-requests", "6", "--output-dir", str(tmp_path / "b")
    )
    assert second.exit_code == 0, second.output
    compared = runner.invoke(
        app,
        [
            "bench", "compare", str(tmp_path / "a" / "result.json"),
            str(tmp_path / "b" / "result.json"), "--labels", "base,rate",
            "--output-dir", str(tmp_path / "cmp"),
        ],
    )  # fmt: skip
    assert compared.exit_code == 0, compared.output
    assert "| metric | base c=1 | base c=4 | rate |" in compared.output
    assert (tmp_path / "cmp" / "compare_latency_cdf.png").stat().st_size > 0


def test_bench_plan_check_prints_prediction_beside_measurement(stub_url):
    result = _bench(
        stub_url, "--concurrency", "2", "--num-requests", "4", "--json",
        "--plan-check", "--gpu", "h100", "--plan-engine", "oss-serve",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    (row,) = document["plan_check"]["rows"]
    assert document["plan_check"]["model"] == "gpt-oss-20b"
    assert document["plan_check"]["engine"] == "oss-serve"
    assert 1.5 < row["achieved_concurrency"] <= 2.05
    assert row["measured_tpot_ms"] == pytest.approx(20.0, abs=2)
    assert row["predicted_tpot_ms"] > 0 and row["predicted_output_tokens_per_s"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "2", "--request-rate", "3"], "not both"),
        (["--input-len", "uniform:9"], "--input-len"),
        (["--workload", "chess"], "workload"),
        (["--extra-body", "[1]"], "JSON object"),
        (["--plan-check"], "--gpu"),
    ],
)
def test_bench_refuses_bad_flags_by_name(stub_url, args, message):
    result = _bench(stub_url, *args)
    assert result.exit_code == 2
    assert message in result.output


def test_compare_refuses_files_that_are_not_reports(tmp_path):
    bogus = tmp_path / "x.json"
    bogus.write_text('{"hello": 1}')
    result = runner.invoke(app, ["bench", "compare", str(bogus), str(bogus)])
    assert result.exit_code == 2 and "not an oss-serve bench report" in result.output


def test_plan_json_has_snake_case_headline_keys():
    result = runner.invoke(app, ["plan", "--model", "gpt-oss-20b", "--gpu", "h100", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["kv_bytes_per_token"] == 24 * 1024
    for key in ("max_concurrency", "kv_cache_tokens", "weights_bytes_per_gpu", "decode"):
        assert key in plan
    assert all(key == key.lower() and " " not in key for key in plan)


def test_plan_of_an_impossible_deployment_exits_1_and_says_so():
    result = runner.invoke(app, ["plan", "--model", "gpt-oss-120b", "--gpu", "rtx3090"])
    assert result.exit_code == 1
    assert "does not fit: weights need 65.9 GiB per GPU (mxfp4)" in result.output


def test_plan_engine_flag_plans_this_stack_and_refuses_unknown_engines():
    result = runner.invoke(
        app, ["plan", "--gpu", "l4", "--engine", "oss-serve", "--json"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["engine"] == "oss-serve" and plan["max_concurrency"] > 1
    refused = runner.invoke(app, ["plan", "--gpu", "l4", "--engine", "sglang"])
    assert refused.exit_code == 2 and "engine" in refused.output


def test_plan_check_sources_writes_the_comparison_and_passes(tmp_path):
    result = runner.invoke(app, ["plan", "--check-sources", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "vllm_sources_check.md").read_text()
    assert "github.com/vllm-project/vllm/issues/23278" in table and "| NO |" not in table


def test_plan_sweep_covers_every_gpu_count_and_model(tmp_path):
    result = runner.invoke(app, ["plan", "--sweep", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "plan_sweep.json").read_text())
    assert len(rows) == 18 * 4 * 2
    assert {r["status"] for r in rows} == {"fits", "reduce_max_model_len", "does_not_fit"}
    assert (tmp_path / "plan_sweep.png").stat().st_size > 0
    assert result.output.count("\n| gpt-oss-") == 144


def test_plan_refuses_unknown_gpu_with_the_catalog():
    result = runner.invoke(app, ["plan", "--gpu", "v100"])
    assert result.exit_code == 2 and "rtx5090" in result.output


def test_bench_path_does_not_import_torch():
    code = (
        "import sys; import oss_serve.commands.bench, oss_serve.benchmarks.loadgen, "
        "oss_serve.benchmarks.report, oss_serve.benchmarks.plots, oss_serve.benchmarks.outputs, "
        "oss_serve.benchmarks.progress; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
