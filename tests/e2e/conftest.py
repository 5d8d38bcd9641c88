"""Checkpoint folders for `oss-serve up` tests: a tiny real one and a broken one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gpt-oss-tiny (real vocabulary, 2 layers), random weights, written as HF MXFP4."""
    import torch

    from oss_serve.workers.checkpoint import save_checkpoint
    from oss_serve.workers.config import PRESETS
    from oss_serve.workers.model import GptOss
    from oss_serve.workers.weights import init_random_weights

    folder = tmp_path_factory.mktemp("tiny-checkpoint") / "gpt-oss-tiny-2l"
    config = PRESETS["gpt-oss-tiny"].with_(num_hidden_layers=2)
    model = GptOss(config, experts_format="mxfp4", dtype=torch.float32)
    save_checkpoint(init_random_weights(model, seed=0), config, folder, "hf-mxfp4")
    return folder


@pytest.fixture(scope="session")
def broken_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config.json with a safetensors file whose tensors are not the model's."""
    import torch
    from safetensors.torch import save_file

    from oss_serve.workers.config import PRESETS

    folder = tmp_path_factory.mktemp("broken-checkpoint")
    (folder / "config.json").write_text(json.dumps(PRESETS["gpt-oss-tiny"].to_hf()))
    save_file({"not.a.gpt_oss.tensor": torch.zeros(4)}, str(folder / "model.safetensors"))
    return folder
