"""The embedded demo model: what `oss-serve up` serves when no --model is given.

A gpt-oss with the real architecture and the real o200k_harmony vocabulary, small enough to
train from scratch on a laptop CPU in a few minutes, on the bundled synthetic corpus
(workers.data.demo_corpus) with `finetune`. Trained on first use, then cached under
`<cache_dir>/demo-model/<key>`, where the key hashes the corpus, the config, the training
recipe and the code version: a change to any of them trains a new one. A file lock makes a
second process wait for the first one's training instead of training too.

It is a demo: it knows its corpus's few hundred tokens and shapes (greetings, small
arithmetic, a get_weather call and its answer, JSON answers, python and browser.search calls
with the built-in tools declared, a roll_dice call to the demo MCP server), nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oss_serve import __version__
from oss_serve.common.logging import get_logger
from oss_serve.workers.model.config import PRESETS, ModelConfig
from oss_serve.workers.training import demo_corpus

log = get_logger(__name__)

# Bump when the training code changes what a recipe produces (the cache key includes it).
DEMO_MODEL_VERSION = 1
DEMO_SUBDIR = "demo-model"
MARKER_FILE = "demo-model.json"
CORPUS_FILE = "corpus.jsonl"

# gpt-oss-tiny, smaller still: 2 layers (one sliding, one full), 4 experts top-2, 1 KV head;
# a window and context longer than the corpus's prompts, so no YaRN scaling is needed.
DEMO_CONFIG = PRESETS["gpt-oss-tiny"].with_(
    intermediate_size=128,
    num_hidden_layers=2,
    num_key_value_heads=1,
    num_local_experts=4,
    num_experts_per_tok=2,
    sliding_window=128,
    rope_scaling_factor=1.0,
    original_max_position_embeddings=4096,
    max_position_embeddings=4096,
)


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that determines the demo checkpoint (all of it goes into the cache key)."""

    config: ModelConfig = DEMO_CONFIG
    corpus_size: int = 2400
    corpus_seed: int = 0
    steps: int = 2000
    lr: float = 3e-3
    max_batch_tokens: int = 2700
    eval_fraction: float = 0.05
    unknown_token_rate: float = 0.03
    seed: int = 0
    threads: int = 1  # the tiny matmuls gain nothing from more; keeps runs reproducible

    def corpus(self) -> list[dict[str, Any]]:
        return demo_corpus.generate_corpus(self.corpus_size, self.corpus_seed)

    def cache_key(self) -> str:
        """Hex digest of the corpus, config, recipe and code version."""
        recipe = dataclasses.asdict(self)
        recipe["config"] = self.config.to_hf()
        identity = {
            "demo_model_version": DEMO_MODEL_VERSION,
            "corpus_version": demo_corpus.CORPUS_VERSION,
            "oss_serve_version": __version__,
            "recipe": recipe,
            "corpus": self.corpus(),
        }
        blob = json.dumps(identity, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()


DEMO_RECIPE = DemoRecipe()


def default_cache_dir() -> Path:
    from oss_serve.common.settings import Settings

    return Settings().cache_dir


def demo_model_dir(cache_dir: Path | None = None, recipe: DemoRecipe = DEMO_RECIPE) -> Path:
    """Where the demo checkpoint for `recipe` lives (whether or not it is trained yet)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / DEMO_SUBDIR / recipe.cache_key()[:16]


def is_trained(folder: Path) -> bool:
    return (folder / MARKER_FILE).is_file() and (folder / "config.json").is_file()


def ensure_demo_model(
    cache_dir: Path | None = None,
    *,
    recipe: DemoRecipe = DEMO_RECIPE,
    show_progress: bool | None = None,
) -> Path:
    """The demo checkpoint folder: cached, else trained now (a few minutes on a CPU).

    Another process training the same recipe holds the lock; this one waits and reuses it.
    """
    folder = demo_model_dir(cache_dir, recipe)
    if is_trained(folder):
        return folder
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if is_trained(folder):
            return folder
        log.info("training the demo model (first run only)", folder=str(folder))
        scratch = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            _train_into(scratch, recipe, show_progress)
            if folder.exists():  # a half-written folder from an older, killed run
                shutil.rmtree(folder)
            os.replace(scratch, folder)
            log.info("demo model ready", folder=str(folder))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return folder


def _train_into(out_dir: Path, recipe: DemoRecipe, show_progress: bool | None) -> None:
    from oss_serve.workers.training import FinetuneConfig, finetune

    corpus = recipe.corpus()
    result = finetune(
        FinetuneConfig(
            model=recipe.config,
            out_dir=out_dir,
            epochs=1_000,  # max_steps decides
            max_steps=recipe.steps,
            lr=recipe.lr,
            max_batch_tokens=recipe.max_batch_tokens,
            eval_fraction=recipe.eval_fraction,
            corpus_vocab=True,
            unknown_token_rate=recipe.unknown_token_rate,
            seed=recipe.seed,
            threads=recipe.threads,
            show_progress=show_progress,
        ),
        corpus,
    )
    demo_corpus.write_jsonl(corpus, str(out_dir / CORPUS_FILE))
    marker = {
        "what": "oss-serve demo model: a tiny gpt-oss trained on a synthetic corpus (not a "
        "real model; pass --model for real weights)",
        "cache_key": recipe.cache_key(),
        "train_seconds": round(result.train_seconds, 1),
        "peak_rss_mib": round(result.peak_rss_mib),
        "final_eval_loss": result.final_eval_loss,
    }
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2))
