"""benchmarks/kernels.py: roofline arithmetic, and every runner on both kernel paths."""

from __future__ import annotations

import pytest
import torch

from oss_serve.benchmarks.gpu_catalog import CATALOG
from oss_serve.benchmarks.kernels import Shapes, all_cases, measure_case, roofline_table
from oss_serve.workers.model.config import PRESETS

pytestmark = pytest.mark.unit


def _case(cases, kernel, model, shape):
    return next(c for c in cases if (c.kernel, c.model, c.shape) == (kernel, model, shape))


def test_moe_decode_row_counts_four_mxfp4_experts_and_the_h100_bandwidth():
    cases = all_cases()
    case = _case(cases, "moe_experts (mxfp4)", "20b", "1 token")
    expert_bytes = 3 * 2880 * 2880 * (0.5 + 1 / 32) + (2 * 2880 + 2880) * 2
    activations = 2 * (2 * 2880 + 2 * 4 * 2880 + 2 * 4 * 2880)
    assert case.bytes_moved == pytest.approx(4 * expert_bytes + activations)
    assert case.flops == 2 * 4 * 3 * 2880 * 2880
    assert case.roofline_s(CATALOG["h100"]) == pytest.approx(case.bytes_moved / 3.35e12)
    assert case.bound(CATALOG["h100"]) == "memory"
    wide = _case(cases, "moe_experts (mxfp4)", "120b", "32 tokens").bytes_moved
    assert wide > _case(cases, "moe_experts (mxfp4)", "20b", "32 tokens").bytes_moved


def test_table_has_one_row_per_case_and_a_column_per_gpu():
    cases = all_cases()
    lines = roofline_table(cases).splitlines()
    assert len(lines) == 2 + len(cases)
    for gpu in ("a100-80gb", "h100", "h200", "rtx4090"):
        assert f"{gpu} µs" in lines[0]
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_every_runner_runs_on_both_paths_and_fills_the_measured_columns(triton_interpreter):
    tiny = PRESETS["gpt-oss-tiny"].with_(vocab_size=1000, hidden_size=64, intermediate_size=64)
    shapes = Shapes(
        models=("tiny",),
        decode_tokens=(1, 3),
        prefill_tokens=32,
        dense_tokens=(2,),
        decode_attention=((2, 40),),
        sliding_decode=(2, 40),
        norm_tokens=(5,),
        sampling_rows=(2,),
        configs={"tiny": tiny},
    )
    cases = all_cases(shapes)
    device = torch.device("cpu")
    measured = {i: measure_case(c, device, repeats=1, warmup=0) for i, c in enumerate(cases)}
    assert all(m is not None and m.triton_s > 0 and m.torch_s > 0 for m in measured.values())
    table = roofline_table(cases, {i: m for i, m in measured.items() if m is not None})
    rows = table.splitlines()[2:]
    assert len(rows) == len(cases) and all("%" in row and "x |" in row for row in rows)
