"""The embedded demo model, trained once per machine and cached (Settings.cache_dir), and an
offline engine over it, shared by the tests that check what it learnt."""

from __future__ import annotations

from pathlib import Path

import pytest

from oss_serve import LLM
from oss_serve.workers.training.demo_model import ensure_demo_model


@pytest.fixture(scope="session")
def demo_checkpoint() -> Path:
    """Trained on first use, then cached (CI trains it once per fresh machine)."""
    return ensure_demo_model()


@pytest.fixture(scope="module")
def demo_llm(demo_checkpoint: Path) -> LLM:
    return LLM(model=str(demo_checkpoint), dtype="float32")
