"""The side-by-side benchmark's own logic: token agreement, the report table, the README
section it owns, and one real engine process (oss-serve's side, tiny sizes; CI has no vLLM)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from oss_serve.benchmarks.engine_throughput import write_checkpoint
from oss_serve.benchmarks.vllm_side_by_side import (
    CHECKPOINT_CONFIG,
    build_workload,
    compare_tokens,
    run_side,
)
from oss_serve.benchmarks.vllm_side_by_side_report import (
    README_BEGIN,
    README_END,
    readme_markers,
    replace_readme_section,
    table,
)

TINY = {**CHECKPOINT_CONFIG, "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 64,
        "pad_token_id": 998, "eos_token_id": 999}  # fmt: skip


def _side(engine: str, tokens: list[list[list[int]]], tok_s: list[float]) -> dict:
    waves = [
        {"concurrency": len(ids), "output_len": 4, "token_ids": ids, "tokens_per_s": rate,
         "ttft_median_s": 0.5, "loadavg_before": [1.0, 1.0, 1.0]}
        for ids, rate in zip(tokens, tok_s, strict=True)
    ]  # fmt: skip
    return {"engine": engine, "waves": waves, "startup_to_first_token_s": 10.0}


@pytest.mark.unit
def test_token_agreement_counts_identical_requests_and_the_first_divergence():
    ours = _side("oss-serve", [[[1, 2, 3]], [[1, 2, 3], [4, 5, 6], [7, 8]]], [1.0, 1.0])
    theirs = _side("vllm", [[[1, 2, 3]], [[1, 2, 3], [4, 9, 6], [7, 8, 0]]], [1.0, 1.0])
    levels = compare_tokens(ours, theirs)
    assert [(lv["identical"], lv["requests"]) for lv in levels] == [(1, 1), (1, 3)]
    assert levels[0]["first_divergence"] is None and levels[1]["first_divergence"] == 1


@pytest.mark.unit
def test_the_table_gives_medians_ranges_the_ratio_and_agreement():
    pairs = []
    for ours_rate, vllm_rate in ((90.0, 100.0), (120.0, 100.0), (110.0, 100.0)):
        sides = {
            "oss-serve": _side("oss-serve", [[[1], [2]]], [ours_rate]),
            "vllm": _side("vllm", [[[1], [3]]], [vllm_rate]),
        }
        agreement = compare_tokens(sides["oss-serve"], sides["vllm"])
        pairs.append({"sides": sides, "greedy_agreement": agreement})
    results = {
        "pairs": pairs,
        "checkpoint_config": CHECKPOINT_CONFIG,
        "settings": {"prompt_len": [16, 256]},
        "environments": {"vllm": {"VLLM_CPU_KVCACHE_SPACE": "4"}},
        "machine": {"cpus": 2},
    }
    text = table(results, "benchmarks/results/x/results.json")
    row = next(line for line in text.splitlines() if line.startswith("| 2 × 4"))
    assert "110.0 (90.0-120.0)" in row and "**1.10×**" in row and "| 3/6 |" in row
    assert "benchmarks/results/x/results.json" in text


@pytest.mark.unit
def test_only_the_readme_section_between_the_markers_changes():
    readme = f"# Title\nbefore\n{README_BEGIN}\nold table\n{README_END}\nafter\n"
    updated = replace_readme_section(readme, "| new |\n")
    assert updated == f"# Title\nbefore\n{README_BEGIN}\n| new |\n{README_END}\nafter\n"
    with pytest.raises(ValueError, match="engine-speed"):
        replace_readme_section("# no markers\n", "| new |\n")


@pytest.mark.unit
def test_a_sampled_run_is_labelled_and_its_tokens_are_not_compared():
    sides = {
        "oss-serve": _side("oss-serve", [[[1], [2]]], [120.0]),
        "vllm": _side("vllm", [[[1], [3]]], [100.0]),
    }
    results = {
        "pairs": [{"sides": sides, "greedy_agreement": []}],
        "checkpoint_config": CHECKPOINT_CONFIG,
        "settings": {"prompt_len": [16, 256], "temperature": 0.8},
        "environments": {"vllm": {}},
        "machine": {"cpus": 2},
    }
    text = table(results, "benchmarks/results/y/results.json")
    row = next(line for line in text.splitlines() if line.startswith("| 2 × 4"))
    assert "**1.20×**" in row and "| sampled |" in row
    assert "sampled at temperature 0.8" in text and "greedy" not in text.split("\n\n")[1]
    begin, end = readme_markers("engine-speed-sampled")
    readme = f"{README_BEGIN}\ngreedy\n{README_END}\n{begin}\nold\n{end}\n"
    updated = replace_readme_section(readme, "new\n", "engine-speed-sampled")
    assert updated == f"{README_BEGIN}\ngreedy\n{README_END}\n{begin}\nnew\n{end}\n"


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_the_oss_serve_side_runs_a_workload_in_its_own_process(tmp_path: Path, temperature):
    checkpoint = tmp_path / "checkpoint"
    write_checkpoint(checkpoint, 0, TINY)
    args = argparse.Namespace(
        concurrency=[1, 3],
        output_len=5,
        batch1_output_len=6,
        prompt_len=[16, 40],
        seed=1,
        temperature=temperature,
    )
    workload = tmp_path / "workload.json"
    workload.write_text(json.dumps(build_workload(args, TINY["vocab_size"])))
    side = run_side("oss-serve", sys.executable, checkpoint, workload, {}, timeout_s=300)
    assert side["engine"] == "oss-serve"
    assert 0 < side["load_s"] <= side["startup_to_first_token_s"] <= side["wall_s"]
    assert [(w["concurrency"], w["output_tokens"]) for w in side["waves"]] == [(1, 6), (3, 15)]
    for wave in side["waves"]:
        assert 0 < wave["ttft_median_s"] <= wave["ttft_max_s"] <= wave["seconds"]
        assert wave["cpu_s"] > 0 and len(wave["loadavg_before"]) == 3
        assert all(len(tokens) == wave["output_len"] for tokens in wave["token_ids"])
