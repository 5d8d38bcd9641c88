"""A checkpoint folder that does not load, for `oss-serve up`'s refusal test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def broken_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config.json with a safetensors file whose tensors are not the model's."""
    import torch
    from safetensors.torch import save_file

    from oss_serve.workers.model.config import PRESETS

    folder = tmp_path_factory.mktemp("broken-checkpoint")
    (folder / "config.json").write_text(json.dumps(PRESETS["gpt-oss-tiny"].to_hf()))
    save_file({"not.a.gpt_oss.tensor": torch.zeros(4)}, str(folder / "model.safetensors"))
    return folder
