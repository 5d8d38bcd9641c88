"""Parameter counts against the gpt-oss model card, and the `oss-serve inspect` command."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from oss_serve.cli import app
from oss_serve.workers.model.checkpoint import save_checkpoint
from oss_serve.workers.model.config import PRESETS
from oss_serve.workers.model.inspect import parameter_report, report_for
from oss_serve.workers.model.weights import load_model

pytestmark = pytest.mark.unit
runner = CliRunner()


def _near(value: float, expected: float, rel: float = 1e-3) -> bool:
    return abs(value - expected) <= rel * expected


@pytest.mark.parametrize(
    ("name", "total", "active", "gib"),
    [("gpt-oss-20b", 20.91e9, 3.61e9, 12.8), ("gpt-oss-120b", 116.83e9, 5.13e9, 60.8)],
)
def test_counts_match_the_model_card(name, total, active, gib):
    report = parameter_report(PRESETS[name], "mxfp4", model=name)
    assert _near(report.total_params, total) and _near(report.active_params, active)
    assert _near(report.total_bytes / 2**30, gib, rel=5e-3)  # MXFP4 experts, bf16 rest
    parts = report.components
    assert parts["embedding"].active_params == 0
    assert parts["unembedding"].active_params == parts["unembedding"].params


def test_20b_components_match_the_paper_breakdown():
    parts = parameter_report(PRESETS["gpt-oss-20b"]).components
    assert _near(parts["experts"].params + parts["router"].params, 19.12e9)
    assert _near(parts["attention"].params, 0.64e9, rel=5e-3)
    embeddings = parts["embedding"].params + parts["unembedding"].params
    assert _near(embeddings, 1.16e9, rel=5e-3)  # the paper rounds to 2 decimals


def test_cli_prints_the_report_as_json():
    result = runner.invoke(app, ["inspect", "--model", "gpt-oss-20b", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert _near(report["total_params"], 20.91e9) and _near(report["active_params"], 3.61e9)
    assert set(report["components"]) == {
        "embedding",
        "unembedding",
        "attention",
        "router",
        "experts",
        "norms",
    }


def test_a_checkpoint_folder_is_counted_in_its_storage_format(tmp_path):
    config = PRESETS["gpt-oss-tiny"]
    model = load_model("gpt-oss-tiny", dtype=torch.float32, experts_format="dense")
    save_checkpoint(model, config, tmp_path, "hf-dense")
    dense = report_for(str(tmp_path))
    assert dense.weights_format == "fp32"
    assert dense.total_params == parameter_report(config, "mxfp4").total_params
    assert dense.total_bytes == 4 * dense.total_params


def test_cli_refuses_an_unknown_model_with_exit_2():
    result = runner.invoke(app, ["inspect", "--model", "no-such-model"])
    assert result.exit_code == 2
    assert "no-such-model" in result.output
