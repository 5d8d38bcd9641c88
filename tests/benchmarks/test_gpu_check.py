"""`python -m oss_serve.benchmarks.gpu_check --tiny` runs every part of the GPU check on the
CPU at toy sizes, so the script that is meant for an H100 cannot rot unseen."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.slow]


def test_the_gpu_check_runs_all_three_parts_tiny_on_the_cpu_and_writes_json_and_markdown(
    tmp_path,
):
    result = subprocess.run(
        [sys.executable, "-m", "oss_serve.benchmarks.gpu_check", "--tiny",
         "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["tiny"] is True and report["errors"] == {}
    kernels = {a["kernel"] for a in report["accuracy"]}
    assert {"rms_norm", "rope", "moe_experts (mxfp4)", "paged_attention (decode, sinks)"} <= kernels
    assert all(a["ok"] and a["relative_error"] <= a["tolerance"] for a in report["accuracy"])
    timed = [k for k in report["kernels"] if "triton_us" in k]
    assert {k["kernel"].split()[0] for k in timed} == {"moe_experts", "paged_attention"}
    modes = {(e["mode"], e["concurrency"]) for e in report["engine"]}
    assert modes == {(m, c) for m in ("eager", "padded as for graphs (cpu)") for c in (1, 3)}
    assert all(e["output_tokens_per_s"] > 0 and e["tpot_ms_p50"] > 0 for e in report["engine"])
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "## Kernel accuracy" in markdown and "## Engine" in markdown
